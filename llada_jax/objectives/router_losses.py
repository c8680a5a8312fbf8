"""The router's losses and metrics, added to whatever objective trains a mixture-of-experts model.

objectives.registry.compute_loss collects the router statistics every forward pass of the objective reported
(models/router_stats.py) and hands them here. Per MoE layer: the load-balancing loss (mean over rows, see
models/moe_routing.routing_stats) and the z-loss (mean over real tokens of logsumexp(router logits)^2), each
averaged over layers and weighted by model.moe.load_balance_coef / z_loss_coef.

Exact gradient accumulation: the objective returns a loss sum and a weight W (its rows or tokens) that the
step adds over micro-batches and divides once. The router penalty of a micro-batch enters that sum as
W_micro x penalty_micro (W_micro is data, not a function of the params), so the step's penalty is the
micro-batches' penalties averaged with the objective's weights: the unaccumulated step's value whenever the
micro-batches' weights are proportional to their rows (always for MDM and SFT on equal micro-batches). The
penalty is also returned apart (`penalty_sum`), so the reported loss stays the objective's alone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from llada_jax.config import ModelConfig

# aux entries of the router (sums over micro-batches; per-layer ones are arrays over the MoE layers)
SUMS = ("penalty_sum", "router_balance_sum", "router_z_sum")
PER_LAYER = ("expert_load", "expert_dropped")


def add_router_terms(total, aux: dict, stats: dict | None, cfg: ModelConfig):
    """(loss sum with the router penalty, aux with the router's sums) for one (micro-)batch; unchanged without
    router statistics (a dense model)."""
    if stats is None:
        return total, aux
    balance = jnp.mean(stats["balance_sum"] / jnp.maximum(stats["rows"], 1.0))
    z = jnp.mean(stats["z_sum"] / jnp.maximum(stats["tokens"], 1.0))
    weight = jax.lax.stop_gradient(aux["loss_weight"])
    penalty = weight * (cfg.moe.load_balance_coef * balance + cfg.moe.z_loss_coef * z)
    aux = {**aux, "penalty_sum": penalty, "router_balance_sum": weight * jax.lax.stop_gradient(balance),
           "router_z_sum": weight * jax.lax.stop_gradient(z), "expert_load": stats["load"],
           "expert_dropped": stats["dropped"].astype(jnp.float32)}
    return total + penalty, aux


def objective_sum(aux: dict):
    """The objective's own loss sum: the accumulated total less the router penalty."""
    return aux["loss_sum"] - aux.get("penalty_sum", 0.0)


def router_metrics(aux: dict, cfg: ModelConfig) -> dict:
    """The step's router metrics from accumulated aux: per MoE layer the max/mean expert load (1.0 is perfect
    balance) and, with a capacity, the dropped fraction; the balancing and z losses; nothing for a dense model."""
    if "expert_load" not in aux:
        return {}
    weight = jnp.maximum(aux["loss_weight"], 1.0)
    load = aux["expert_load"]
    ratio = jnp.max(load, axis=-1) / jnp.maximum(jnp.mean(load, axis=-1), 1e-9)
    metrics = {"moe_load_max_mean": ratio, "moe_worst_load": jnp.max(ratio),
               "moe_balance_loss": aux["router_balance_sum"] / weight, "moe_z_loss": aux["router_z_sum"] / weight}
    if cfg.moe.capacity_factor > 0:
        routed = jnp.maximum(jnp.sum(load, axis=-1), 1.0)
        metrics["moe_dropped_fraction"] = aux["expert_dropped"] / routed
    return metrics
