"""IsoFLOP sweep grids: model shapes by depth and the runs that spend each compute budget within 1%
(MDM vs. block diffusion vs. the autoregressive baseline, same data and architecture). Each objective counts its
own FLOPs per token (objectives/registry.py): block diffusion runs its layers over two streams, so it gets fewer
steps for the same budget."""
from __future__ import annotations

import dataclasses
import math

from llada_jax.config import ModelConfig
from llada_jax.models.flops import param_counts
from llada_jax.objectives import registry as objectives_registry


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
    objective: str  # mdm | ar | block_diffusion
    budget: float
    n_layers: int
    d_model: int
    n_heads: int
    mlp_hidden: int
    non_embedding_params: int
    steps: int
    tokens: int
    flops: float  # what the run will actually spend
    block_size: int = 0  # block diffusion's train.block_size (0 for the other objectives)


def run_label(objective: str, block_size: int) -> str:
    """The objective's part of a run name: mdm, ar, bd32 (block diffusion with blocks of 32)."""
    return f"bd{block_size}" if objective == "block_diffusion" else objective


def plan_grid(budgets, depths, *, vocab_size: int, seq_len: int, batch: int, aspect: int = 64, head_dim: int = 64,
              objectives=("mdm", "ar"), min_steps: int = 50, tolerance: float = 0.01,
              model_fields: dict | None = None, block_size: int = 32) -> tuple[list[PlannedRun], list[str]]:
    """Runs for every (budget, depth, objective) whose step count hits the budget within `tolerance`.

    Steps = round(C / (FLOPs/token * tokens/step)), with the objective's FLOPs per token; triples that would need
    fewer than `min_steps` steps or miss the budget by more than the tolerance are left out and explained in the
    second return value. `model_fields` (family, moe) make a mixture of experts' FLOPs count its active parameters.
    """
    runs, skipped = [], []
    for budget in budgets:
        for depth in depths:
            shape = shape_for_depth(depth, aspect, head_dim)
            cfg = ModelConfig(vocab_size=vocab_size, n_kv_heads=shape["n_heads"], head_dim=head_dim, **shape,
                              **(model_fields or {}))
            n = param_counts(cfg)["non_embedding"]
            for objective in objectives:
                fpt = objectives_registry.get(objective).flops_per_token(cfg, seq_len, block_size)
                per_step = fpt * batch * seq_len
                steps = int(round(budget / per_step))
                spent = steps * per_step
                if steps < min_steps or abs(spent - budget) > tolerance * budget:
                    skipped.append(f"{budget_label(budget)} x {depth} layers ({objective}): {steps} steps (need >= "
                                   f"{min_steps} within {tolerance:.0%} of the budget)")
                    continue
                runs.append(PlannedRun(
                    name=f"isoflop-{budget_label(budget)}-N{n / 1e6:.3g}M-{run_label(objective, block_size)}",
                    objective=objective, budget=float(budget), non_embedding_params=n, steps=steps,
                    tokens=steps * batch * seq_len, flops=float(spent),
                    block_size=block_size if objective == "block_diffusion" else 0, **shape))
    return runs, skipped
