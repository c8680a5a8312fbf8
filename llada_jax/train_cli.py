"""Train a mask predictor (or the AR baseline): `llada-jax train --config=configs/tiny.py --workdir=DIR`."""
from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file with get_config(), e.g. configs/tiny.py")
    parser.add_argument("--workdir", required=True, help="folder for metrics, checkpoints and the final params")
    parser.add_argument("--quiet", action="store_true", help="no console progress")
    parser.epilog = "Override any config field with --config.SECTION.FIELD=VALUE, e.g. --config.train.steps=200."


def run(args, overrides) -> int:
    from llada_jax import loop
    from llada_jax.config import load_config

    config = load_config(args.config, overrides)
    loop.run(config, args.workdir, quiet=args.quiet)
    return 0
