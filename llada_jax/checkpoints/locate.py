"""Where checkpoints live and how to find one: paths (local or gs://), the params folder a user's --checkpoint
names, and what a checkpoint records about its run (the config)."""
from __future__ import annotations

import json
import os

import ml_collections
from etils import epath

from llada_jax.config import ConfigError

PARAMS_ITEM = "params"
CONFIG_FILE = "config.json"
SET_ASIDE = "unusable-step-"  # a step that failed to restore is renamed to this prefix + its number, never deleted


def as_path(path) -> epath.Path:
    """epath for a local folder or a bucket URL; local folders are made absolute because Orbax refuses
    relative paths (so `--workdir=runs/demo` works from any directory)."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def read_config(directory) -> ml_collections.ConfigDict:
    """The run config stored with a params export or a training-checkpoint step."""
    directory = as_path(directory)
    for path in (directory / CONFIG_FILE, directory / "config" / "metadata"):
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError):
                raise ConfigError(f"{path} is not valid JSON: the checkpoint is damaged; use another step or "
                                  "export it again") from None
            if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
                raise ConfigError(f"{path} holds no model config: the checkpoint is damaged; use another step")
            return ml_collections.ConfigDict(saved)
    raise ConfigError(f"{directory} has no {CONFIG_FILE}; it is not a llada_jax checkpoint")


def resolve(directory) -> epath.Path:
    """A folder holding `params/`: the folder itself, or the latest step of a run's checkpoints folder
    (given as WORKDIR, WORKDIR/checkpoints or a step folder)."""
    directory = as_path(directory)
    if "://" not in str(directory) and not directory.exists():
        raise ConfigError(f"{directory} does not exist; pass a folder written by llada-jax (a params export, a run's "
                          "workdir or one of its checkpoint steps)")
    if (directory / PARAMS_ITEM).exists() and ((directory / CONFIG_FILE).exists() or (directory / "config").exists()):
        return directory
    for root in (directory / "checkpoints", directory):
        steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
        if steps:
            return root / str(steps[-1])
    raise ConfigError(
        f"{directory} holds no '{PARAMS_ITEM}' checkpoint; pass a folder written by llada-jax "
        "(a params export, a run's workdir or one of its checkpoint steps)"
    )
