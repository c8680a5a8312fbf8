"""Every GPU goal in one command, for the few minutes a lent device gives (one table, and JSON).

    python benchmarks/device_check.py [--smoke] [--json=PATH] [--rows=train_1b,sampler_8b,...] [--budget-s=450]

Rows (random weights throughout; compilation is timed apart from the steady state):
- train_1b       configs/llada_1b.py's train step at 4 x 4096 tokens per device: tokens/s, MFU, peak memory, kernel
- max_batch_1b   the largest per-device batch of 4096-token rows: XLA's estimate from the compiled step and the
                 device's limit, then a step actually run at that batch (and lower ones if it fails)
- layer_8b       the 8B layer shape (6 layers, 2 x 4096 per device): MFU
- sampler_8b     the 8B model, prompt 256, gen 256, block 32, batch 1 and 8, in each mode: official schedule (f32
                 params), bf16 serving, prefix cache, dual cache, dual cache + threshold 0.9; seconds per batch
                 and the speed-up over LLaDA's generate.py on one H100 (9.02 s for 256 tokens at batch 1)
- scoring        batched Monte Carlo scoring against the one-request loop (the official class), rows/s
- moe_step       configs/llada2_mini.py's layers (3 of 20: the dense one and two with 256 experts, top 8) at 2 x 4096
                 tokens per device: tokens/s, MFU of the active parameters, peak memory, grouped-matmul kernel,
                 worst layer's max/mean expert load
- block_diffusion_step  configs/llada_1b.py's block-diffusion train step (block 32, two streams of 4096 per row, 2 rows
                 per device) with the platform's kernel (GPU: cuDNN with a dense two-stream mask) and with the tiled
                 blockwise kernel that skips empty tiles: tokens/s, MFU (the objective's FLOPs), peak memory
A row that crashes is marked FAILED with its one-line cause and makes the exit code 1; a row the time budget
leaves no room for is marked SKIPPED (budget); nothing is left out silently. `--smoke` runs every row at toy
shapes (CPU: under a minute), which tests/test_benchmarks.py does.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL_GENERATE_S = 9.02  # LLaDA's generate.py, 8B, batch 1, 256 tokens, 256 steps, one H100 (issue 25)
SAMPLER_MODES = (  # (name, serving dtype, sampler options)
    ("official schedule, f32 params", "float32", {}),
    ("official schedule, bf16 serving", "bfloat16", {}),
    ("prefix cache, bf16", "bfloat16", {"cache": "prefix"}),
    ("dual cache, bf16", "bfloat16", {"cache": "dual"}),
    ("dual cache + threshold 0.9, bf16", "bfloat16", {"cache": "dual", "threshold": 0.9}),
)


@dataclasses.dataclass(frozen=True)
class Scale:
    """The shapes of one run: the issue's (full) or toy ones that finish on a CPU (smoke)."""
    train_config: str
    train_overrides: tuple
    train_rows: int  # sequences per device
    layer_config: str
    layer_overrides: tuple
    layer_rows: int
    steps: int  # timed steps after the compiling one
    sampler_model: dict
    prompt: int
    gen: int
    block: int
    sampler_batches: tuple
    score_requests: int
    score_mc: int
    moe_config: str = "configs/llada2_mini.py"
    moe_overrides: tuple = ("model.n_layers=3", "mesh.expert=1", "train.seq_len=4096")
    moe_rows: int = 2


BLOCK = {"full": 32, "smoke": 8}  # block_diffusion_step's block size
FULL = Scale("configs/llada_1b.py", ("train.seq_len=4096",), 4, "configs/llada_8b.py", ("model.n_layers=6",), 2, 5,
             dict(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=128,
                  mlp_hidden=12288, max_seq_len=4096), 256, 256, 32, (1, 8), 32, 128)
TOY_MODEL = ("model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=4", "model.mlp_hidden=128",
             "model.vocab_size=320", "model.max_seq_len=128", "model.mask_token_id=259", "model.eos_token_id=1",
             "model.pad_token_id=1", "train.seq_len=64")
SMOKE = Scale("configs/llada_1b.py", TOY_MODEL, 2, "configs/llada_8b.py", TOY_MODEL, 2, 1,
              dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16, mlp_hidden=128,
                   max_seq_len=128, mask_token_id=259), 16, 16, 8, (1, 2), 4, 8, "configs/tiny_moe.py",
              ("model.d_model=64", "model.mlp_hidden=96", "model.moe.expert_hidden=32", "model.max_seq_len=128",
               "train.seq_len=64", "mesh.expert=1"), 2)


class Skipped(Exception):
    """A row left out on purpose; the message says why (shown in the table, never silent)."""


def train_setup(config_path: str, overrides, rows_per_device: int):
    import jax

    from llada_jax import sharding
    from llada_jax.config import load_config, validate

    config = load_config(os.path.join(ROOT, config_path), list(overrides))
    config.mesh.update({"data": 1, "fsdp": -1, "tensor": 1})
    config.train.global_batch_size = rows_per_device * jax.device_count()
    config.train.grad_accum_steps = 1
    validate(config, jax.device_count())
    return config, sharding.make_mesh(config.mesh)


def measure_step(config, mesh, steps: int) -> dict:
    """Compile + first step, then `steps` timed steps of the real jitted train step on random tokens."""
    import jax
    import numpy as np

    from llada_jax import sharding
    from llada_jax.config import ModelConfig
    from llada_jax.objectives import registry as objectives
    from llada_jax.training.trainer import Trainer
    from llada_jax.utils import chips

    trainer = Trainer(config, mesh)
    state = trainer.init_state()
    t = config.train
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size - 1, (t.global_batch_size, t.seq_len))
    batch = sharding.global_batch({"tokens": tokens.astype(np.int32)}, mesh)
    start = time.perf_counter()
    state, metrics = jax.block_until_ready(trainer.step(state, batch))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = trainer.step(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / steps
    loss = float(metrics["loss"])
    del state, batch
    n_tokens = t.global_batch_size * t.seq_len
    fpt = objectives.get(t.objective).flops_per_token(ModelConfig.from_config(config.model), t.seq_len,
                                                      t.get("block_size", 32))
    model_flops = fpt * n_tokens
    peak = chips.peak_tflops(jax.devices()[0].device_kind)
    router = {"worst_load": float(metrics["moe_worst_load"])} if "moe_worst_load" in metrics else {}
    return {"tokens_per_s": n_tokens / step_s, "step_s": step_s, "compile_s": compile_s,
            "mfu": model_flops / step_s / (peak * 1e12 * jax.device_count()) if peak else None,
            "peak_gib": peak_memory_gib(), "kernel": trainer.attention_kernel, "loss": loss,
            "rows_per_device": t.global_batch_size // jax.device_count(), "seq_len": t.seq_len, **router}


def peak_memory_gib():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**30 if "peak_bytes_in_use" in stats else None


def row_train_1b(scale: Scale) -> dict:
    config, mesh = train_setup(scale.train_config, scale.train_overrides, scale.train_rows)
    return measure_step(config, mesh, scale.steps)


def row_max_batch_1b(scale: Scale) -> dict:
    """XLA's estimate of the largest batch (preflight's linear rule), then a step run at it, lower on failure.
    The smoke run has no device limit (CPU) and pretends one of 4x the compiled step's peak."""
    from llada_jax.training import preflight

    config, _ = train_setup(scale.train_config, scale.train_overrides, scale.train_rows)
    report = preflight.analyse(config)
    if not report["device_limit_bytes"] and scale is SMOKE:
        report["device_limit_bytes"] = 4 * report["peak_bytes"]
    estimate = preflight.max_sequences(report)
    if not estimate:
        raise Skipped("the device reports no memory limit: no estimate to check")
    tried = []
    for rows in sorted({estimate, max(1, estimate * 3 // 4)}, reverse=True):
        try:
            config, mesh = train_setup(scale.train_config, scale.train_overrides, rows)
            result = measure_step(config, mesh, 1)
            return {"estimate_rows": estimate, "ran_rows": rows, "failed_rows": tried,
                    "tokens_per_s": result["tokens_per_s"], "mfu": result["mfu"]}
        except Exception as e:  # noqa: BLE001 - an OOM surfaces as XlaRuntimeError/ValueError by backend
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            tried.append(rows)
            gc.collect()
    raise RuntimeError(f"out of memory at every tried batch {tried} (estimate {estimate})")


def row_layer_8b(scale: Scale) -> dict:
    config, mesh = train_setup(scale.layer_config, scale.layer_overrides, scale.layer_rows)
    return measure_step(config, mesh, scale.steps)


def sampler_model(scale: Scale):
    import jax

    from llada_jax.config import ModelConfig
    from llada_jax.models import registry as model_lib

    cfg = ModelConfig(**scale.sampler_model, dtype="bfloat16")
    params = jax.jit(lambda: model_lib.init_params(cfg, 0))()
    return cfg, model_lib.graphdef(cfg), params


def row_sampler_8b(scale: Scale, deadline: float) -> dict:
    """Seconds per batch of each mode (best of 2 after a compiling call) and its forward passes."""
    import jax
    import jax.numpy as jnp

    from llada_jax.inference import sampling, serving_params

    cfg, graphdef, params = sampler_model(scale)
    served = serving_params.cast_params(params, jnp.bfloat16)
    out = {}
    for batch in scale.sampler_batches:
        prompt = jax.random.randint(jax.random.key(0), (batch, scale.prompt), 3, cfg.vocab_size - 2)
        valid = jnp.ones_like(prompt, bool)
        for name, dtype, options in SAMPLER_MODES:
            key = f"batch {batch}: {name}"
            if time.perf_counter() > deadline:
                out[key] = "SKIPPED (budget)"
                continue
            mode_params = params if dtype == "float32" else served
            run = lambda: sampling.generate(  # noqa: E731
                graphdef, mode_params, prompt, valid, jax.random.key(1), gen_length=scale.gen, steps=scale.gen,
                block_length=scale.block, mask_id=cfg.mask_token_id, **options)
            start = time.perf_counter()
            jax.block_until_ready(run())
            first = time.perf_counter() - start
            times = []
            for _ in range(2):
                start = time.perf_counter()
                _, _, passes = jax.block_until_ready(run())
                times.append(time.perf_counter() - start)
            best = min(times)
            out[key] = {"seconds": best, "compile_s": max(first - best, 0.0), "passes": int(passes),
                        "tokens_per_s": batch * scale.gen / best,
                        "vs_official_generate": OFFICIAL_GENERATE_S * batch / best if scale is FULL else None}
    return out


def row_scoring(scale: Scale) -> dict:
    """Requests/s and rows/s of batched scoring against the one-request loop, same keys (same estimates)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from llada_jax.inference import likelihood, serving_params

    cfg, graphdef, params = sampler_model(scale)
    params = serving_params.cast_params(params, jnp.bfloat16)
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(3, 259, rng.integers(40, 57)).tolist(), rng.integers(3, 259, rng.integers(2, 9)).tolist())
             for _ in range(scale.score_requests)]  # prompt + answer fit one 64-token width: one loop shape
    keys = [jax.random.key(i) for i in range(len(pairs))]
    key_data = np.stack([np.asarray(jax.random.key_data(k)) for k in keys])
    options = dict(mask_id=cfg.mask_token_id, mc_num=scale.score_mc, batch_size=8, estimator="official")
    loop = lambda: [likelihood.log_likelihood(graphdef, params, *p, k, **options) for p, k in zip(pairs, keys)]  # noqa: E731
    batched = lambda: likelihood.batched_log_likelihoods(graphdef, params, pairs, key_data, **options)  # noqa: E731
    loop(), batched()  # compile every shape
    start = time.perf_counter()
    want = loop()
    loop_s = time.perf_counter() - start
    start = time.perf_counter()
    got = batched()
    batched_s = time.perf_counter() - start
    rows = len(pairs) * scale.score_mc
    return {"loop_requests_per_s": len(pairs) / loop_s, "batched_requests_per_s": len(pairs) / batched_s,
            "loop_rows_per_s": rows / loop_s, "speed_up": loop_s / batched_s,
            "largest_difference_nats": float(np.max(np.abs(np.asarray(got)[:, 0] - np.asarray(want)[:, 0])))}


def row_moe_step(scale: Scale) -> dict:
    """The MoE train step (MFU counts the active parameters) and the grouped matmul it ran."""
    from llada_jax.config import ModelConfig
    from llada_jax.models import registry as model_lib

    config, mesh = train_setup(scale.moe_config, scale.moe_overrides, scale.moe_rows)
    cfg = model_lib.for_platform(ModelConfig.from_config(config.model), mesh.devices.flat[0].platform)
    return {**measure_step(config, mesh, scale.steps), "grouped_matmul": cfg.moe.kernel}


def row_block_diffusion(scale: Scale) -> dict:
    """The 1B block-diffusion step with the platform's kernel (auto) and with the tiled blockwise kernel."""
    block = BLOCK["smoke" if scale is SMOKE else "full"]
    out = {}
    for kernel in ("auto", "blockwise"):
        overrides = scale.train_overrides + ("train.objective=block_diffusion", f"train.block_size={block}",
                                             f"model.attention={kernel}")
        config, mesh = train_setup(scale.train_config, overrides, max(1, scale.train_rows // 2))
        result = measure_step(config, mesh, scale.steps)
        out[f"{kernel} ({result['kernel']})"] = {k: result[k] for k in ("tokens_per_s", "mfu", "peak_gib",
                                                                        "compile_s", "rows_per_device")}
        gc.collect()
    return out


ROWS = {
    "train_1b": row_train_1b,
    "max_batch_1b": row_max_batch_1b,
    "layer_8b": row_layer_8b,
    "sampler_8b": row_sampler_8b,
    "scoring": row_scoring,
    "moe_step": row_moe_step,
    "block_diffusion_step": row_block_diffusion,
}


def run_row(name: str, scale: Scale, deadline: float) -> dict:
    """{"status": ok | FAILED | SKIPPED, "seconds", "figures" or "why"} for one row; never raises."""
    start = time.perf_counter()
    try:
        if time.perf_counter() > deadline:
            raise Skipped("the time budget ran out before this row")
        fn = ROWS[name]
        figures = fn(scale, deadline) if name == "sampler_8b" else fn(scale)
        result = {"status": "ok", "figures": figures}
    except Skipped as e:
        result = {"status": "SKIPPED", "why": str(e)}
    except Exception as e:  # noqa: BLE001 - a crashing row is reported and the others still run
        traceback.print_exc(file=sys.stderr)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        result = {"status": "FAILED", "why": f"{type(e).__name__}: {first}"}
    gc.collect()
    result["seconds"] = time.perf_counter() - start
    return result


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in value.items() if v is not None)
    return str(value)


def table(results: dict, header: str) -> str:
    lines = [header, f"{'row':<22} {'status':<8} {'s':>6}  figures"]
    for name, r in results.items():
        if r["status"] != "ok":
            lines.append(f"{name:<22} {r['status']:<8} {r['seconds']:>6.1f}  {r['why']}")
            continue
        figures = r["figures"]
        nested = all(isinstance(v, (dict, str)) for v in figures.values())
        lines.append(f"{name:<22} {'ok':<8} {r['seconds']:>6.1f}  {'' if nested else fmt(figures)}")
        if nested:
            lines += [f"{'':<39}{k}: {fmt(v)}" for k, v in figures.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every row at toy shapes (CPU, under a minute)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--json", default="", help="also write the results as JSON here")
    parser.add_argument("--budget-s", type=float, default=450.0, help="rows starting after this are SKIPPED")
    args = parser.parse_args(argv)
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    from llada_jax.utils import compile_cache, xla_flags

    xla_flags.apply_defaults()  # before JAX starts its backends
    import jax

    compile_cache.enable()  # rows that compile the same program (train_1b, max_batch_1b) compile it once
    scale = SMOKE if args.smoke else FULL
    deadline = time.perf_counter() + args.budget_s
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    header = (f"device_check{' --smoke' if args.smoke else ''}: {device} | jax {jax.__version__} | "
              f"budget {args.budget_s:.0f} s")
    print(header, flush=True)
    results = {}
    for name in names:
        results[name] = run_row(name, scale, deadline)
        print(f"  {name}: {results[name]['status']} in {results[name]['seconds']:.1f} s", flush=True)
    print(table(results, header))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "smoke": args.smoke, "rows": results}, f, indent=2)
    return 1 if any(r["status"] == "FAILED" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
