"""A training run's checkpoints: when to save, async saves that fail loudly, and exact resume.

Each step folder holds params, opt_state, meta (step, data-iterator state, a digest of every array) and the run
config;
retention is rotation.py, resume is restore.py, verification is verify.py.
"""
from __future__ import annotations

import time

import jax
import orbax.checkpoint as ocp

from llada_jax.checkpoints import restore, rotation
from llada_jax.checkpoints.failures import CheckpointWriteError, deadline, write_failure
from llada_jax.checkpoints.locate import PARAMS_ITEM, as_path
from llada_jax.checkpoints.multihost import agreed_by_process_0
from llada_jax.checkpoints.verify import DIGEST_FIELD, state_digests
from llada_jax.utils import library_noise


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
        self._failed = False  # a write failure was reported: Orbax keeps re-raising it, nothing more to say
        library_noise.install()  # a failed write is one sentence here, not Orbax's tracebacks from its threads
        rotation.check_directory(self.directory, config)
        self.manager = rotation.manager(self.directory, c, self.timeout_s)

    def latest_step(self):
        return self.manager.latest_step()

    def restore_newest_good(self, abstract_state, log):
        """(state, meta) of the newest step that restores cleanly (see restore.newest_good), or None."""
        found = restore.newest_good(self.manager, self.directory, abstract_state, log)
        if found is None:
            return None
        state, meta, self._good_step = found
        return state, meta

    def restore(self, abstract_state, step=None):
        """(state, meta) of `step` (default: the latest), resharded onto `abstract_state`'s shardings."""
        step = self.manager.latest_step() if step is None else step
        return restore.restore_step(self.manager, abstract_state, step)

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
        digests, finite = state_digests(state.params, state.opt_state)
        if not finite:
            return None
        meta = {"step": int(step), "data": data_state, "process_count": jax.process_count(), DIGEST_FIELD: digests}
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
        except Exception as e:  # noqa: BLE001 - a synchronous write failed (sync saves, the start of an async one)
            self._failed = True
            raise CheckpointWriteError(write_failure(self.directory, int(step), self._good_step, e)) from None
        self._last_save_time = self.clock()
        self._pending_step = int(step)
        return time.perf_counter() - start

    def check_saved(self) -> None:
        """Raises CheckpointWriteError with one sentence once a background save has failed (called every step,
        so a full disk stops the run at the next step instead of a save interval later)."""
        if self._pending_step is None or self.manager.is_saving_in_progress():
            return
        self._finish_pending()

    def _finish_pending(self) -> None:
        """Waits for the save in flight and learns whether it failed: Orbax keeps a background failure on its
        finalize thread (its own error check may already have consumed it), and only the wait re-raises it."""
        step, self._pending_step = self._pending_step, None
        try:
            with deadline(self.timeout_s, "finishing the checkpoint writes"):
                self.manager.wait_until_finished()
                self.manager.check_for_errors()
        except Exception as e:  # noqa: BLE001 - whatever the storage raised, the user needs one sentence
            self._failed = True
            raise CheckpointWriteError(write_failure(self.directory, step, self._good_step, e)) from None
        self._good_step = step

    def wait(self) -> None:
        """Blocks until the pending save is on storage; a failed one raises CheckpointWriteError."""
        if self._pending_step is not None:
            self._finish_pending()

    def close(self) -> None:
        """Finishes the pending save and releases Orbax's threads; safe to call after an error (in `finally`):
        a write failure already reported is not raised again."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001
                if not self._failed:
                    raise
            if self._failed:
                library_noise.flush()  # the abandoned writes are finalised now, not at interpreter exit
