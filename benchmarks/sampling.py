"""Sampler speed table: official schedule, serving params, prefix cache, dual cache, threshold decoding.

    python benchmarks/sampling.py --config=configs/tiny.py --batch=1 --prompt-length=256 --gen-length=256 \
        --steps=256 --block-length=32 [--threshold=0.9] [--param-dtype=bfloat16] [--checkpoint=DIR] \
        [--config.model.X=Y ...]

Prints, per mode: forward passes, compile seconds (first call minus a steady one), steady seconds (best of
--repeats), generated tokens/s, speed-up over the first row, and the share of generated tokens identical to
the first row's. Without --checkpoint the params are random: speed of a fixed schedule does not depend on
them, but the pass count of threshold decoding does (benchmarks/sampling_quality.py measures it on a model
trained on a checkable task).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.checkpoints import params_export
from llada_jax.inference import sampling
from llada_jax.inference import serving_params
from llada_jax.models import registry as model_lib
from llada_jax.config import ModelConfig, load_config


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--param-dtype", default="bfloat16", choices=serving_params.CHOICES,
                        help="the serving dtype of every row after the first (the first keeps float32 params)")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_known_args()


def load(args, overrides):
    if args.checkpoint:
        return params_export.load_model(args.checkpoint)
    config = load_config(args.config, overrides)
    cfg = ModelConfig.from_config(config.model)
    return model_lib.split_model(model_lib.abstract_model(cfg))[0], model_lib.init_params(cfg, 0), config


def time_mode(run, repeats: int):
    """(output, passes, compile seconds, best steady seconds)."""
    start = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out, _, passes = jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return np.asarray(out), int(passes), max(first - min(times), 0.0), min(times)


def main():
    args, overrides = parse_args()
    graphdef, params, config = load(args, overrides)
    served = serving_params.cast_params(params, serving_params.serving_dtype(args.param_dtype))
    prompt = jax.random.randint(jax.random.key(0), (args.batch, args.prompt_length), 3, 200)
    valid = jnp.ones_like(prompt, bool)
    dtype = args.param_dtype
    modes = [("official schedule, f32 params", params, {}), (f"official schedule, {dtype}", served, {}),
             (f"prefix cache, {dtype}", served, dict(cache="prefix")),
             (f"dual cache, {dtype}", served, dict(cache="dual")),
             (f"dual cache + threshold {args.threshold}", served, dict(cache="dual", threshold=args.threshold))]
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind} | model {config.model.d_model}d x "
          f"{config.model.n_layers}L ({config.model.dtype} compute) | batch {args.batch} | prompt {args.prompt_length} "
          f"| gen {args.gen_length} | steps {args.steps} | block {args.block_length} | T={args.temperature}")
    print(f"{'mode':<34} {'passes':>6} {'compile s':>9} {'seconds':>8} {'tokens/s':>9} {'speed-up':>8} {'same':>6}")
    baseline = reference = None
    for name, mode_params, options in modes:
        run = lambda: sampling.generate(  # noqa: E731
            graphdef, mode_params, prompt, valid, jax.random.key(1), gen_length=args.gen_length, steps=args.steps,
            block_length=args.block_length, mask_id=config.model.mask_token_id, temperature=args.temperature,
            **options)
        out, passes, compile_s, best = time_mode(run, args.repeats)
        baseline = baseline or best
        reference = out if reference is None else reference
        same = np.mean(out[:, args.prompt_length:] == reference[:, args.prompt_length:])
        print(f"{name:<34} {passes:>6} {compile_s:>9.2f} {best:>8.3f} {args.batch * args.gen_length / best:>9,.1f} "
              f"{baseline / best:>7.2f}x {same:>6.1%}")


if __name__ == "__main__":
    main()
