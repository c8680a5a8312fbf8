"""`llada-jax <command>`: the one entry point. Each command lives in its own module and its heavy imports
happen only when it runs, so `llada-jax convert` does not pay for importing the trainer and vice versa,
and a bad flag or config value is reported before JAX is even loaded. The top stage: the only place that
parses flags; it may import every other stage."""
from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import math
import os
import sys

from llada_jax.config import ConfigError

# command -> module with a one-line docstring, `register(subparser)` and `run(args, config_overrides) -> int`.
COMMANDS = {
    "demo": "llada_jax.cli.demo",
    "train": "llada_jax.cli.train",
    "preflight": "llada_jax.cli.preflight",
    "sweep": "llada_jax.cli.sweep",
    "sample": "llada_jax.cli.sample",
    "score": "llada_jax.cli.score",
    "convert": "llada_jax.cli.convert",
    "prepare": "llada_jax.cli.prepare",
    "eval": "llada_jax.cli.eval",
}


def summary(module) -> str:
    """The first line of a command module's docstring, without its usage example (shown by the command's --help)."""
    line = (module.__doc__ or "").strip().split("\n")[0]
    return line.split(": `")[0].rstrip(".:")


def skip_absent_tpu(environ=os.environ) -> None:
    """With libtpu installed (e.g. for AOT TPU compiles) but no TPU chip, JAX's TPU plugin prints a screen of
    warnings at start-up; there (and with no CUDA plugin installed), JAX is told to use the CPU.

    Never overrides JAX_PLATFORMS; TPU VMs (a Google PCI device, /dev/accel*, /dev/vfio) are left alone.
    """
    if environ.get("JAX_PLATFORMS") is not None or importlib.util.find_spec("libtpu") is None:
        return
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        with open(vendor) as f:
            if f.read().strip() == "0x1ae0":  # Google: a TPU chip
                return
    if any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin")):
        return  # naming cuda would make a machine without a GPU driver fail; leave such setups alone
    environ["JAX_PLATFORMS"] = "cpu"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    skip_absent_tpu()  # preflight --topology still compiles for TPU through libtpu on the CPU platform
    parser = argparse.ArgumentParser(prog="llada-jax", description="LLaDA masked diffusion LMs in JAX.",
                                     epilog="`llada-jax COMMAND --help` lists a command's flags and their defaults.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)  # light: command modules import only argparse at the top
        command = sub.add_parser(name, help=summary(module), description=(module.__doc__ or "").strip(),
                                 formatter_class=_HelpFormatter)
        if argv and argv[0] == name:
            module.register(command)
    args, rest = parser.parse_known_args(argv)
    args.argv = argv  # what a supervised worker is started with (train with several processes)
    overrides = [a for a in rest if a.startswith("--config.")]
    unknown = [a for a in rest if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        check_finite_flags(sub.choices[args.command], args)
    except ConfigError as e:
        return _say(args.command, e)
    from llada_jax.utils import compile_cache, library_noise, xla_flags

    xla_flags.apply_defaults()
    compile_cache.enable()
    library_noise.install()  # a failed checkpoint read or write is one sentence, not the storage library's traces
    try:
        return int(importlib.import_module(COMMANDS[args.command]).run(args, overrides) or 0)
    except ConfigError as e:
        return _say(args.command, e)
    except OSError as e:  # the machine said no (disk full, read-only, no permission): one sentence, no traceback
        from llada_jax.utils.errors import ENVIRONMENT_ERRNOS, environment_sentence

        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        return _say(args.command, environment_sentence(e))


def _say(command: str, error) -> int:
    print(f"llada-jax {command}: error: {error}", file=sys.stderr)
    return 2


def check_finite_flags(parser: argparse.ArgumentParser, args) -> None:
    """Every float flag of every command refuses NaN and infinity (argparse's float() accepts both), as config
    fields do: `--temperature=nan` would otherwise decode as if it were 0."""
    actions = list(parser._actions)
    for sub in (a for a in parser._actions if isinstance(a, argparse._SubParsersAction)):
        chosen = sub.choices.get(getattr(args, sub.dest, None) or "")
        actions += list(chosen._actions) if chosen is not None else []
    for action in actions:
        value = getattr(args, action.dest, None)
        if action.type is float and isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{action.option_strings[0]}={value} is not a finite number; give a real value")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default in its help line (flags registered without help too); the docstring kept as written."""

    def _format_action(self, action):
        if not action.help and action.option_strings and _shows_default(action):
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.option_strings and _shows_default(action) and "%(default)" not in text:
            text += (" " if text else "") + "(default: %(default)s)"
        return text


def _shows_default(action) -> bool:
    """None (unset) and False (an off switch) say nothing; 0, 0.0 and strings do."""
    return not (action.default is None or action.default is False or action.default is argparse.SUPPRESS)
