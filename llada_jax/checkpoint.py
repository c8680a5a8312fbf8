"""Orbax checkpoints: params exports and the training run's checkpoints (params, optimizer, data state).

A params checkpoint is a folder holding `params/` (an Orbax PyTree checkpoint of the pure-dict params)
and `config.json` (the full run config, so readers rebuild the exact model). A training run keeps
`WORKDIR/checkpoints/<step>/` with items `params`, `opt_state`, `meta` (step, data-iterator state) and
`config`; `load_params` reads either kind, or the latest step of a run. Orbax writes every checkpoint into
a temporary folder and renames it only when complete, so a crash mid-save never replaces a good one.
Paths go through etils.epath so `gs://` buckets work like local folders.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from llada_jax import model as model_lib
from llada_jax import sharding
from llada_jax.config import ConfigError, ModelConfig
from llada_jax.preemption import hard_exit

PARAMS_ITEM = "params"
CONFIG_FILE = "config.json"


def as_path(path) -> epath.Path:
    """epath for a local folder or a bucket URL; local folders are made absolute because Orbax refuses
    relative paths (so `--workdir=runs/demo` works from any directory)."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def save_params(directory, params, config: ml_collections.ConfigDict, *, overwrite: bool = False) -> epath.Path:
    """Writes a params-only checkpoint (params/ + config.json).

    The new export is written completely into a sibling folder first and only then swapped in, so a crash
    at any point leaves either the old export or the new one, never a half-written folder in its place.
    """
    directory = as_path(directory)
    if (directory / PARAMS_ITEM).exists() and not overwrite:
        raise FileExistsError(f"{directory} already holds a params checkpoint; choose another folder or pass overwrite")
    staging = directory.parent / f"{directory.name}.incomplete"
    if jax.process_index() == 0 and staging.exists():
        staging.rmtree()  # left by an earlier crash mid-export
    _sync("llada_export_staging")
    staging.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(staging / PARAMS_ITEM, params)
        ckptr.wait_until_finished()
    if jax.process_index() == 0:
        (staging / CONFIG_FILE).write_text(config.to_json(indent=2))
        if directory.exists():
            old = directory.parent / f"{directory.name}.old"
            if old.exists():
                old.rmtree()
            directory.rename(old)
            staging.rename(directory)
            old.rmtree()
        else:
            staging.rename(directory)
    _sync("llada_export_done")
    return directory


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def read_config(directory) -> ml_collections.ConfigDict:
    """The run config stored with a params export or a training-checkpoint step."""
    directory = as_path(directory)
    for path in (directory / CONFIG_FILE, directory / "config" / "metadata"):
        if path.exists():
            return ml_collections.ConfigDict(json.loads(path.read_text()))
    raise ConfigError(f"{directory} has no {CONFIG_FILE}; it is not a llada_jax checkpoint")


def resolve(directory) -> epath.Path:
    """A folder holding `params/`: the folder itself, or the latest step of a run's checkpoints folder
    (given as WORKDIR, WORKDIR/checkpoints or a step folder)."""
    directory = as_path(directory)
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
    if mesh is None:
        mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / PARAMS_ITEM, abstract_params(saved.model, mesh))
    return params, saved


class RunCheckpointer:
    """A training run's checkpoints: async saves, keep-last-K plus every K-th permanently, exact resume.

    `save` returns after the device-to-host copy; the write to storage continues in the background while
    the step loop runs on (orbax's async checkpointing). Saves happen every `every_steps` steps and/or
    every `every_minutes` minutes, and always when forced (preemption, the last step).

    Orbax's save begins with a barrier across hosts, so every host must decide to save at the same step:
    the time-based decision is taken on process 0's clock and broadcast (hosts' clocks differ). A save, or the
    wait for one, that takes longer than `checkpoint.timeout_s` ends the process with one sentence instead
    of hanging the job.
    """

    clock = staticmethod(time.monotonic)  # the time-based cadence's clock (tests skew it per process)

    def __init__(self, workdir, config, *, mesh):
        c = config.checkpoint
        self.config, self.mesh = config, mesh
        self.directory = as_path(workdir) / "checkpoints"
        self.every_steps, self.every_minutes = int(c.every_steps), float(c.every_minutes)
        self.timeout_s = float(c.get("timeout_s", 900.0))
        self._last_save_time = self.clock()
        self._check_directory()
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=(PARAMS_ITEM, "opt_state", "meta", "config"),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=int(c.keep_last) or None,
                keep_period=int(c.keep_every) or None,
                enable_async_checkpointing=bool(c.async_save),
                async_options=ocp.AsyncOptions(timeout_secs=max(int(self.timeout_s), 1)),
                cleanup_tmp_directories=True,
                create=True,
            ),
        )

    def _check_directory(self) -> None:
        if not self.directory.exists():
            return
        entries = [p for p in self.directory.iterdir() if not p.name.startswith(".")]
        steps = [p for p in entries if p.name.isdigit()]
        foreign = [p.name for p in entries if not p.name.isdigit() and "tmp" not in p.name
                   and p.name not in ("_CHECKPOINT_METADATA", "descriptor")]
        if foreign or any(not (p / PARAMS_ITEM).exists() and not (p / "_CHECKPOINT_METADATA").exists() for p in steps):
            raise ConfigError(
                f"{self.directory} holds files that are not llada_jax checkpoints ({', '.join(sorted(foreign)[:3]) or 'step folders without params'}); "
                "choose another --workdir"
            )
        if steps:
            check_model_matches(read_config(self.directory / max(steps, key=lambda p: int(p.name)).name), self.config,
                                self.directory)

    def latest_step(self):
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        """Whether to save after `step`: the same answer on every host (call it on all of them, every step)."""
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        if by_steps or self.every_minutes <= 0:
            return by_steps
        return agreed_by_process_0(self.clock() - self._last_save_time >= 60 * self.every_minutes)

    def save(self, step: int, state, data_state: dict) -> float:
        """Starts (async) or does (sync) a save; returns the seconds the step loop was blocked."""
        start = time.perf_counter()
        meta = {"step": int(step), "data": data_state, "process_count": jax.process_count()}
        with deadline(self.timeout_s, f"the checkpoint save of step {step}"):
            self.manager.save(
                step,
                args=ocp.args.Composite(**{
                    PARAMS_ITEM: ocp.args.StandardSave(state.params),
                    "opt_state": ocp.args.StandardSave(state.opt_state),
                    "meta": ocp.args.JsonSave(meta),
                    "config": ocp.args.JsonSave(self.config.to_dict()),
                }),
                force=True,
            )
        self._last_save_time = self.clock()
        return time.perf_counter() - start

    def restore(self, abstract_state, step=None):
        """(state, meta) of `step` (default: the latest), resharded onto `abstract_state`'s shardings."""
        step = self.manager.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(**{
            PARAMS_ITEM: ocp.args.StandardRestore(abstract_state.params),
            "opt_state": ocp.args.StandardRestore(abstract_state.opt_state),
            "meta": ocp.args.JsonRestore(),
        }))
        state = abstract_state.replace(
            step=jax.device_put(jax.numpy.asarray(step, jax.numpy.int32), abstract_state.step.sharding),
            params=restored[PARAMS_ITEM],
            opt_state=restored["opt_state"],
        )
        return state, restored["meta"]

    def wait(self) -> None:
        with deadline(self.timeout_s, "finishing the checkpoint writes"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def agreed_by_process_0(flag: bool) -> bool:
    """Process 0's `flag`, on every process (a collective: every process must call it at the same point)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(int(bool(flag)), np.int32)))


@contextlib.contextmanager
def deadline(seconds: float, what: str):
    """Ends the process with one sentence if the block runs longer than `seconds` (a barrier waiting for a
    host that never comes cannot be interrupted any other way). The last complete checkpoint stays usable."""
    timer = threading.Timer(seconds, hard_exit, args=(
        f"{what} did not finish within checkpoint.timeout_s={seconds:g} s (a host is stuck or the storage does "
        "not answer); exiting. The last complete checkpoint is intact: rerun to resume, or raise "
        "--config.checkpoint.timeout_s",))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def load_model(directory, mesh=None):
    """(graphdef, params, config) ready for `model.apply`: what sampling, scoring and conversion need."""
    params, config = load_params(directory, mesh)
    graphdef = model_lib.split_model(model_lib.abstract_model(ModelConfig.from_config(config.model)))[0]
    return graphdef, params, config
