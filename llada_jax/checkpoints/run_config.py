"""What a checkpoint's stored config must agree with: the model's shape (else the weights do not fit) and the
schedule (a resumed run that changes it is told so)."""
from __future__ import annotations

import ml_collections

from llada_jax.config import ConfigError, ModelConfig

# model fields that decide which params exist and their shapes
SHAPE_FIELDS = ("family", "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden",
                "qk_norm", "qkv_bias", "tie_embeddings")

# a mixture of experts' fields that decide its params' shapes (model.moe.*; absent in older checkpoints: defaults)
MOE_SHAPE_FIELDS = ("experts", "expert_hidden", "shared_experts", "first_dense_layers", "expert_bias")

SCHEDULE_FIELDS = ("train.steps", "train.global_batch_size", "train.seq_len", "train.objective", "optimizer.lr",
                   "optimizer.schedule", "optimizer.warmup_steps", "optimizer.final_ratio", "optimizer.wsd_drop_at",
                   "optimizer.wsd_decay_from", "optimizer.wsd_drop_ratio", "train.block_size", "train.block_schedule")


def schedule_changes(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> list[str]:
    """'train.steps 300 -> 1000' for each schedule field a resumed run changes (empty: same schedule)."""
    changes = []
    for dotted in SCHEDULE_FIELDS:
        section, name = dotted.split(".")
        old, new = saved.get(section, {}).get(name), config[section].get(name)
        if old is not None and old != new:
            changes.append(f"{dotted} {old} -> {new}")
    return changes


def check_model_matches(saved: ml_collections.ConfigDict, config: ml_collections.ConfigDict, where) -> None:
    """Stops with one sentence when a checkpoint's model shape differs from the config's. Fields a checkpoint
    predates count as their defaults (a checkpoint without `family` is a dense LLaDA model)."""
    ours, theirs = ModelConfig.from_config(config.model), ModelConfig.from_config(saved.model)
    pairs = [(f, getattr(theirs, f), getattr(ours, f)) for f in SHAPE_FIELDS]
    pairs += [(f"moe.{f}", getattr(theirs.moe, f), getattr(ours.moe, f)) for f in MOE_SHAPE_FIELDS]
    for field, a, b in pairs:
        if a != b:
            raise ConfigError(
                f"the checkpoint in {where} has model.{field}={a} but the config has model.{field}={b}; "
                "use the checkpoint's model config or a fresh workdir"
            )
