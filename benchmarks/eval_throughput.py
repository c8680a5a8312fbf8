"""Requests/s of the harness model's batched paths against a one-request-at-a-time loop (the official class).

    python benchmarks/eval_throughput.py [--model=small|tiny] [--requests=64] [--mc-num=128] [--mc-batch-size=8]
        [--rows-per-pass=64,512] [--gen-requests=16] [--gen-length=32] [--gen-batch-size=16]

loglikelihood: the loop scores one request at a time, mc_num / mc_batch_size forward passes of mc_batch_size
rows each (what the official get_loglikelihood does; `likelihood.log_likelihood`); the batched path packs the
mini-batches of many requests into passes of about --rows-per-pass rows (`likelihood.batched_log_likelihoods`;
one line per value: on a CPU, where passes are compute-bound, moderate passes run fastest per row).
Both use the same per-request keys, so their estimates must agree (printed: the largest difference, against
the Monte Carlo standard error). generate_until: `sampling.generate` one prompt at a time vs --gen-batch-size
prompts per call. Random params, synthetic token requests; compilation is excluded (warm-up on the same
shapes first). Runs on whatever device JAX sees (CPU here); timings are only comparable on one device.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llada_jax.inference import likelihood  # noqa: E402
from llada_jax.inference import sampling
from llada_jax.models import registry as model_lib  # noqa: E402
from llada_jax.config import ModelConfig  # noqa: E402
from llada_jax.eval.progress import Progress  # noqa: E402

MODELS = {  # "small": dispatch-bound on CPU, "tiny": configs/tiny.py's size (compute-bound on CPU)
    "small": dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16, mlp_hidden=176),
    "tiny": dict(vocab_size=320, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4, head_dim=64, mlp_hidden=704),
}
MASK_ID = 259


def synthetic_requests(n: int, seed: int, answer_lengths=(2, 12)):
    """(prompt, answer) token lists: prompts of 16-80 tokens, answers uniform in the given range of lengths."""
    rng = np.random.default_rng(seed)
    low, high = answer_lengths
    return [(rng.integers(3, 259, rng.integers(16, 81)).tolist(),
             rng.integers(3, 259, rng.integers(low, high + 1)).tolist()) for _ in range(n)]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def loglikelihood_rates(graphdef, params, args):
    pairs = synthetic_requests(args.requests, 0, args.answer_lengths)
    keys = [jax.random.key(i) for i in range(len(pairs))]
    key_data = np.stack([np.asarray(jax.random.key_data(k)) for k in keys])
    options = dict(mask_id=MASK_ID, mc_num=args.mc_num, batch_size=args.mc_batch_size, estimator="official")

    def loop(subset):
        progress = Progress("loop loglikelihood", len(subset), len(subset), every_s=15)
        out = []
        for n in subset:
            out.append(likelihood.log_likelihood(graphdef, params, *pairs[n], keys[n], **options))
            progress.update(len(out))
        return out

    def batched(subset, rows_per_pass):
        progress = Progress(f"batched loglikelihood {rows_per_pass} rows/pass", len(subset), len(subset), every_s=15)
        return likelihood.batched_log_likelihoods(
            graphdef, params, [pairs[n] for n in subset], key_data[subset], rows_per_pass=rows_per_pass,
            progress=lambda done, total: progress.update(done, total), **options)

    widths = {}
    for n, (p, a) in enumerate(pairs):  # warm-up: one request per padded width compiles every shape
        widths.setdefault(-(-(len(p) + len(a)) // 32), n)
    loop(list(widths.values()))
    everything = list(range(len(pairs)))
    want, loop_s = timed(lambda: loop(everything))
    print(f"loglikelihood mc_num={args.mc_num} ({len(pairs)} requests, answers of {args.answer_lengths[0]}-"
          f"{args.answer_lengths[1]} tokens): one request at a time "
          f"{len(pairs) / loop_s:.2f} requests/s")
    for rows_per_pass in args.rows_per_pass:
        batched(everything, rows_per_pass)  # warm-up: compiles every (width, answer window) shape
        got, batched_s = timed(lambda: batched(everything, rows_per_pass))
        diff = np.abs(np.asarray(got)[:, 0] - np.asarray(want)[:, 0])
        print(f"  batched, {rows_per_pass} rows/pass: {len(pairs) / batched_s:.2f} requests/s, speed-up "
              f"{loop_s / batched_s:.1f}x; largest |difference| {diff.max():.2e} nats (median Monte Carlo "
              f"stderr {np.median(np.asarray(want)[:, 1]):.3f})", flush=True)


def generation_rates(graphdef, params, args):
    prompts = [p for p, _ in synthetic_requests(args.gen_requests, 1)]
    width = max(len(p) for p in prompts)
    options = dict(gen_length=args.gen_length, steps=args.gen_length, block_length=args.gen_length,
                   mask_id=MASK_ID)

    def run(batch_size):
        progress = Progress(f"generate batch {batch_size}", len(prompts), len(prompts), every_s=15)
        out = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            chunk += [chunk[0]] * (batch_size - len(chunk))
            ids, valid = sampling.left_pad([[0] * (width - len(p)) + p for p in chunk], 0)
            tokens, _, _ = sampling.generate(graphdef, params, ids, valid, jax.random.key(0), **options)
            out += list(np.asarray(tokens))[:len(prompts) - start]
            progress.update(len(out))
        return out

    run(1), run(args.gen_batch_size)  # compile both shapes
    one, one_s = timed(lambda: run(1))
    many, many_s = timed(lambda: run(args.gen_batch_size))
    same = np.mean([np.array_equal(a, b) for a, b in zip(one, many)])
    print(f"generate_until gen_length=steps={args.gen_length} ({len(prompts)} requests): loop "
          f"{len(prompts) / one_s:.2f} requests/s, batched {len(prompts) / many_s:.2f} requests/s, "
          f"speed-up {one_s / many_s:.1f}x; identical outputs {same:.0%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=list(MODELS), default="small")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--mc-num", type=int, default=128)
    parser.add_argument("--mc-batch-size", type=int, default=8)
    parser.add_argument("--answer-lengths", type=lambda t: tuple(int(v) for v in t.split("-")), default=(2, 12),
                        help="answer tokens, uniform in LOW-HIGH (1 token: MMLU letters; 2-12: ARC, winogrande; "
                             "15-30: hellaswag, piqa)")
    parser.add_argument("--rows-per-pass", type=lambda t: [int(v) for v in t.split(",")], default=[64, 512])
    parser.add_argument("--gen-requests", type=int, default=16)
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--gen-batch-size", type=int, default=16)
    args = parser.parse_args()
    cfg = ModelConfig(**MODELS[args.model], max_seq_len=256, dtype="float32")
    graphdef = model_lib.split_model(model_lib.abstract_model(cfg))[0]
    params = model_lib.init_params(cfg, 0)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, model {args.model}: {MODELS[args.model]}")
    loglikelihood_rates(graphdef, params, args)
    if args.gen_requests:
        generation_rates(graphdef, params, args)


if __name__ == "__main__":
    main()
