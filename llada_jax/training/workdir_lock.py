"""One training run per workdir: a lock file naming the host and pid that holds it.

Two runs on one workdir would both write checkpoints and interleave metrics.jsonl, so the second is refused
with one sentence naming the first. A lock left by a run that died (same host, pid no longer alive) is stale
and taken over with a note; a lock from another host cannot be checked from here, so the message says how
to remove it. Only process 0 of a multi-process run takes the lock (its peers write through it).
"""
from __future__ import annotations

import json
import os
import socket
import time

from etils import epath

from llada_jax.config import ConfigError
from llada_jax.utils.errors import storage_reason

LOCK_FILE = ".llada_jax.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _create_exclusive(path: epath.Path, text: str) -> bool:
    """Writes `text` to a new file; False when it already exists (atomic on local disks via O_EXCL)."""
    if "://" in str(path):  # buckets have no O_EXCL: check-then-write is the best available
        if path.exists():
            return False
        path.write_text(text)
        return True
    try:
        fd = os.open(str(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError:
        path.unlink(missing_ok=True)  # an empty lock (disk full) would only read as stale later
        raise
    return True


def _unwritable(workdir, error: OSError) -> ConfigError:
    """The sentence for a workdir that cannot be written (read-only mount, disk full, no permission)."""
    return ConfigError(f"--workdir={workdir} cannot be written ({storage_reason(error)}); training writes its "
                       "checkpoints, metrics and params there: choose a folder on writable storage with free space")


def make_workdir(workdir) -> epath.Path:
    """The workdir as an absolute epath, created if missing; a path naming a file is one sentence, not a traceback."""
    from llada_jax.checkpoints.locate import as_path

    path = as_path(workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir={workdir} is a file, not a folder; name a new folder or an earlier run's workdir")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(workdir, e) from None
    return path


class WorkdirLock:
    """Context manager: holds WORKDIR/.llada_jax.lock for the run; `log` receives the stale-lock note."""

    def __init__(self, workdir, *, active: bool = True, log=print):
        self.path = epath.Path(workdir) / LOCK_FILE
        self.active, self.log = active, log
        self.held = False

    def __enter__(self) -> "WorkdirLock":
        if not self.active:
            return self
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):  # a second try only after removing a stale lock
            try:
                created = _create_exclusive(self.path, json.dumps(me))
            except OSError as e:
                raise _unwritable(self.path.parent, e) from None
            if created:
                self.held = True
                return self
            holder = self._holder()
            if holder is not None and not self._stale(holder, me["host"]):
                raise ConfigError(
                    f"{self.path.parent} is in use by another llada-jax run (pid {holder.get('pid')} on host "
                    f"{holder.get('host')}, since {holder.get('since')}); wait for it to end, use another --workdir, "
                    f"or delete {self.path} if that run is gone")
            self.log(f"removing a stale lock in {self.path.parent} (left by pid {(holder or {}).get('pid')}, "
                     "which is no longer running)")
            self.path.unlink(missing_ok=True)
        raise ConfigError(f"could not take the lock {self.path}; another run may be starting there at the same time")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None  # unreadable: half-written by a crash, treated as stale

    @staticmethod
    def _stale(holder: dict, host: str) -> bool:
        return holder.get("host") == host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"])

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
