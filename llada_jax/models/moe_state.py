"""The state of a mixture of experts that training moves by load, not by gradients: the expert bias.

Aux-loss-free balancing (DeepSeek-V3, LLaDA2.0): after each optimizer step, every layer's bias of an expert that
got more than the layer's mean load goes down by `bias_update_rate`, one that got less goes up (the sign of the
difference, so the step is the same however unbalanced). The bias only changes which experts are chosen
(moe_routing.py); its gradient is zero, AdamW leaves it alone (a zero gradient makes a zero Adam update, and
names ending in `_bias` get no weight decay) and checkpoints save it with the params.
"""
from __future__ import annotations

import jax.numpy as jnp

from llada_jax.config import ModelConfig


def has_expert_bias(cfg: ModelConfig) -> bool:
    return cfg.is_moe and cfg.moe.expert_bias


def update_expert_bias(cfg: ModelConfig, params: dict, load) -> dict:
    """params with every MoE layer's expert_bias moved towards balance; load [moe layers, E] is the step's
    assignments per expert (summed over devices and micro-batches). Other families' params pass unchanged."""
    if not has_expert_bias(cfg) or load is None:
        return params
    blocks = params["moe_blocks"]
    bias = blocks["expert_bias"]
    step = cfg.moe.bias_update_rate * jnp.sign(jnp.mean(load, axis=-1, keepdims=True) - load)
    return {**params, "moe_blocks": {**blocks, "expert_bias": bias + step.astype(bias.dtype)}}


def bias_range(cfg: ModelConfig, params: dict) -> dict:
    """{"moe_bias_min", "moe_bias_max"} over every layer and expert (empty without an expert bias)."""
    if not has_expert_bias(cfg):
        return {}
    bias = params["moe_blocks"]["expert_bias"]
    return {"moe_bias_min": jnp.min(bias), "moe_bias_max": jnp.max(bias)}
