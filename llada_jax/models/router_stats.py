"""Router statistics from a forward pass to whoever computes the loss, without changing what the model returns.

A mixture-of-experts model reports each forward pass's per-layer router statistics (expert loads, balancing
and z-loss sums, dropped assignments) here; `objectives.registry.compute_loss` collects them around the
objective's loss function, so every objective (MDM, SFT, AR, and any added later) gets the router losses and
metrics without knowing the model has experts. Outside a collection (sampling, scoring) reports are dropped.

The reported arrays are tracers of the trace that computes the loss; an objective must therefore call the
model at the top level of its loss function, not inside its own jax.checkpoint / vmap / scan (JAX says so
with an UnexpectedTracerError if one does).
"""
from __future__ import annotations

import contextlib
import contextvars

import jax

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("llada_router_stats", default=None)


@contextlib.contextmanager
def collecting():
    """Yields a list that receives every report made inside the `with` block (nested blocks collect apart)."""
    found: list = []
    token = _ACTIVE.set(found)
    try:
        yield found
    finally:
        _ACTIVE.reset(token)


def report(stats: dict) -> None:
    """Called by a model after a forward pass; a no-op when nobody collects."""
    found = _ACTIVE.get()
    if found is not None:
        found.append(stats)


def total(reports: list) -> dict | None:
    """The reports of several forward passes added up (every entry is a sum or a count), None without any."""
    if not reports:
        return None
    return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]), *reports)
