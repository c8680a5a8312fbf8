"""Runs one process of a multi-process `llada-jax train` as a child, so a lost peer ends in one line.

When another process of the job dies, JAX's coordination service aborts this one from C++ (a fatal log
line and a stack trace, after `distributed.heartbeat_timeout_s`), which Python cannot intercept. The
supervisor starts the worker (`python -m llada_jax.cli` with the same arguments) in its own session,
forwards SIGTERM/SIGINT/SIGHUP to it (so preemption saves and exits 0 exactly as without it), streams its
output as it comes, and holds back stderr from the first sign of a lost peer (or a Python traceback). If
the worker then fails and the held text names a lost process, that text goes to a log file in the workdir
and one line takes its place; otherwise it is printed as it was. Single-process runs never come here.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

from llada_jax.training import distributed

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# The first stderr line from which output is held back: JAX runtime logs about the job's processes, the
# worker's own lost-peer marker, a Python traceback.
_HOLD_FROM = re.compile(r"^[EF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ (coordination_service|preemption_sync|client\.h|"
                        r"barrier|gloo)|^Traceback \(most recent call last\)|" + re.escape(distributed.LOST_PEER_MARKER))
_UNHEALTHY = re.compile(r"unhealthy \(stopped sending heartbeats\):\s*\n([\d,\s]+?)\n", re.S)
_TASK_TIMEOUT = re.compile(r"Task (\d+) heartbeat timeout")
_LEADER_GONE = re.compile(r"leader task was preempted/died|Failed to send RPC to coordination service|"
                          r"Failed to connect to coordination service", re.I)
_FATAL = re.compile(r"Terminating process because the JAX distributed service detected fatal errors")


def lost_processes(text: str) -> str:
    """Which process the held output says was lost ("process 1", "processes 1, 2", "process 0 (the
    coordinator)"), or "" when it names none."""
    found = _UNHEALTHY.search(text)
    ids = sorted({int(i) for i in re.findall(r"\d+", found.group(1))}) if found else []
    ids = ids or sorted({int(i) for i in _TASK_TIMEOUT.findall(text)})
    if ids:
        return ("process " if len(ids) == 1 else "processes ") + ", ".join(map(str, ids))
    if _LEADER_GONE.search(text):
        return "process 0 (the coordinator)"
    return ""


class _Relay:
    """Copies the worker's stderr line by line, holding everything from the first `_HOLD_FROM` line on."""

    def __init__(self, stream):
        self.held: list[str] = []
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            if self.held or _HOLD_FROM.search(line):
                self.held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()


def _copy(stream, out) -> None:
    for raw in iter(stream.readline, b""):
        out.buffer.write(raw)
        out.flush()


def _die_with_parent() -> None:
    """In the child: SIGKILL when the supervisor dies (Linux), so a killed supervisor leaves no worker behind."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _last_checkpoint(workdir: str) -> str:
    try:
        from etils import epath

        steps = [int(p.name) for p in (epath.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit()]
    except Exception:  # unreadable or absent: the line just does not name a step
        return ""
    return f" (step {max(steps)})" if steps else " (none was written yet, so it starts again from step 0)"


def supervise(argv: list[str], workdir: str, process_id: int, num_processes: int) -> int:
    """Runs `llada-jax <argv>` as a worker; returns its exit code (128+N for signal N), or
    distributed.EXIT_LOST_PEER with one line when it died because another process was lost."""
    env = dict(os.environ, **{distributed.WORKER_ENV: "1", "PYTHONUNBUFFERED": "1"})
    child = subprocess.Popen([sys.executable, "-m", "llada_jax.cli", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, start_new_session=True, preexec_fn=_die_with_parent)
    previous = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum)) for sig in FORWARDED}
    try:
        out = threading.Thread(target=_copy, args=(child.stdout, sys.stdout), daemon=True)
        out.start()
        relay = _Relay(child.stderr)
        code = child.wait()
        out.join()
        relay.thread.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    held = "".join(relay.held)
    lost = lost_processes(held) if code != 0 else ""
    if not lost and code != 0 and (_FATAL.search(held) or distributed.LOST_PEER_MARKER in held):
        lost = "contact with another process (the runtime named none as dead)"
    if not lost:
        sys.stderr.write(held)
        sys.stderr.flush()
        return code if code >= 0 else 128 - code
    where = f"{workdir.rstrip('/')}/lost-peer-process{process_id}.log"
    try:
        with open(where, "w") as f:
            f.write(held)
        details = f"; the runtime's messages are in {where}"
    except OSError:
        details = ""
    me = f"process {process_id}" if process_id >= 0 else "this process"
    of = f" of {num_processes}" if num_processes > 0 else ""
    sys.stderr.write(f"llada-jax train: the job lost {lost}{of}, so {me} stopped "
                     f"too; run the same command again on every host to resume from the last checkpoint"
                     f"{_last_checkpoint(workdir)}{details}\n")
    sys.stderr.flush()
    return distributed.EXIT_LOST_PEER
