"""The model registry: `model.family` picks the network; everything else reaches models through these functions.

Training, inference and conversion never name a model class. They ask this module for the abstract model,
its params as a pure dict with their logical axis names, and the pure forward passes, so a new family
(mixture of experts, say) plugs in with one entry in FAMILIES.
"""
from __future__ import annotations

import dataclasses

import jax
from flax import nnx

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.models.grouped_matmul import resolve_kernel
from llada_jax.models.moe_state import bias_range, update_expert_bias  # noqa: F401  (the step's entry points)
from llada_jax.models.moe_transformer import MoETransformer
from llada_jax.models.output_head import HeadOutput
from llada_jax.models.transformer import FLOAT32_PARAMS, Transformer  # noqa: F401  (serving keeps these f32)

# model.family -> the nnx.Module class built from a ModelConfig (config.MODEL_FAMILIES lists the same names)
FAMILIES = {"llada": Transformer, "llada_moe": MoETransformer, "llada2_moe": MoETransformer}


def model_class(cfg: ModelConfig):
    try:
        return FAMILIES[cfg.family]
    except KeyError:
        raise ConfigError(f"model.family={cfg.family!r} is unknown; use one of {tuple(FAMILIES)}") from None


def for_platform(cfg: ModelConfig, platform: str) -> ModelConfig:
    """cfg with the choices that depend on where it runs made for `platform` (the MoE grouped matmul kernel),
    so a program compiled ahead of time for TPU on a CPU machine uses TPU's kernel."""
    if not cfg.is_moe:
        return cfg
    return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, kernel=resolve_kernel(cfg.moe.kernel, platform)))


def build(cfg: ModelConfig, rngs: nnx.Rngs):
    """The model of `cfg`'s family with freshly initialised params."""
    return model_class(cfg)(cfg, rngs)


def abstract_model(cfg: ModelConfig):
    """The model with ShapeDtypeStruct leaves: shapes and logical names without allocating anything."""
    return nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0)))


def graphdef(cfg: ModelConfig):
    """The model's structure without params: what `apply` merges a params dict into."""
    return split_model(abstract_model(cfg))[0]


def split_model(model):
    """(graphdef, pure-dict params, pure-dict of logical-name tuples) for functional use under jit."""
    graphdef, state = nnx.split(model)
    names = nnx.get_partition_spec(state).to_pure_dict()
    names = jax.tree.map(tuple, names, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return graphdef, state.to_pure_dict(), names


def apply(graphdef, params, tokens, positions=None, segment_ids=None, **cache_args):
    """Pure forward pass: params (a pure dict, f32) and tokens in, float32 logits out (see the family's __call__,
    e.g. Transformer's, for the sampler's KV-cache arguments)."""
    return nnx.merge(graphdef, params)(tokens, positions, segment_ids, **cache_args)


def apply_head(graphdef, params, tokens, positions=None, segment_ids=None, lengths=None, **window) -> HeadOutput:
    """Pure forward pass for training losses: a HeadOutput (hidden states + head) instead of [B, T, V] logits
    (`window`: the family's cache, visibility and attention_pattern arguments: block diffusion's scorer
    and training objective)."""
    return nnx.merge(graphdef, params).head(tokens, positions, segment_ids, lengths, **window)


def apply_with_kv(graphdef, params, tokens, positions=None, segment_ids=None, **window):
    """(HeadOutput of the final hidden states, every layer's keys/values) without running the output head, so a
    decoder projects only the positions it needs and keeps the keys/values (the block sampler's exact cache)."""
    model = nnx.merge(graphdef, params)
    hidden, kv = model.hidden_states(tokens, positions, segment_ids, **window)
    return HeadOutput(hidden, model.head_weight(), model.cfg.loss_chunk_tokens), kv


def model_config(graphdef, params) -> ModelConfig:
    """The ModelConfig the model was built with (static: read at trace time, nothing is computed), so a
    consumer given only (graphdef, params) reads how to use the model's outputs (model.logit_shift)."""
    return nnx.merge(graphdef, params).cfg


def init_params(cfg: ModelConfig, seed: int):
    """Unsharded params as a pure dict (tests and small models; training/trainer.py creates them sharded)."""
    return split_model(build(cfg, nnx.Rngs(params=seed)))[1]
