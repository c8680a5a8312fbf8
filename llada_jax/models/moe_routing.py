"""The router of a mixture-of-experts layer: which experts each token goes to, with what weight, and the
statistics the balancing losses and metrics are made of. Pure functions of float32 arrays.

Semantics (LLaDA-MoE, LLaDA2.0; see ../shared/LLADA_SPEC.md):
- logits = x @ W_router in float32; scores = softmax(logits) or sigmoid(logits) (model.moe.router).
- Selection uses scores + expert_bias when aux-loss-free balancing is on; the bias picks experts but never
  weighs them, and no gradient reaches it (it moves by load after each step, models/moe_state.py).
- Group-limited routing: experts form n_groups equal groups; a group's score is the sum of its two best
  selection scores (its best one when a group has a single expert); a token keeps its topk_groups best
  groups and picks its top_k experts among theirs.
- Weights: the chosen experts' scores (without bias), renormalised to sum 1 when norm_topk (and top_k > 1),
  times routed_scaling.
Tokens that are padding (valid False) choose no expert: they are sent nowhere and counted nowhere.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from llada_jax.config import MoEConfig


class Routing(NamedTuple):
    experts: jax.Array  # [N, K] int32 chosen experts (the expert count E for padding tokens: chosen nowhere)
    weights: jax.Array  # [N, K] float32 combine weights (0 for padding tokens)
    probs: jax.Array  # [N, E] float32 scores normalised to sum 1 per token (what the balancing loss averages)
    logits: jax.Array  # [N, E] float32 router logits (what the z-loss penalises)


def scores_of(logits: jax.Array, router: str) -> jax.Array:
    return jax.nn.sigmoid(logits) if router == "sigmoid" else jax.nn.softmax(logits, axis=-1)


def group_limited(select: jax.Array, n_groups: int, topk_groups: int) -> jax.Array:
    """`select` [N, E] with every expert outside the token's topk_groups best groups set to -inf."""
    if n_groups <= 1 or topk_groups >= n_groups:
        return select
    n, e = select.shape
    grouped = select.reshape(n, n_groups, e // n_groups)
    best = jax.lax.top_k(grouped, min(2, e // n_groups))[0]
    _, keep = jax.lax.top_k(best.sum(-1), topk_groups)  # [N, topk_groups]
    kept = jnp.zeros((n, n_groups), bool).at[jnp.arange(n)[:, None], keep].set(True)
    return jnp.where(jnp.repeat(kept, e // n_groups, axis=1), select, -jnp.inf)


def route(x: jax.Array, router_w: jax.Array, bias: jax.Array | None, moe: MoEConfig,
          valid: jax.Array | None = None) -> Routing:
    """x [N, d] (any dtype; computed in float32), router_w [d, E], bias [E] or None -> Routing."""
    logits = jnp.einsum("nd,de->ne", x.astype(jnp.float32), router_w.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
    scores = scores_of(logits, moe.router)
    select = scores if bias is None else scores + jax.lax.stop_gradient(bias.astype(jnp.float32))
    select = group_limited(select, moe.n_groups, moe.topk_groups)
    _, experts = jax.lax.top_k(select, moe.top_k)
    weights = jnp.take_along_axis(scores, experts, axis=-1)
    if moe.norm_topk and moe.top_k > 1:
        weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
    weights = weights * moe.routed_scaling
    probs = scores / jnp.sum(scores, axis=-1, keepdims=True) if moe.router == "sigmoid" else scores
    if valid is not None:
        experts = jnp.where(valid[:, None], experts, moe.experts)
        weights = jnp.where(valid[:, None], weights, 0.0)
    return Routing(experts.astype(jnp.int32), weights, probs, logits)


def expert_counts(experts: jax.Array, n_experts: int, rows: jax.Array | None = None, n_rows: int = 1):
    """How many assignments each expert got: [E], or [n_rows, E] per row with `rows` [N] giving each token's row.
    Padding tokens (expert id E) are dropped by the scatter."""
    flat = experts.reshape(-1)
    if rows is None:
        return jnp.zeros((n_experts,), jnp.float32).at[flat].add(1.0, mode="drop")
    row_of = jnp.repeat(rows, experts.shape[-1])
    return jnp.zeros((n_rows, n_experts), jnp.float32).at[row_of, flat].add(1.0, mode="drop")


def routing_stats(routing: Routing, rows: int, valid: jax.Array) -> dict:
    """Sums and counts of one layer on this device's tokens (every entry adds across devices and passes):
    load [E] (assignments per expert), balance_sum (over rows of the row's balancing loss), rows (rows with a
    real token), z_sum (over tokens of logsumexp(logits)^2), tokens (real tokens).

    A row's balancing loss is E * sum_e (n_e / T) * P_e, with n_e its tokens choosing expert e, T its real
    tokens and P_e its mean normalised score for e (the Switch / LLaDA-MoE loss, which is top_k when balanced),
    so the loss of a batch is a mean over rows and accumulates exactly over micro-batches."""
    n, e = routing.probs.shape
    t = n // rows
    validf = valid.astype(jnp.float32).reshape(rows, t)
    real = validf.sum(-1)  # [rows]
    per_row = expert_counts(routing.experts, e, jnp.arange(n) // t, rows)  # [rows, E]
    mean_probs = jnp.einsum("rt,rte->re", validf, routing.probs.reshape(rows, t, e)) / jnp.maximum(real, 1.0)[:, None]
    balance = e * jnp.sum(per_row / jnp.maximum(real, 1.0)[:, None] * mean_probs, axis=-1)
    z = jnp.square(jax.nn.logsumexp(routing.logits, axis=-1)) * valid.reshape(-1)
    return {"load": per_row.sum(0), "balance_sum": jnp.sum(balance), "rows": jnp.sum(real > 0).astype(jnp.float32),
            "z_sum": jnp.sum(z), "tokens": jnp.sum(real)}
