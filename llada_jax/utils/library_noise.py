"""The storage libraries' own error output, kept off the console where llada_jax reports the failure itself.

When a checkpoint write fails (disk full, read-only storage) or a damaged checkpoint is read, Orbax logs the
failure with a traceback from its threads, TensorStore's callbacks reach asyncio loops Orbax has already closed
("Event loop is closed"), reads or writes that never finished are reported as their coroutines are garbage
collected, some at interpreter exit, and asyncio logs the failed writes whose errors Orbax never collected
("Future exception was never retrieved"). llada_jax says what happened in one sentence (the step, the cause, what to
do), so these go to a log file (`WORKDIR/storage-errors.log` during training) or nowhere; every other log
record and unraisable error is shown as before. LLADA_JAX_STORAGE_TRACES=1 shows them all.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import traceback

ENV_VAR = "LLADA_JAX_STORAGE_TRACES"
_LIBRARIES = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorstore{os.sep}")
# absl status codes: TensorStore's errors are ValueErrors whose text starts with one ("RESOURCE_EXHAUSTED: ...")
_STATUS_CODES = frozenset({"CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                           "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                           "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                           "UNAUTHENTICATED"})
_lock = threading.Lock()
_state = {"installed": False, "sink": None}


def _from_storage(filename: str) -> bool:
    return any(part in filename for part in _LIBRARIES)


def _frames(tb):
    while tb is not None:
        yield tb.tb_frame.f_code.co_filename
        tb = tb.tb_next


def is_storage_noise(exc: BaseException | None, obj=None) -> bool:
    """Whether an unraisable error comes from the storage libraries' machinery (never from llada_jax's code)."""
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True  # a TensorStore callback reaching the loop of an Orbax operation that already ended
    code = getattr(obj, "cr_code", None)  # a coroutine collected before it finished
    if code is not None and _from_storage(code.co_filename):
        return True
    return exc is not None and any(_from_storage(name) for name in _frames(exc.__traceback__))


def is_tensorstore_error(exc: BaseException | None) -> bool:
    """Whether `exc` was set by TensorStore's C++ side on an asyncio future: a ValueError with no Python frames
    whose text starts with an absl status code. Nothing in Python raised it, so no traceback names the library."""
    return (isinstance(exc, ValueError) and exc.__traceback__ is None
            and str(exc).split(":", 1)[0] in _STATUS_CODES)


def is_storage_record(record: logging.LogRecord) -> bool:
    """Whether a warning or error record is the storage libraries' own: logged from their files, or asyncio
    reporting a storage future, task or coroutine that failed or was abandoned with nobody left to collect it."""
    if record.levelno < logging.WARNING:
        return False
    if _from_storage(record.pathname or ""):
        return True
    if record.name != "asyncio":
        return False
    exc = record.exc_info[1] if record.exc_info else None
    return is_storage_noise(exc) or is_tensorstore_error(exc) or _from_storage(record.getMessage())


def _to_sink(text: str) -> None:
    path = _state["sink"]
    if path is None:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text.rstrip()}\n")
    except OSError:
        pass  # the disk that just filled up, or a read-only workdir: the sentence already says what matters


class _StorageRecords(logging.Filter):
    """Passes every log record except the storage libraries' warnings and errors, which go to the sink."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_storage_record(record):
            return True
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        _to_sink(f"{record.levelname} {text}")
        return False


def _unraisable_hook(previous):
    # what the hook uses is bound now: at interpreter exit, module globals may already be gone
    def hook(unraisable, _previous=previous, _noise=is_storage_noise, _sink=_to_sink,
             _format=traceback.format_exception):
        try:
            if _noise(unraisable.exc_value, unraisable.object):
                _sink(f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n"
                      + "".join(_format(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)))
                return
        except Exception:  # noqa: BLE001 - at interpreter exit even formatting may fail: then it is dropped
            return
        _previous(unraisable)

    return hook


def install() -> None:
    """Routes the storage libraries' tracebacks to the sink (idempotent; the same for every thread)."""
    with _lock:
        if _state["installed"] or os.environ.get(ENV_VAR, "") not in ("", "0"):
            return
        _state["installed"] = True
        for name in ("absl", "asyncio"):  # Orbax logs through absl; asyncio reports futures nobody collected
            logging.getLogger(name).addFilter(_StorageRecords())
        sys.unraisablehook = _unraisable_hook(sys.unraisablehook)


def log_to(path) -> None:
    """Where the storage libraries' own messages go from now on (None: nowhere)."""
    install()
    _state["sink"] = None if path is None else os.fspath(path)


def flush() -> None:
    """Collects garbage now, so reads or writes a library abandoned after a failure are finalised (and reported
    to the sink) while the hooks are in place, not at interpreter exit."""
    install()
    gc.collect()
