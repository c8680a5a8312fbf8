"""Tokens/s the grain input pipeline delivers on this host, next to what the 1B model consumes per v5p host.

    python benchmarks/data_pipeline.py [--seconds=20] [--seq-len=4096] [--local-batch=32] [--packing=concat]
                                       [--workers=0] [--read-threads=4] [--mfu=0.5]

Prepares the CPython docs + standard-library source (byte vocabulary, no download) into a temporary folder,
then times `llada_jax.data.pipeline.build(...)`'s iterator. Consumption: a v5p chip at MFU m trains
m * 459e12 / flops_per_token(1B, seq) tokens/s (flops_per_token = 6N + 12 * layers * seq * d_attn, see
llada_jax/models/flops.py); a v5p host drives 4 chips. The pipeline keeps up if its tokens/s per host exceeds that.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llada_jax.models import flops  # noqa: E402
from llada_jax.utils import chips  # noqa: E402
from llada_jax.config import ModelConfig, load_config  # noqa: E402
from llada_jax.data import pipeline  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHIPS_PER_V5P_HOST = 4


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--local-batch", type=int, default=32, help="rows per host per step")
    parser.add_argument("--packing", default="concat", choices=("concat", "first_fit"))
    parser.add_argument("--workers", type=int, default=0, help="grain worker processes (data.worker_count)")
    parser.add_argument("--read-threads", type=int, default=4)
    parser.add_argument("--mfu", type=float, default=0.5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        config = load_config(os.path.join(ROOT, "configs", "tiny.py"), [
            f"data.cache_dir={cache}", "data.include_stdlib_source=True", f"train.seq_len={args.seq_len}",
            f"model.max_seq_len={args.seq_len}", f"train.global_batch_size={args.local_batch}",
            f"data.packing={args.packing}", f"data.worker_count={args.workers}",
            f"data.read_threads={args.read_threads}", "train.eval_batches=0"])
        t0 = time.perf_counter()
        batches, _, info = pipeline.build(config, 0, 1, log=lambda s: None)
        setup = time.perf_counter() - t0
        next(batches)  # warm-up (workers start, first shards open)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            n += next(batches)["tokens"].size
        elapsed = time.perf_counter() - t0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    delivered = n / elapsed

    one_b = ModelConfig.from_config(load_config(os.path.join(ROOT, "configs", "llada_1b.py")).model)
    fpt = flops.flops_per_token(one_b, args.seq_len)
    per_chip = args.mfu * chips.PEAK_TFLOPS["tpu v5p"] * 1e12 / fpt
    per_host = CHIPS_PER_V5P_HOST * per_chip

    print(f"corpus: {info['train_tokens']:,} train tokens (prepared + opened in {setup:.1f}s)")
    print(f"{'':50s}{'tokens/s':>14s}")
    print(f"{'pipeline, this host (' + str(cores) + ' cores, ' + args.packing + ', ' + str(args.workers) + ' workers)':50s}"
          f"{delivered:>14,.0f}")
    print(f"{'  per core':50s}{delivered / max(cores, 1):>14,.0f}")
    print(f"{'1B on one v5p chip @ ' + format(args.mfu, '.0%') + ' MFU':50s}{per_chip:>14,.0f}")
    print(f"{'1B on one v5p host (4 chips)':50s}{per_host:>14,.0f}")
    print(f"(1B FLOPs/token at seq {args.seq_len}: {fpt:.3e} = 6N + 12*L*seq*d_attn; v5p peak "
          f"{chips.PEAK_TFLOPS['tpu v5p']:.0f} TFLOP/s bf16) -> headroom x{delivered / per_host:,.1f}")


if __name__ == "__main__":
    main()
