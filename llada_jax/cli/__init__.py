"""`llada-jax <command>`: the one entry point. Each command lives in its own module and is imported only
when used, so `llada-jax convert` does not pay for importing the trainer and vice versa."""
from __future__ import annotations

import argparse
import importlib
import sys

from llada_jax.config import ConfigError

# command -> module with `register(subparser)` and `run(args, config_overrides) -> int`.
COMMANDS = {
    "train": "llada_jax.cli.train",
    "preflight": "llada_jax.cli.preflight",
    "sweep": "llada_jax.cli.sweep",
    "sample": "llada_jax.cli.sample",
    "score": "llada_jax.cli.score",
    "convert": "llada_jax.cli.convert",
    "prepare": "llada_jax.cli.prepare",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="llada-jax", description="LLaDA masked diffusion LMs in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]])
        module.register(sub.add_parser(argv[0], help=(module.__doc__ or "").split("\n")[0]))
    else:
        for name in COMMANDS:
            sub.add_parser(name)
    args, rest = parser.parse_known_args(argv)
    overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    from llada_jax import compile_cache

    compile_cache.enable()
    try:
        return int(importlib.import_module(COMMANDS[args.command]).run(args, overrides) or 0)
    except ConfigError as e:
        print(f"llada-jax {args.command}: error: {e}", file=sys.stderr)
        return 2

