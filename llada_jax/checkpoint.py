"""Orbax checkpoints of llada_jax params, with the config that built them.

A params checkpoint is a folder holding `params/` (an Orbax PyTree checkpoint of the pure-dict params)
and `config.json` (the full run config, so readers rebuild the exact model). Sampling, scoring and
conversion read such folders; training-run checkpoints keep the same `params` item.
Paths go through etils.epath so `gs://` buckets work like local folders.
"""
from __future__ import annotations

import json

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from llada_jax import model as model_lib
from llada_jax import sharding
from llada_jax.config import ConfigError, ModelConfig

PARAMS_ITEM = "params"
CONFIG_FILE = "config.json"


def save_params(directory, params, config: ml_collections.ConfigDict, *, overwrite: bool = False) -> epath.Path:
    """Writes a params-only checkpoint. Orbax writes to a temporary folder and renames it when complete,
    so a crash mid-save leaves no half-written `params/` behind."""
    directory = epath.Path(directory)
    if (directory / PARAMS_ITEM).exists() and not overwrite:
        raise FileExistsError(f"{directory} already holds a params checkpoint; choose another folder or pass overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / PARAMS_ITEM, params, force=overwrite)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        (directory / CONFIG_FILE).write_text(config.to_json(indent=2))
    return directory


def read_config(directory) -> ml_collections.ConfigDict:
    path = epath.Path(directory) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{directory} has no {CONFIG_FILE}; it is not a llada_jax params checkpoint")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_params(directory, mesh=None):
    """(params, config) from a params checkpoint; with a mesh, params arrive sharded by the logical rules."""
    directory = epath.Path(directory)
    if not (directory / PARAMS_ITEM).exists():
        raise ConfigError(
            f"{directory} holds no '{PARAMS_ITEM}' checkpoint; pass a folder written by llada-jax "
            "(a params export or a training checkpoint step)"
        )
    config = read_config(directory)
    graphdef, abstract, names = model_lib.split_model(model_lib.abstract_model(ModelConfig.from_config(config.model)))
    if mesh is None:
        mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    shardings = sharding.tree_shardings(mesh, names, abstract)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / PARAMS_ITEM, target)
    return params, config
