"""The model registry: `model.family` picks the network; everything else reaches models through these functions.

Training, inference and conversion never name a model class. They ask this module for the abstract model,
its params as a pure dict with their logical axis names, and the pure forward passes, so a new family
(mixture of experts, say) plugs in with one entry in FAMILIES.
"""
from __future__ import annotations

import jax
from flax import nnx

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.models.output_head import HeadOutput
from llada_jax.models.transformer import Transformer

# model.family -> the nnx.Module class built from a ModelConfig (config.MODEL_FAMILIES lists the same names)
FAMILIES = {"llada": Transformer}


def model_class(cfg: ModelConfig):
    try:
        return FAMILIES[cfg.family]
    except KeyError:
        raise ConfigError(f"model.family={cfg.family!r} is unknown; use one of {tuple(FAMILIES)}") from None


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


def apply_head(graphdef, params, tokens, positions=None, segment_ids=None, lengths=None,
               attention_pattern=None) -> HeadOutput:
    """Pure forward pass for training losses: a HeadOutput (hidden states + head) instead of [B, T, V] logits.
    `attention_pattern` (block_mask.BlockPattern) is block diffusion's attention layout."""
    model = nnx.merge(graphdef, params)
    if attention_pattern is None:
        return model.head(tokens, positions, segment_ids, lengths)
    return model.head(tokens, positions, segment_ids, lengths, attention_pattern=attention_pattern)


def init_params(cfg: ModelConfig, seed: int):
    """Unsharded params as a pure dict (tests and small models; training/trainer.py creates them sharded)."""
    return split_model(build(cfg, nnx.Rngs(params=seed)))[1]
