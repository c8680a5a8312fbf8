"""Scaling-law sweeps: `llada-jax sweep plan|run|fit` (MDM vs. the autoregressive baseline)."""
from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["plan", "run", "fit"],
                        help="plan: write the run list and each run's config; run: train the planned runs here; "
                             "fit: fit IsoFLOP curves and power laws to the results")
    parser.add_argument("--config", help="plan: a config with a 'sweep' section, e.g. configs/sweep_cpu.py")
    parser.add_argument("--out", "--sweep", dest="sweep", required=True, help="the sweep folder")
    parser.add_argument("--print-launch", default=None, metavar="ARGS",
                        help="run: print launch/tpu_vm.py commands (with these launcher args) instead of training here")


def run(args, overrides) -> int:
    from llada_jax.scaling import sweep
    from llada_jax.config import ConfigError, load_config

    if args.action == "plan":
        if not args.config:
            raise ConfigError("sweep plan needs --config=configs/sweep_cpu.py (a config with a 'sweep' section)")
        runs, skipped = sweep.plan(load_config(args.config, overrides), args.sweep)
        for r in runs:
            print(f"{r.name:<36} {r.steps:>7} steps  {r.tokens:>12,} tokens  {r.flops:.3g} FLOPs")
        for line in skipped:
            print(f"skipped: {line}")
        print(f"{len(runs)} runs planned in {args.sweep}")
    elif args.action == "run":
        if args.print_launch is not None:
            print("\n".join(sweep.launch_commands(args.sweep, args.print_launch)))
        else:
            sweep.run_all(args.sweep)
    else:
        fits = sweep.fit(args.sweep)
        for objective, entry in fits.items():
            if "n_opt" in entry:
                print(f"{objective}: N* ~ C^{entry['n_opt']['exponent']:.3f}  D* ~ C^{entry['d_opt']['exponent']:.3f}  "
                      f"L* ~ C^{entry['loss']['exponent']:.4f}")
            else:
                print(f"{objective}: fewer than 2 budgets with an interior IsoFLOP minimum; no power law fitted")
        print(f"wrote fit.json, isoflop.png and scaling.png in {args.sweep}")
    return 0
