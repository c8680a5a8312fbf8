"""Ending the process from any thread with one sentence (watchdogs and deadlines, where raising cannot work)."""
from __future__ import annotations

import os
import sys


def hard_exit(message: str, code: int = 1) -> None:
    """Ends the process now (from any thread, even while the main thread is blocked in C++)."""
    sys.stderr.write(message.rstrip() + "\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(code)
