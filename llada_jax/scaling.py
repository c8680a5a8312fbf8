"""Parameter and FLOPs accounting for scaling studies and MFU.

Training FLOPs per token = 6 * N + 12 * n_layers * seq_len * (n_heads * head_dim), where N counts the
matmul parameters (every weight except the embedding table, which is a lookup; the untied output head
counts). The second term is attention's QK^T and AV products, forward (4 * T * d_attn per layer) times 3
for forward plus backward. It is the full bidirectional cost: a mask predictor attends to all positions.

The second half plans IsoFLOP sweeps (model sizes x compute budgets, each as MDM and AR run) and fits them.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from llada_jax.config import ModelConfig


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    d, f, hd = cfg.d_model, cfg.mlp_hidden, cfg.head_dim
    attn = d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2  # q, out; k, v
    mlp = 3 * d * f
    per_layer = attn + mlp + 2 * d  # two RMSNorm weights
    embedding = cfg.vocab_size * d
    head = d * cfg.vocab_size
    non_embedding = cfg.n_layers * per_layer + d + head
    return {"total": non_embedding + embedding, "non_embedding": non_embedding, "embedding": embedding,
            "per_layer": per_layer}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward); see the module docstring for the formula."""
    n = param_counts(cfg)
    matmul_params = n["non_embedding"] - cfg.n_layers * 2 * cfg.d_model - cfg.d_model  # norms do no matmuls
    return 6.0 * matmul_params + 12.0 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim


# Dense bf16 peak TFLOP/s per chip, for MFU.
PEAK_TFLOPS = {
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,  # v5e
    "tpu v5e": 197.0,
    "tpu v5p": 459.0,
    "tpu v5": 459.0,
    "tpu v6 lite": 918.0,  # v6e (Trillium)
    "tpu v6e": 918.0,
    "h100": 989.0,
    "h200": 989.0,
}


def peak_tflops(device_kind: str) -> float | None:
    kind = device_kind.lower()
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name in kind:
            return PEAK_TFLOPS[name]
    return None


# ---------------------------------------------------------------------------------------------------------
# IsoFLOP sweep grids and fits (MDM vs. the autoregressive baseline, same data and architecture).

def shape_for_depth(n_layers: int, aspect: int = 64, head_dim: int = 64) -> dict:
    """Width/depth rule: d_model = aspect * n_layers, heads of head_dim, SwiGLU hidden ~ 8/3 d (multiple of 64)."""
    d_model = aspect * n_layers
    if d_model % head_dim:
        raise ValueError(f"aspect {aspect} x {n_layers} layers = {d_model} is not a multiple of head_dim {head_dim}")
    mlp = int(math.ceil(8 * d_model / 3 / 64) * 64)
    return {"d_model": d_model, "n_layers": n_layers, "n_heads": d_model // head_dim, "mlp_hidden": mlp}


def budget_label(flops: float) -> str:
    """1e18 -> '1e18', 3e17 -> '3e17' (run names)."""
    exponent = int(math.floor(math.log10(flops)))
    mantissa = flops / 10 ** exponent
    return f"{mantissa:.2g}e{exponent}".replace(".", "p")


@dataclasses.dataclass
class PlannedRun:
    name: str
    objective: str  # mdm | ar
    budget: float
    n_layers: int
    d_model: int
    n_heads: int
    mlp_hidden: int
    non_embedding_params: int
    steps: int
    tokens: int
    flops: float  # what the run will actually spend


def plan_grid(budgets, depths, *, vocab_size: int, seq_len: int, batch: int, aspect: int = 64, head_dim: int = 64,
              objectives=("mdm", "ar"), min_steps: int = 50, tolerance: float = 0.01) -> tuple[list[PlannedRun], list[str]]:
    """Runs for every (budget, depth, objective) whose step count hits the budget within `tolerance`.

    Steps = round(C / (FLOPs/token * tokens/step)); pairs that would need fewer than `min_steps` steps or miss
    the budget by more than the tolerance are left out and explained in the second return value.
    """
    runs, skipped = [], []
    for budget in budgets:
        for depth in depths:
            shape = shape_for_depth(depth, aspect, head_dim)
            cfg = ModelConfig(vocab_size=vocab_size, n_kv_heads=shape["n_heads"], head_dim=head_dim, **shape)
            per_step = flops_per_token(cfg, seq_len) * batch * seq_len
            steps = int(round(budget / per_step))
            spent = steps * per_step
            if steps < min_steps or abs(spent - budget) > tolerance * budget:
                skipped.append(f"{budget_label(budget)} x {depth} layers: {steps} steps (need >= {min_steps} within "
                               f"{tolerance:.0%} of the budget)")
                continue
            n = param_counts(cfg)["non_embedding"]
            for objective in objectives:
                runs.append(PlannedRun(
                    name=f"isoflop-{budget_label(budget)}-N{n / 1e6:.3g}M-{objective}", objective=objective,
                    budget=float(budget), non_embedding_params=n, steps=steps, tokens=steps * batch * seq_len,
                    flops=float(spent), **shape))
    return runs, skipped


def fit_parabola(log_n: np.ndarray, loss: np.ndarray) -> dict | None:
    """Loss = a x^2 + b x + c in x = log10 N; the minimum gives N* and L* for one IsoFLOP curve."""
    if len(log_n) < 3:
        return None
    a, b, c = np.polyfit(log_n, loss, 2)
    x = -b / (2 * a) if a > 0 else None
    if x is None or not np.min(log_n) <= x <= np.max(log_n):
        return None  # no interior minimum: the budget's sizes do not bracket the optimum (do not extrapolate)
    return {"a": float(a), "b": float(b), "c": float(c), "n_opt": float(10 ** x), "loss_opt": float(c - b * b / (4 * a))}


def fit_power_law(x, y) -> dict:
    """y = k * x^e by least squares in log-log space."""
    e, log_k = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return {"k": float(np.exp(log_k)), "exponent": float(e)}


def fit_scaling(results: list[dict]) -> dict:
    """Per objective: IsoFLOP parabolas per budget, then N* ~ C^a, D* ~ C^b (D* = C / 6 N*) and L* ~ C^c."""
    out = {}
    for objective in sorted({r["objective"] for r in results}):
        curves = {}
        for budget in sorted({r["budget"] for r in results if r["objective"] == objective}):
            rows = [r for r in results if r["objective"] == objective and r["budget"] == budget]
            fit = fit_parabola(np.log10([r["non_embedding_params"] for r in rows]), np.array([r["eval_loss"] for r in rows]))
            if fit:
                curves[budget] = fit
        entry = {"isoflop": {str(b): f for b, f in curves.items()}}
        if len(curves) >= 2:
            budgets = sorted(curves)
            n_opt = [curves[b]["n_opt"] for b in budgets]
            entry["n_opt"] = fit_power_law(budgets, n_opt)
            entry["d_opt"] = fit_power_law(budgets, [b / (6 * n) for b, n in zip(budgets, n_opt)])
            entry["loss"] = fit_power_law(budgets, [curves[b]["loss_opt"] for b in budgets])
        out[objective] = entry
    return out
