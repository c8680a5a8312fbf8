"""Progress lines for long evaluations: requests done, requests/s and ETA, printed by process 0 only."""
from __future__ import annotations

import sys
import time


class Progress:
    """Call `update(done_units)`; prints at most every `every_s` seconds and always at the end.

    Units may be finer than requests (Monte Carlo rows); `requests` converts them for the printed rate.
    """

    def __init__(self, label: str, total_units: int, requests: int, every_s: float = 10.0, stream=None,
                 enabled: bool = True, clock=time.monotonic):
        self.label, self.total, self.requests = label, max(total_units, 1), requests
        self.every_s, self.stream, self.enabled, self.clock = every_s, stream or sys.stderr, enabled, clock
        self.start = self.last = clock()

    def line(self, done: int) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        finished = self.requests * done / self.total
        rate = finished / elapsed
        eta = (self.requests - finished) / rate if rate > 0 else float("inf")
        return (f"[{self.label}] {finished:.0f}/{self.requests} requests, {rate:.2f} requests/s, "
                f"elapsed {elapsed:.0f}s, ETA {eta:.0f}s")

    def update(self, done: int, total: int | None = None) -> None:
        """`total` replaces the unit count when it is only known once work starts (distinct Monte Carlo rows)."""
        if total is not None:
            self.total = max(total, 1)
        now = self.clock()
        if self.enabled and (done >= self.total or now - self.last >= self.every_s):
            self.last = now
            print(self.line(done), file=self.stream, flush=True)
