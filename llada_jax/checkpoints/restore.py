"""Resuming a run: the newest step that restores and verifies, with damaged steps renamed aside (never deleted)."""
from __future__ import annotations

import time

import jax
import orbax.checkpoint as ocp

from llada_jax.checkpoints.locate import PARAMS_ITEM, SET_ASIDE, read_config
from llada_jax.checkpoints.multihost import sync
from llada_jax.checkpoints.verify import verify_restored
from llada_jax.config import ConfigError
from llada_jax.utils.errors import first_line


def restore_step(manager, abstract_state, step):
    """(state, meta) of `step`, resharded onto `abstract_state`'s shardings."""
    restored = manager.restore(step, args=ocp.args.Composite(**{
        PARAMS_ITEM: ocp.args.StandardRestore(abstract_state.params),
        "opt_state": ocp.args.StandardRestore(abstract_state.opt_state),
        "meta": ocp.args.JsonRestore(),
    }))
    state = abstract_state.replace(
        step=jax.device_put(jax.numpy.asarray(step, jax.numpy.int32), abstract_state.step.sharding),
        params=restored[PARAMS_ITEM],
        opt_state=restored["opt_state"],
    )
    return state, restored["meta"]


def newest_good(manager, directory, abstract_state, log):
    """(state, meta, step) of the newest step that restores cleanly, or None when the run has no checkpoint.

    A step that cannot be read, holds non-finite values or fails its checksums is skipped with one sentence
    through `log`, and renamed to unusable-step-N (kept for inspection, out of Orbax's way) once an older good
    step is found. When no step restores, ConfigError lists why for each.
    """
    problems = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            read_config(directory / str(step))  # what sampling and conversion read from this step
            state, meta = restore_step(manager, abstract_state, step)
            problem = verify_restored(state, meta)
        except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many kinds for damaged files
            problem = f"it cannot be read: {first_line(e)}"
        if problem is None:
            for bad, why in problems:
                log(f"checkpoint step {bad} is unusable ({why}); resuming from step {step}, the newest step "
                    f"that restores cleanly (step {bad} is kept as {directory / (SET_ASIDE + str(bad))})")
            set_aside(manager, directory, [bad for bad, _ in problems])
            return state, meta, step
        problems.append((step, problem))
    if problems:
        listed = "; ".join(f"step {bad}: {why}" for bad, why in problems[:3])
        raise ConfigError(f"no checkpoint in {directory} restores cleanly ({listed}); move that folder "
                          "aside to start afresh, or restore it from a backup")
    return None


def set_aside(manager, directory, steps) -> None:
    """Renames each step folder to unusable-step-N (on process 0) and lets the manager forget them."""
    if not steps:
        return
    if jax.process_index() == 0:
        for step in steps:
            target = directory / f"{SET_ASIDE}{step}"
            if target.exists():
                target = directory / f"{SET_ASIDE}{step}-{int(time.time())}"
            (directory / str(step)).rename(target)
    sync("llada_set_aside_unusable_steps")
    manager.reload()
