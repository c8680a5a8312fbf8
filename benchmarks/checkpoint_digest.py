"""What verifying a checkpoint costs: the digest of every array (checkpoints/verify.py) on a config's params.

    python benchmarks/checkpoint_digest.py --config=configs/llada_1b.py [--repeats=3] [--opt-state] [--config.X=Y ...]

Params of the config's shapes are made on the devices present (sharded as training shards them), then
the digest pass (64-bit hash of every array plus the finite check, as on every save and restore) is timed
after one warm-up call, next to the old sum-of-|x| checksum for comparison. With --opt-state the AdamW moments
are included as a save would (three times the bytes). Prints the seconds per pass and the GB/s it reads.
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import sharding
from llada_jax.checkpoints import params_export, verify
from llada_jax.config import load_config


def filled_like(abstract):
    """Arrays of the abstract shapes made on device in their shards (never whole on one host). The values do not
    change the cost, so a cheap pattern stands in for random numbers (drawing 1.6B normals takes minutes on CPU)."""
    def fill(s):
        def make():
            return jnp.sin(jax.lax.broadcasted_iota(jnp.float32, s.shape, len(s.shape) - 1)).astype(s.dtype)

        return jax.jit(make, out_shardings=s.sharding)()

    return jax.tree.map(fill, abstract)


def best_time(fn, repeats: int) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--opt-state", action="store_true", help="also the AdamW moments (mu, nu), as a save does")
    args, rest = parser.parse_known_args()
    config = load_config(args.config, rest)
    mesh = sharding.make_mesh(config.mesh)
    params = filled_like(params_export.abstract_params(config.model, mesh))
    opt = {}
    if args.opt_state:
        opt = {"mu": jax.tree.map(jnp.zeros_like, params), "nu": jax.tree.map(jnp.ones_like, params)}
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves((params, opt)))
    gb = sum(x.nbytes for x in jax.tree.leaves((params, opt))) / 1e9
    print(f"{n / 1e9:.3f}B values ({gb:.2f} GB) in {len(jax.tree.leaves((params, opt)))} arrays on "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"{'pass':<28} {'seconds':>8} {'GB/s':>7}")
    for name, fn in (("digest + finite (verify.py)", lambda: verify.state_digests(params, opt)),
                     ("sum |x| (old checksums)", lambda: verify.checksums(params, opt))):
        seconds = best_time(fn, args.repeats)
        print(f"{name:<28} {seconds:>8.2f} {gb / seconds:>7.2f}")


if __name__ == "__main__":
    main()
