"""How a checkpoint write fails: one sentence naming the step, the cause and the last good step, and a
deadline that ends a process stuck in a save (a barrier waiting for a host that never comes)."""
from __future__ import annotations

import contextlib
import threading

from llada_jax.config import ConfigError
from llada_jax.utils.errors import storage_reason
from llada_jax.utils.exits import hard_exit


class CheckpointWriteError(ConfigError):
    """A checkpoint could not be written (disk full, permissions, bucket gone); the message says which step and
    which earlier step is the last good one."""


def write_failure(directory, step: int, good_step, error: BaseException) -> str:
    """The sentence for a save of `step` that failed with `error`; `good_step` is the newest complete save."""
    last = f"step {good_step} is the last good one" if good_step is not None else "no checkpoint of this run was written"
    return (f"checkpoint step {step} could not be written to {directory}: {storage_reason(error)}; {last}. Free "
            "space or fix the storage, then run the same command to resume")


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
