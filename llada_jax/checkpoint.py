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
from llada_jax import output_dirs, sharding
from llada_jax.config import ConfigError, ModelConfig
from llada_jax.preemption import hard_exit

PARAMS_ITEM = "params"
CONFIG_FILE = "config.json"
SET_ASIDE = "unusable-step-"  # a step that failed to restore is renamed to this prefix + its number, never deleted


def as_path(path) -> epath.Path:
    """epath for a local folder or a bucket URL; local folders are made absolute because Orbax refuses
    relative paths (so `--workdir=runs/demo` works from any directory)."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def save_params(directory, params, config: ml_collections.ConfigDict, *, overwrite: bool = False,
                flag: str = "the export folder") -> epath.Path:
    """Writes a params-only checkpoint (params/ + config.json).

    The destination must be new or empty unless `overwrite`; then only its `params/` and config.json are
    replaced and any other file in it is kept (output_dirs). The new export is written completely into a
    sibling folder first and only then swapped in, so a crash leaves the old export or the new one.
    """
    directory = as_path(directory)
    output_dirs.check_folder(directory, flag=flag, overwrite=overwrite)
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
        output_dirs.swap_in(staging, directory, (PARAMS_ITEM, CONFIG_FILE))
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
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(directory / PARAMS_ITEM, abstract_params(saved.model, mesh))
    except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many kinds for a damaged folder
        raise ConfigError(f"the checkpoint in {directory} cannot be read ({first_line(e)}); it is corrupt or "
                          "incomplete: use another step or write it again") from None
    return params, saved


def first_line(error: BaseException, limit: int = 160) -> str:
    """The gist of an exception for a one-sentence message (Orbax/TensorStore errors span many lines)."""
    text = (str(error).strip().splitlines() or [error.__class__.__name__])[0]
    text = text.split(" [source locations=")[0].split("See full TensorStore details")[0].strip()
    return (text[:limit] + "...") if len(text) > limit else text


class CheckpointWriteError(ConfigError):
    """A checkpoint could not be written (disk full, permissions, bucket gone); the message says which step and
    which earlier step is the last good one."""


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


@jax.jit
def _abs_sums(tree):
    return [jax.numpy.sum(jax.numpy.abs(x.astype(jax.numpy.float32))) for x in jax.tree.leaves(tree)
            if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]


def checksums(params, opt_state) -> list[float]:
    """Sum of |x| of every float array: stored with each checkpoint and compared on restore, so bytes damaged
    on storage are caught even when they decode to finite numbers. (Summing on another mesh reorders the
    float32 additions, hence the tolerance in verify_restored.)"""
    return [float(x) for x in jax.device_get(_abs_sums((params, opt_state)))]


def verify_restored(state, meta) -> str | None:
    """None when a restored state is finite and matches the checksums saved with it, else why not."""
    sums = checksums(state.params, state.opt_state)
    if not all(map(_finite, sums)):
        return "it holds NaN or infinite values"
    saved = meta.get("checksums") if isinstance(meta, dict) else None
    if saved is not None:
        if len(saved) != len(sums):
            return "its checksums do not match its arrays"
        for got, want in zip(sums, saved):
            if abs(got - want) > 1e-4 * max(abs(want), 1.0):
                return "its data does not match the checksums written with it"
    return None


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
        self._pending_step = self._good_step = None  # the save in flight; the newest save known to be complete
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
                   and p.name not in ("_CHECKPOINT_METADATA", "descriptor") and not p.name.startswith(SET_ASIDE)]
        if foreign or any(not (p / PARAMS_ITEM).exists() and not (p / "_CHECKPOINT_METADATA").exists() for p in steps):
            raise ConfigError(
                f"{self.directory} holds files that are not llada_jax checkpoints ({', '.join(sorted(foreign)[:3]) or 'step folders without params'}); "
                "choose another --workdir"
            )
        for step in sorted(steps, key=lambda p: -int(p.name)):  # the newest step whose config still reads
            try:
                saved = read_config(step)
            except (ConfigError, ValueError, OSError):
                continue  # a damaged step: restore_newest_good says so and falls back
            check_model_matches(saved, self.config, self.directory)
            break

    def latest_step(self):
        return self.manager.latest_step()

    def restore_newest_good(self, abstract_state, log):
        """(state, meta) of the newest step that restores cleanly, or None when the run has no checkpoint.

        A step that cannot be read, holds non-finite values or fails its checksums is skipped with one
        sentence through `log`, and renamed to unusable-step-N (kept for inspection, out of Orbax's way) once
        an older good step is found. When no step restores, ConfigError lists why for each.
        """
        problems = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                read_config(self.directory / str(step))  # what sampling and conversion read from this step
                state, meta = self.restore(abstract_state, step)
                problem = verify_restored(state, meta)
            except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many kinds for damaged files
                problem = f"it cannot be read: {first_line(e)}"
            if problem is None:
                for bad, why in problems:
                    log(f"checkpoint step {bad} is unusable ({why}); resuming from step {step}, the newest step "
                        f"that restores cleanly (step {bad} is kept as {self.directory / (SET_ASIDE + str(bad))})")
                self._set_aside([bad for bad, _ in problems])
                self._good_step = step
                return state, meta
            problems.append((step, problem))
        if problems:
            listed = "; ".join(f"step {bad}: {why}" for bad, why in problems[:3])
            raise ConfigError(f"no checkpoint in {self.directory} restores cleanly ({listed}); move that folder "
                              "aside to start afresh, or restore it from a backup")
        return None

    def _set_aside(self, steps) -> None:
        if not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                target = self.directory / f"{SET_ASIDE}{step}"
                if target.exists():
                    target = self.directory / f"{SET_ASIDE}{step}-{int(time.time())}"
                (self.directory / str(step)).rename(target)
        _sync("llada_set_aside_unusable_steps")
        self.manager.reload()

    def due(self, step: int) -> bool:
        """Whether to save after `step`: the same answer on every host (call it on all of them, every step)."""
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        if by_steps or self.every_minutes <= 0:
            return by_steps
        return agreed_by_process_0(self.clock() - self._last_save_time >= 60 * self.every_minutes)

    def save(self, step: int, state, data_state: dict) -> float | None:
        """Starts (async) or does (sync) a save; returns the seconds the step loop was blocked, or None when the
        state holds non-finite values and nothing was saved (a bad state must never rotate out a good one)."""
        start = time.perf_counter()
        sums = checksums(state.params, state.opt_state)
        if not all(map(_finite, sums)):
            return None
        meta = {"step": int(step), "data": data_state, "process_count": jax.process_count(), "checksums": sums}
        self.wait()  # the previous save must be complete (and known good) before another one may rotate steps out
        try:
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
        except OSError as e:  # a synchronous write failed (sync saves, or the start of an async one)
            raise CheckpointWriteError(self._write_failure(int(step), e)) from None
        self._last_save_time = self.clock()
        self._pending_step = int(step)
        return time.perf_counter() - start

    def check_saved(self) -> None:
        """Raises CheckpointWriteError with one sentence once a background save has failed (called every step,
        so a full disk stops the run at the next step instead of a save interval later)."""
        if self._pending_step is None or self.manager.is_saving_in_progress():
            return
        step, self._pending_step = self._pending_step, None
        try:
            self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - whatever the storage raised, the user needs one sentence
            raise CheckpointWriteError(self._write_failure(step, e)) from None
        self._good_step = step

    def _write_failure(self, step: int, error: BaseException) -> str:
        good = self._good_step
        last = f"step {good} is the last good one" if good is not None else "no checkpoint of this run was written"
        cause = error
        while cause.__cause__ is not None or cause.__context__ is not None:  # the OSError under Orbax's wrappers
            cause = cause.__cause__ or cause.__context__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else first_line(cause)
        return (f"checkpoint step {step} could not be written to {self.directory}: {reason}; {last}. Free space or "
                "fix the storage, then run the same command to resume")

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
        """Blocks until the pending save is on storage; a failed one raises CheckpointWriteError."""
        try:
            with deadline(self.timeout_s, "finishing the checkpoint writes"):
                self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            if self._pending_step is None:
                raise
            step, self._pending_step = self._pending_step, None
            raise CheckpointWriteError(self._write_failure(step, e)) from None
        self.check_saved()

    def close(self) -> None:
        """Finishes the pending save and releases Orbax's threads; safe to call after an error (in `finally`)."""
        try:
            self.wait()
        finally:
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
