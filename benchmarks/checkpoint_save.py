"""How long a checkpoint save blocks the step loop: async (orbax writes in the background) vs. synchronous.

    python benchmarks/checkpoint_save.py --config=configs/tiny.py [--saves=3] [--config.X=Y ...]

For each mode it saves the full train state (params + AdamW moments) several times and prints the time the
`save` call blocked, the time until the write finished, and the checkpoint size.
"""
import argparse
import os
import tempfile
import time

import jax
from llada_jax import sharding
from llada_jax.checkpoints import run_checkpointer
from llada_jax.models import flops
from llada_jax.utils import chips
from llada_jax.config import ModelConfig, load_config
from llada_jax.training.trainer import Trainer


def folder_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def measure(config, mesh, state, async_save: bool, saves: int) -> tuple[float, float, int]:
    config = config.copy_and_resolve_references()
    config.checkpoint.async_save = async_save
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = run_checkpointer.RunCheckpointer(tmp, config, mesh=mesh)
        blocked, total = [], []
        for i in range(1, saves + 1):
            start = time.perf_counter()
            blocked.append(ckpt.save(i, state, {"step": i}))
            ckpt.wait()
            total.append(time.perf_counter() - start)
        size = folder_bytes(os.path.join(tmp, "checkpoints", str(saves)))
        ckpt.close()
    return min(blocked), min(total), size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--saves", type=int, default=3)
    args, rest = parser.parse_known_args()
    config = load_config(args.config, rest)
    mesh = sharding.make_mesh(config.mesh)
    state = Trainer(config, mesh).init_state()
    n = flops.param_counts(ModelConfig.from_config(config.model))["total"]
    print(f"params {n / 1e6:,.1f}M on {jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"{'mode':<6} {'blocks loop (s)':>16} {'until written (s)':>18} {'size (MB)':>10}")
    for mode in (True, False):
        blocked, total, size = measure(config, mesh, state, mode, args.saves)
        print(f"{'async' if mode else 'sync':<6} {blocked:>16.3f} {total:>18.3f} {size / 1e6:>10.1f}")


if __name__ == "__main__":
    main()
