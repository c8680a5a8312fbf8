"""Compile the train step for a config and report per-device memory: `llada-jax preflight --config=...`.

With --topology (and libtpu: pip install -e ".[tpu]") the step is compiled for that TPU slice from this
machine, CPU included. Progress goes to stderr: what is compiled for which devices and how long it took last
time, then a line every 30 s while the compiler works (an 8B model on a pod slice takes minutes).
"""
from __future__ import annotations

import argparse
import json


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file with get_config(), e.g. configs/llada_8b.py")
    parser.add_argument("--topology", default="",
                        help="TPU topology for an ahead-of-time compile from this machine, e.g. v5p:4x4x4 "
                             "(default: the devices present)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--skip-cost-model", action="store_true",
                        help="with --topology: leave out XLA's modeled step time, bytes and MFU (two more compiles)")
    parser.epilog = "Override any config field with --config.SECTION.FIELD=VALUE, e.g. --config.train.seq_len=2048."


def run(args, overrides) -> int:
    from llada_jax.config import load_config, validate

    config = load_config(args.config, overrides)
    validate(config)  # field errors before JAX (or libtpu) loads
    from llada_jax.training import preflight

    devices = preflight.topology_devices(args.topology) if args.topology else None
    report = preflight.analyse(config, devices, what=args.config,
                               cost_model=bool(args.topology) and not args.skip_cost_model)
    print(json.dumps(report) if args.json else preflight.format_report(report))
    return 0
