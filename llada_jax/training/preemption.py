"""Preemption: SIGTERM/SIGINT ask the loop to save at the next step boundary and exit cleanly -- and the
process ends even when no step boundary ever comes.

Cloud TPU VMs and schedulers send SIGTERM before taking a machine. With several processes every host must
save the same step, so the decision goes through JAX's preemption sync point (the coordination service
knows when any host was signalled); on one process a signal flag suffices.

A host stuck in a collective or a barrier (another host hung or died) never reaches the boundary, and a
Python signal handler cannot even run while the main thread waits inside C++. So the signal is also
delivered to a watchdog thread through `signal.set_wakeup_fd`: if the process has not finished `grace_s`
seconds after the first signal, or a second signal arrives, the watchdog says so in one sentence and exits.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
import threading

from llada_jax.utils.exits import hard_exit

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatcher:
    def __init__(self, grace_s: float = 600.0):
        self.requested = False
        self.signal_name = ""
        self.grace_s = float(grace_s)
        self._previous = {}
        self._wakeup = None
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: rely on the sync point only
                pass
        if self._previous:
            self._start_watchdog()

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def _start_watchdog(self) -> None:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._wakeup = (reader, writer, signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False))
        threading.Thread(target=self._watch, args=(reader,), daemon=True, name="llada-stop-watchdog").start()

    def _watch(self, reader: socket.socket) -> None:
        """Waits for a stop signal, then for the grace period or a second signal, then exits the process."""
        first = None
        while True:
            ready, _, _ = select.select([reader], [], [], None if first is None else self.grace_s)
            if not ready:
                hard_exit(f"{first.name}: the run did not stop within {self.grace_s:.0f} s (a host is stuck in a "
                          "collective or a checkpoint barrier); exiting now, rerun to resume from the last checkpoint",
                          128 + first)
            data = reader.recv(64)
            if not data:  # restore() closed the other end: the run finished
                reader.close()
                return
            for byte in data:
                if byte not in [int(s) for s in STOP_SIGNALS]:
                    continue
                if first is not None:
                    hard_exit(f"{first.name} then {signal.Signals(byte).name}: exiting now without a final "
                              "checkpoint; rerun to resume from the last one", 128 + byte)
                first = signal.Signals(byte)

    def should_stop(self, step: int) -> bool:
        """True on every process at the same step once any process was asked to stop."""
        import jax  # imported here so the watcher can be installed before jax loads (signals during start-up)

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            try:
                return bool(multihost_utils.reached_preemption_sync_point(step)) or self._agreed(step)
            except RuntimeError:  # no preemption service (e.g. distributed init without it)
                return self._agreed(step)
        return self.requested

    def _agreed(self, step: int) -> bool:
        import jax
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(jax.numpy.asarray(int(self.requested)))
        return bool(flags.max())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._wakeup is not None:
            _, writer, previous_fd = self._wakeup
            signal.set_wakeup_fd(previous_fd)
            writer.close()  # the watchdog sees end-of-stream and returns
            self._wakeup = None
