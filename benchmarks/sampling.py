"""Sampler throughput: generated tokens/s and forward passes; official schedule, threshold decoding, KV cache.

    python benchmarks/sampling.py --config=configs/tiny.py --batch=8 --gen-length=128 --steps=128 \
        --block-length=32 [--threshold=0.9] [--temperature=0] [--checkpoint=DIR] [--config.X=Y ...]

Without --checkpoint the params are random (speed does not depend on them, but threshold decoding's pass
count does: give a trained checkpoint for meaningful threshold figures).
"""
import argparse
import time

import jax
import jax.numpy as jnp

from llada_jax import checkpoint, sampling
from llada_jax import model as model_lib
from llada_jax.config import ModelConfig, load_config


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=3)
    args, rest = parser.parse_known_args()
    if args.checkpoint:
        graphdef, params, config = checkpoint.load_model(args.checkpoint)
    else:
        config = load_config(args.config, rest)
        cfg = ModelConfig.from_config(config.model)
        graphdef = model_lib.split_model(model_lib.abstract_model(cfg))[0]
        params = model_lib.init_params(cfg, 0)
    prompt = jax.random.randint(jax.random.key(0), (args.batch, args.prompt_length), 3, 200)
    valid = jnp.ones_like(prompt, bool)
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind} | batch {args.batch} | prompt {args.prompt_length} | "
          f"gen {args.gen_length} | steps {args.steps} | block {args.block_length}")
    print(f"{'mode':<22} {'passes':>7} {'seconds':>9} {'tokens/s':>10} {'speed-up':>9}")
    baseline = None
    modes = (("official schedule", None, False), (f"threshold {args.threshold}", args.threshold, False),
             ("prefix KV cache", None, True), ("threshold + KV cache", args.threshold, True))
    for name, threshold, kv_cache in modes:
        run = lambda: sampling.generate(  # noqa: E731
            graphdef, params, prompt, valid, jax.random.key(1), gen_length=args.gen_length, steps=args.steps,
            block_length=args.block_length, mask_id=config.model.mask_token_id, threshold=threshold,
            kv_cache=kv_cache, temperature=args.temperature)
        jax.block_until_ready(run())  # compile
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out, _, passes = jax.block_until_ready(run())
            times.append(time.perf_counter() - start)
        best = min(times)
        baseline = baseline or best
        print(f"{name:<22} {int(passes):>7} {best:>9.3f} {args.batch * args.gen_length / best:>10,.0f} "
              f"{baseline / best:>8.2f}x")


if __name__ == "__main__":
    main()
