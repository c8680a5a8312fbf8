"""Decisions and barriers every process of a multi-host job must share around checkpoints (no-ops on one process)."""
from __future__ import annotations

import jax
import numpy as np


def sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agreed_by_process_0(flag: bool) -> bool:
    """Process 0's `flag`, on every process (a collective: every process must call it at the same point)."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(int(bool(flag)), np.int32)))
