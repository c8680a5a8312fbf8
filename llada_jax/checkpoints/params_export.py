"""Params exports: a folder holding `params/` (an Orbax PyTree checkpoint of the pure-dict params) and
`config.json` (the full run config, so readers rebuild the exact model). Written by training's end, `convert
from-hf` and tests; read by sampling, scoring, conversion and `train --init_from`, from an export, a run's
workdir or one of its steps. Orbax writes into a temporary folder, so a crash never leaves half an export.
"""
from __future__ import annotations

import contextlib

import jax
import ml_collections
import orbax.checkpoint as ocp

from llada_jax import sharding
from llada_jax.checkpoints.locate import CONFIG_FILE, PARAMS_ITEM, as_path, read_config, resolve
from llada_jax.checkpoints.multihost import sync
from llada_jax.checkpoints.run_config import check_model_matches
from llada_jax.config import ConfigError, ModelConfig
from llada_jax.models import registry as model_lib
from llada_jax.utils import library_noise, output_dirs
from llada_jax.utils.errors import first_line, root_cause, storage_reason


def save_params(directory, params, config: ml_collections.ConfigDict, *, overwrite: bool = False,
                flag: str = "the export folder") -> epath.Path:
    """Writes a params-only checkpoint (params/ + config.json).

    The destination must be new or empty unless `overwrite`; then only its `params/` and config.json are
    replaced and any other file in it is kept (output_dirs). The new export is written completely into a
    sibling folder first and only then swapped in, so a crash leaves the old export or the new one.
    """
    directory = as_path(directory)
    output_dirs.check_folder(directory, flag=flag, overwrite=overwrite)
    library_noise.install()
    staging = directory.parent / f"{directory.name}.incomplete"
    try:
        _write_staged(staging, directory, params, config)
    except Exception as e:  # noqa: BLE001 - disk full, read-only or gone: one sentence, the old export kept
        if jax.process_index() == 0:
            with contextlib.suppress(Exception):
                staging.rmtree()  # half an export: its space is given back
        raise ConfigError(f"the export {directory} could not be written: {storage_reason(e)}; free space or fix "
                          "the storage and run the command again (an earlier export there is unchanged)") from None
    sync("llada_export_done")
    return directory


def _write_staged(staging, directory, params, config) -> None:
    """Writes the export into `staging` and swaps it in (process 0) once complete."""
    if jax.process_index() == 0 and staging.exists():
        staging.rmtree()  # left by an earlier crash mid-export
    sync("llada_export_staging")
    staging.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(staging / PARAMS_ITEM, params)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        (staging / CONFIG_FILE).write_text(config.to_json(indent=2))
        output_dirs.swap_in(staging, directory, (PARAMS_ITEM, CONFIG_FILE))


def abstract_params(model_config, mesh):
    """ShapeDtypeStructs with target shardings: restoring into them reshards to any mesh."""
    _, abstract, names = model_lib.split_model(model_lib.abstract_model(ModelConfig.from_config(model_config)))
    shardings = sharding.tree_shardings(mesh, names, abstract)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def load_params(directory, mesh=None, config=None):
    """(params, config) from a params export, a run or a run step; with a mesh, params arrive sharded by the
    logical rules. With `config`, the checkpoint's model shape must match it."""
    directory = resolve(directory)
    saved = read_config(directory)
    if config is not None:
        check_model_matches(saved, config, directory)
    return restore_params(directory, saved, mesh), saved


def restore_params(directory, saved: ml_collections.ConfigDict, mesh=None):
    """The params of a resolved checkpoint folder whose stored config is `saved` (one device without a mesh)."""
    if mesh is None:
        mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    library_noise.install()
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(directory / PARAMS_ITEM, abstract_params(saved.model, mesh))
    except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many kinds for a damaged folder
        library_noise.flush()
        raise ConfigError(f"the checkpoint in {directory} cannot be read ({first_line(root_cause(e))}); it is corrupt "
                          "or incomplete: use another step or write it again") from None


def load_model(directory, mesh=None):
    """(graphdef, params, config) ready for `model.apply`: what sampling, scoring and conversion need."""
    params, config = load_params(directory, mesh)
    return model_lib.graphdef(ModelConfig.from_config(config.model)), params, config
