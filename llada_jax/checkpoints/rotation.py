"""Which steps a run keeps: the newest `keep_last`, every multiple of `keep_every` forever (Orbax's manager does
the deleting, only after a newer save is complete), and a run folder that holds nothing but our steps."""
from __future__ import annotations

import orbax.checkpoint as ocp

from llada_jax.checkpoints.locate import PARAMS_ITEM, SET_ASIDE, read_config
from llada_jax.checkpoints.run_config import check_model_matches
from llada_jax.config import ConfigError

ITEMS = (PARAMS_ITEM, "opt_state", "meta", "config")  # what each step folder holds


def manager(directory, checkpoint_cfg, timeout_s: float) -> ocp.CheckpointManager:
    """The Orbax manager for a run's checkpoints folder, with the config's retention and async settings."""
    c = checkpoint_cfg
    return ocp.CheckpointManager(
        directory,
        item_names=ITEMS,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=int(c.keep_last) or None,
            keep_period=int(c.keep_every) or None,
            enable_async_checkpointing=bool(c.async_save),
            async_options=ocp.AsyncOptions(timeout_secs=max(int(timeout_s), 1)),
            cleanup_tmp_directories=True,
            create=True,
        ),
    )


def check_directory(directory, config) -> None:
    """Refuses a checkpoints folder holding foreign files, and one whose newest readable step has another model
    shape (before Orbax touches anything)."""
    if not directory.exists():
        return
    entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    steps = [p for p in entries if p.name.isdigit()]
    foreign = [p.name for p in entries if not p.name.isdigit() and "tmp" not in p.name
               and p.name not in ("_CHECKPOINT_METADATA", "descriptor") and not p.name.startswith(SET_ASIDE)]
    if foreign or any(not (p / PARAMS_ITEM).exists() and not (p / "_CHECKPOINT_METADATA").exists() for p in steps):
        raise ConfigError(
            f"{directory} holds files that are not llada_jax checkpoints "
            f"({', '.join(sorted(foreign)[:3]) or 'step folders without params'}); choose another --workdir"
        )
    for step in sorted(steps, key=lambda p: -int(p.name)):  # the newest step whose config still reads
        try:
            saved = read_config(step)
        except (ConfigError, ValueError, OSError):
            continue  # a damaged step: restore.newest_good says so and falls back
        check_model_matches(saved, config, directory)
        break
