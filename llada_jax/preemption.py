"""Preemption: SIGTERM/SIGINT ask the loop to save at the next step boundary and exit cleanly.

Cloud TPU VMs and schedulers send SIGTERM before taking a machine. With several processes every host must
save the same step, so the decision goes through JAX's preemption sync point (the coordination service
knows when any host was signalled); on one process a signal flag suffices.
"""
from __future__ import annotations

import signal


class PreemptionWatcher:
    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: rely on the sync point only
                pass

    def _handle(self, signum, frame):
        self.requested = True
        self.signal_name = signal.Signals(signum).name

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
