"""Compiling the train step ahead of time: refuse shapes XLA cannot hold, say what is compiled and for how long
it took last time, keep a heartbeat during minutes-long compiles, and turn a compile-time out-of-memory into
one sentence. Used by the pre-flight check (training/preflight.py)."""
from __future__ import annotations

import json
import math
import time

import jax
from jax.extend import core as jax_core

from llada_jax.config import ConfigError
from llada_jax.utils import compile_cache
from llada_jax.utils.progress import fmt_time, heartbeat

MAX_ELEMENTS = 2**63  # XLA indexes arrays with int64: a larger one aborts the compiler (the process, in C++)
HEARTBEAT_S = 30.0


def _avals(jaxpr):
    """Every value's shape and dtype in a jaxpr, nested ones (scan, remat, custom_vjp) included."""
    for eqn in jaxpr.eqns:
        yield from (var.aval for var in eqn.outvars)
        for sub in jax_core.jaxprs_in_params(eqn.params):
            yield from _avals(sub)


def check_extents(closed_jaxpr, config) -> None:
    """Refuses a step holding an array of 2**63 elements or more, which XLA cannot index: one sentence naming
    the array and the knobs that size it, instead of the compiler's abort."""
    for aval in _avals(closed_jaxpr.jaxpr):
        shape = tuple(getattr(aval, "shape", ()))
        if math.prod(shape) >= MAX_ELEMENTS:
            t = config.train
            raise ConfigError(
                f"train.seq_len={t.seq_len} with train.global_batch_size={t.global_batch_size} makes the step hold "
                f"a {aval.dtype}{list(shape)} array ({math.prod(shape):.2g} elements), more than XLA can index "
                "(2**63 elements); lower train.seq_len or the batch")


def compile_key(config, devices) -> str:
    """What makes one compile take as long as another: the model, the step's shapes, the mesh and the devices."""
    t = config.train
    return json.dumps({"model": config.model.to_dict(), "mesh": config.mesh.to_dict(), "devices": len(devices),
                       "kind": devices[0].device_kind, "jax": jax.__version__,
                       "train": [t.global_batch_size, t.seq_len, t.grad_accum_steps, t.objective]
                       + ([t.block_size, t.block_schedule] if t.objective == "block_diffusion" else [])},
                      sort_keys=True)


def compile_with_progress(trainer, traced, what: str, *, key: str, log, every_s: float = HEARTBEAT_S):
    """The compiled step, after a line saying what is compiled for which devices and how long the last such
    compile took, with a heartbeat every `every_s` seconds; its time is kept for next time."""
    last = compile_cache.last_compile_seconds(key)
    log(f"preflight: compiling the train step of {what}; "
        + (f"the last such compile took {fmt_time(last)}" if last is not None else "this may take minutes") + " ...")
    start = time.perf_counter()
    with heartbeat("preflight: still compiling", log, every_s):
        compiled = compile_or_explain(trainer, traced)
    seconds = time.perf_counter() - start
    compile_cache.remember_compile_seconds(key, seconds)
    log(f"preflight: compiled in {fmt_time(seconds)}")
    return compiled


def compile_or_explain(trainer, traced=None):
    """The compiled step; a compile-time out-of-memory (TPU compiles check HBM) becomes one ConfigError line."""
    try:
        return trainer.compile_step() if traced is None else trainer.compile_step(traced)
    except Exception as e:  # noqa: BLE001 - XLA raises its runtime error type for this
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "HbmOom" not in text:
            raise
        detail = next((line.strip() for line in text.splitlines() if "exceeds" in line or "Ran out" in line),
                      text.splitlines()[0])
        raise ConfigError(f"the step does not fit in device memory ({detail}); enable model.remat, raise "
                          "mesh.fsdp or lower train.global_batch_size") from None
