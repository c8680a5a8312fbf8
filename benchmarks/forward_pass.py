"""Milliseconds per forward pass, the sampler's unit of work: a full pass and a cached window pass.

    python benchmarks/forward_pass.py [--shape=8b|1b|toy] [--batch=1] [--length=512] [--window=32]
        [--scan=both|on|off] [--repeats=5]

A full pass is what the official schedule runs every step (logits for every position); a window pass is a
dual-cache step (only `--window` positions recomputed against the cached keys/values of the rest). Both in
bfloat16 serving params, for layers run by lax.scan and unrolled. Next to each time: the floor set by reading
every weight once from device memory and the floor set by the matmul FLOPs at the chip's peak, so a pass far
above both is doing work it should not (copies of the weights, for instance).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llada_jax.config import ModelConfig  # noqa: E402
from llada_jax.inference import serving_params  # noqa: E402
from llada_jax.models import flops  # noqa: E402
from llada_jax.models import registry as model_lib  # noqa: E402
from llada_jax.utils import chips  # noqa: E402

SHAPES = {
    "8b": dict(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
               mlp_hidden=12288, max_seq_len=4096),
    "1b": dict(vocab_size=126464, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=32, head_dim=64,
               mlp_hidden=5634, max_seq_len=4096),
    "toy": dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16, mlp_hidden=128,
                max_seq_len=256),
}
HBM_TB_S = {"h100": 3.35, "h200": 4.8}  # nominal device-memory bandwidth, TB/s


def best_ms(fn, repeats: int) -> float:
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def passes(cfg: ModelConfig, batch: int, length: int, window: int, repeats: int) -> tuple[float, float]:
    """(full pass ms, window pass ms) for one model config."""
    graphdef = model_lib.graphdef(cfg)
    params = jax.jit(lambda: serving_params.cast_params(model_lib.init_params(cfg, 0), jnp.bfloat16))()
    tokens = jax.random.randint(jax.random.key(0), (batch, length), 3, cfg.vocab_size - 2)
    full = jax.jit(lambda p, t: model_lib.apply(graphdef, p, t))
    with_kv = jax.jit(lambda p, t: model_lib.apply(graphdef, p, t, return_kv=True)[1])
    kv = with_kv(params, tokens)
    start = length - window
    positions = jnp.broadcast_to(jnp.arange(window) + start, (batch, window))
    step = jax.jit(lambda p, t, kv: model_lib.apply(graphdef, p, t, positions, jnp.ones_like(t), cache_kv=kv,
                                                    window_start=start))
    full_ms = best_ms(lambda: full(params, tokens), repeats)
    window_ms = best_ms(lambda: step(params, tokens[:, start:], kv), repeats)
    return full_ms, window_ms


def floors_ms(cfg: ModelConfig, tokens: int, context: int) -> tuple[float | None, float | None]:
    """(weight-read floor, FLOP floor) in ms for `tokens` positions attending to `context` keys, None where the
    device's figures are unknown."""
    kind = jax.devices()[0].device_kind.lower()
    weight_bytes = 2 * flops.param_counts(cfg)["total"]
    bandwidth = next((v for k, v in HBM_TB_S.items() if k in kind), None)
    peak = chips.peak_tflops(kind)
    forward_flops = flops.flops_per_token(cfg, context) / 3 * tokens  # forward only: a third of training's
    return (weight_bytes / (bandwidth * 1e12) * 1e3 if bandwidth else None,
            forward_flops / (peak * 1e12) * 1e3 if peak else None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="8b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--scan", choices=["both", "on", "off"], default="both")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base = ModelConfig(**SHAPES[args.shape], dtype="bfloat16")
    print(f"{jax.devices()[0].device_kind} | {args.shape} | batch {args.batch} | length {args.length} | "
          f"window {args.window}")
    print(f"{'layers':<10} {'pass':<8} {'ms':>8} {'weights floor':>14} {'FLOP floor':>11}")
    for scan in {"both": (True, False), "on": (True,), "off": (False,)}[args.scan]:
        cfg = dataclasses.replace(base, scan_layers=scan)
        full_ms, window_ms = passes(cfg, args.batch, args.length, args.window, args.repeats)
        for name, ms, tokens in (("full", full_ms, args.length), ("window", window_ms, args.window)):
            weights, flop = floors_ms(cfg, tokens * args.batch, args.length)
            show = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            print(f"{'scanned' if scan else 'unrolled':<10} {name:<8} {ms:>8.2f} {show(weights):>14} {show(flop):>11}",
                  flush=True)


if __name__ == "__main__":
    main()
