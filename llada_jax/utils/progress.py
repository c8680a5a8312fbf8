"""When long work speaks up: the first item at once, then every few seconds, and the last; with a rate and ETA.

Training, `prepare`, `sample`, `score` and `sweep run` all share this so none of them goes silent for
minutes: a user should see within seconds that something is happening and how long it will take.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable


def fmt_time(seconds: float) -> str:
    """H:MM:SS, e.g. 0:01:05."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def stderr(text: str) -> None:
    """Progress goes to stderr, so stdout stays the command's result (JSON lines, texts) for scripts."""
    print(text, file=sys.stderr, flush=True)


class Progress:
    """Counts `done` out of `total` and says when to print.

    `due(done)` is true for the first item, the last, and whenever `every_s` seconds passed since the last
    print. The rate and ETA are measured from the first item on (`begin`), so a compilation before it does not
    distort them.
    """

    def __init__(self, total: int, *, start: int = 0, every_s: float = 5.0,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.start, self.every_s, self.clock = total, start, every_s, clock
        self.t0 = clock()
        self.first: tuple[int, float] | None = None  # (done, time) when the first item finished
        self.last_print = -float("inf")
        self.done = start

    def due(self, done: int, force: bool = False) -> bool:
        """Whether to print now; `force` (e.g. a log_every step) prints and restarts the few-seconds wait."""
        now = self.clock()
        if self.first is None:
            self.first = (done, now)
        self.done = done
        if force or done == self.start + 1 or done >= self.total or now - self.last_print >= self.every_s:
            self.last_print = now
            return True
        return False

    def rate(self) -> float | None:
        """Items per second after the first item (None until a later one is done)."""
        if self.first is None or self.done <= self.first[0]:
            return None
        seconds = self.clock() - self.first[1]
        return (self.done - self.first[0]) / seconds if seconds > 0 else None

    def eta(self) -> str:
        rate = self.rate()
        return "?" if not rate else fmt_time((self.total - self.done) / rate)

    def elapsed(self) -> float:
        return self.clock() - self.t0


@contextlib.contextmanager
def timed(what: str, log: Callable[[str], None] = stderr):
    """Prints "WHAT ..." now and "WHAT: done in 12.3 s" at the end, e.g. around a compilation."""
    log(f"{what} ...")
    t0 = time.perf_counter()
    yield
    log(f"{what}: done in {time.perf_counter() - t0:.1f} s")


@contextlib.contextmanager
def heartbeat(what: str, log: Callable[[str], None] = stderr, every_s: float = 30.0):
    """Prints "WHAT (M:SS elapsed)" every `every_s` seconds until the block ends, from a thread, so a block that
    sits in C++ for minutes (a big compile) still shows it is alive."""
    stop = threading.Event()
    start = time.perf_counter()

    def beat():
        while not stop.wait(every_s):
            log(f"{what} ({fmt_time(time.perf_counter() - start)} elapsed)")

    thread = threading.Thread(target=beat, daemon=True, name="llada-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
