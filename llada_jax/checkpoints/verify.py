"""Verification of restored training state: every array finite and matching the checksums saved with it."""
from __future__ import annotations

import jax


def finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


@jax.jit
def _abs_sums(tree):
    return [jax.numpy.sum(jax.numpy.abs(x.astype(jax.numpy.float32))) for x in jax.tree.leaves(tree)
            if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]


def checksums(params, opt_state) -> list[float]:
    """Sum of |x| of every float array: stored with each checkpoint and compared on restore, so bytes damaged
    on storage are caught even when they decode to finite numbers. (Summing on another mesh reorders the
    float32 additions, hence the tolerance in verify_restored.)"""
    return [float(x) for x in jax.device_get(_abs_sums((params, opt_state)))]


def verify_restored(state, meta) -> str | None:
    """None when a restored state is finite and matches the checksums saved with it, else why not."""
    sums = checksums(state.params, state.opt_state)
    if not all(map(finite, sums)):
        return "it holds NaN or infinite values"
    saved = meta.get("checksums") if isinstance(meta, dict) else None
    if saved is not None:
        if len(saved) != len(sums):
            return "its checksums do not match its arrays"
        for got, want in zip(sums, saved):
            if abs(got - want) > 1e-4 * max(abs(want), 1.0):
                return "its data does not match the checksums written with it"
    return None
