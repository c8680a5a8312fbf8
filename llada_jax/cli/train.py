"""Train a mask predictor (or the AR baseline): `llada-jax train --config=configs/tiny.py --workdir=DIR`."""
from __future__ import annotations

import argparse
import os


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file with get_config(), e.g. configs/tiny.py")
    parser.add_argument("--workdir", required=True, help="folder for metrics, checkpoints and the final params")
    parser.add_argument("--quiet", action="store_true", help="no console progress")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="save and exit after N steps of this invocation (job time limits); rerun to resume")
    parser.add_argument("--init_from", "--init-from", default=None, metavar="CKPT",
                        help="start from these params (fresh optimizer, step 0); same as --config.train.init_from")
    parser.epilog = "Override any config field with --config.SECTION.FIELD=VALUE, e.g. --config.train.steps=200."


def run(args, overrides) -> int:
    from llada_jax.training.preemption import PreemptionWatcher

    watcher = PreemptionWatcher()  # first of all: a signal while jax loads ends the run cleanly, not in a traceback
    try:
        from llada_jax.config import load_config, validate

        config = load_config(args.config, overrides)
        validate(config)  # field errors before JAX is imported (the mesh is checked once devices are known)
        from llada_jax.training import distributed

        if distributed.is_multiprocess(config.distributed) and not os.environ.get(distributed.WORKER_ENV):
            watcher.restore()  # the supervisor forwards signals to the worker, which has its own watcher
            if watcher.requested:
                print(f"received {watcher.signal_name} during start-up; nothing to save", flush=True)
                return 0
            from llada_jax.training import supervisor

            _, num, pid = distributed.settings(config.distributed)
            return supervisor.supervise(args.argv, args.workdir, pid, num)
        from llada_jax.training import loop

        distributed.initialize(config.distributed)
        if args.init_from:
            config.train.init_from = args.init_from
        try:
            loop.run(config, args.workdir, quiet=args.quiet, stop_after=args.stop_after, watcher=watcher)
        except Exception as e:
            distributed.await_lost_peer(e, config.distributed)  # a supervised worker whose peer died: no traceback
            raise
    finally:
        watcher.restore()
    return 0
