"""Compile the train step for a config and report per-device memory: `llada-jax preflight --config=...`."""
from __future__ import annotations

import argparse
import json


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True)
    parser.add_argument("--topology", default="", help="TPU topology for an AOT compile from this machine, e.g. v5p:4x4x4")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--skip-cost-model", action="store_true",
                        help="with --topology: leave out XLA's modeled step time, bytes and MFU (two more compiles)")


def run(args, overrides) -> int:
    from llada_jax.training import preflight
    from llada_jax.config import load_config

    config = load_config(args.config, overrides)
    devices = preflight.topology_devices(args.topology) if args.topology else None
    report = preflight.analyse(config, devices, cost_model=bool(args.topology) and not args.skip_cost_model)
    print(json.dumps(report) if args.json else preflight.format_report(report))
    return 0
