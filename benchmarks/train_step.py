"""Train-step throughput, MFU and memory for a config.

    python benchmarks/train_step.py --config=configs/tiny.py [--steps=10] [--peak-tflops=989] [--profile=DIR]
        [--config.X=Y ...]

Prints params, FLOPs/token (the objective's count: 6N + 12 * layers * seq * d_attn for MDM, see
llada_jax/models/flops.py; block diffusion counts its two streams, objectives/block_diffusion.py), compile time, mean
step time, tokens/s and MFU against the peak bf16 TFLOP/s of the device (known for TPU v4/v5e/v5p/v6e, H100,
H200; give --peak-tflops elsewhere, e.g. for a CPU), then peak device memory and bytes per token: the
runtime's peak where the device reports one (GPU, TPU), else XLA's compiled estimate (CPU). `--profile=DIR`
writes a jax.profiler trace of a few steps there (open it with TensorBoard or Perfetto).
"""
import argparse
import time

from llada_jax.utils import xla_flags

xla_flags.apply_defaults()  # before JAX starts its backends
import jax  # noqa: E402
import numpy as np  # noqa: E402

from llada_jax import sharding  # noqa: E402
from llada_jax.config import ModelConfig, load_config, validate  # noqa: E402
from llada_jax.models import flops  # noqa: E402
from llada_jax.objectives import registry as objectives  # noqa: E402
from llada_jax.training.trainer import Trainer  # noqa: E402
from llada_jax.utils import chips  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None, help="per-device peak; default: known chips")
    parser.add_argument("--profile", default="", help="write a jax.profiler trace of 3 steps to this folder")
    args, rest = parser.parse_known_args()
    config = load_config(args.config, rest)
    validate(config, jax.device_count())
    mcfg = ModelConfig.from_config(config.model)
    t = config.train

    mesh = sharding.make_mesh(config.mesh)
    trainer = Trainer(config, mesh)
    state = trainer.init_state()
    rng = np.random.default_rng(0)
    local_rows = t.global_batch_size // jax.process_count()
    batch = sharding.global_batch(
        {"tokens": rng.integers(0, mcfg.vocab_size, (local_rows, t.seq_len)).astype(np.int32)}, mesh)

    t0 = time.perf_counter()
    state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / args.steps

    if args.profile:
        with jax.profiler.trace(args.profile):
            for _ in range(3):
                state, metrics = trainer.step(state, batch)
            jax.block_until_ready(metrics)
    peak_bytes, peak_source = peak_memory(trainer)
    tokens_per_device = t.global_batch_size * t.seq_len / jax.device_count()

    counts = flops.param_counts(mcfg)
    fpt = objectives.get(t.objective).flops_per_token(mcfg, t.seq_len, t.get("block_size", 32))
    tokens = t.global_batch_size * t.seq_len
    achieved = fpt * tokens / step_s
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or chips.peak_tflops(kind)
    mfu = f"{100 * achieved / (peak * 1e12 * jax.device_count()):.1f}%" if peak else "n/a (pass --peak-tflops)"
    rows = [
        ("device", f"{jax.device_count()} x {kind}"),
        ("mesh", str(dict(mesh.shape))),
        ("params (total / non-embedding)", f"{counts['total'] / 1e6:,.2f}M / {counts['non_embedding'] / 1e6:,.2f}M"),
        (f"FLOPs/token ({t.objective}'s count)", f"{fpt:.4g}"),
        ("tokens/step", f"{tokens:,}"),
        ("compile + first step", f"{compile_s:.2f} s"),
        ("step time", f"{step_s * 1e3:.1f} ms"),
        ("tokens/s", f"{tokens / step_s:,.0f}"),
        ("achieved TFLOP/s (all devices)", f"{achieved / 1e12:.3f}"),
        ("MFU", mfu),
        (f"peak memory per device ({peak_source})", f"{peak_bytes / 2**30:,.3f} GiB"),
        ("peak bytes per token per device", f"{peak_bytes / tokens_per_device / 2**20:,.3f} MiB"),
    ]
    if args.profile:
        rows.append(("profile trace", args.profile))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def peak_memory(trainer) -> tuple[int, str]:
    """(bytes, where from): the runtime's peak across local devices, else the compiled step's estimate."""
    peaks = []
    for device in jax.local_devices():
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 - some backends do not implement memory stats
            stats = {}
        if "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    if peaks:
        return max(peaks), "measured"
    mem = trainer.compile_step().memory_analysis()
    estimate = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
                + mem.temp_size_in_bytes)
    return int(estimate), "XLA estimate"


if __name__ == "__main__":
    main()
