"""What a checkpoint's stored config must agree with: the model's shape (else the weights do not fit) and the
schedule (a resumed run that changes it is told so)."""
from __future__ import annotations

import ml_collections

from llada_jax.config import ConfigError

SCHEDULE_FIELDS = ("train.steps", "train.global_batch_size", "train.seq_len", "train.objective", "optimizer.lr",
                   "optimizer.schedule", "optimizer.warmup_steps", "optimizer.final_ratio", "optimizer.wsd_drop_at",
                   "optimizer.wsd_decay_from", "optimizer.wsd_drop_ratio")


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
    """Stops with one sentence when a checkpoint's model shape differs from the config's."""
    for field in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden"):
        a, b = saved.model.get(field), config.model.get(field)
        if a != b:
            raise ConfigError(
                f"the checkpoint in {where} has model.{field}={a} but the config has model.{field}={b}; "
                "use the checkpoint's model config or a fresh workdir"
            )
