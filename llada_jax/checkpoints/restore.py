"""Resuming a run: the newest step that restores and verifies, with damaged steps renamed aside (never deleted)."""
from __future__ import annotations

import time

import jax
import orbax.checkpoint as ocp

from llada_jax.checkpoints.locate import PARAMS_ITEM, SET_ASIDE, read_config
from llada_jax.checkpoints.multihost import sync
from llada_jax.checkpoints.verify import verify_restored
from llada_jax.config import ConfigError
from llada_jax.utils import library_noise
from llada_jax.utils.errors import first_line, root_cause

START_AFRESH = ("to start afresh, use a new --workdir or delete {directory}; to try a step again, rename "
                f"{SET_ASIDE}N back to N")


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


def _restore_verified(manager, directory, abstract_state, step):
    """((state, meta), None) when `step` restores and verifies, else (None, why not)."""
    try:
        read_config(directory / str(step))  # what sampling and conversion read from this step
        state, meta = restore_step(manager, abstract_state, step)
        problem = verify_restored(state, meta)
    except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many kinds for damaged files
        return None, f"it cannot be read: {first_line(root_cause(e))}"
    return (None, problem) if problem else ((state, meta), None)


def newest_good(manager, directory, abstract_state, log):
    """(state, meta, step) of the newest step that restores cleanly, or None when the run has no checkpoint.

    A step that cannot be read, holds non-finite values or fails its digests is skipped with one sentence
    through `log` and renamed to unusable-step-N (kept for inspection, out of Orbax's way). When no step
    restores, every step is renamed so and ConfigError lists why for each; a later run in that workdir is
    refused too, never silently started again from step 0.
    """
    problems, found = [], None
    for step in sorted(manager.all_steps(), reverse=True):
        restored, problem = _restore_verified(manager, directory, abstract_state, step)
        if restored is not None:
            found = (*restored, step)
            break
        problems.append((step, problem))
    if problems:
        library_noise.flush()  # the reads a damaged step abandoned are finalised (quietly) now, not at exit
    set_aside(manager, directory, [bad for bad, _ in problems])
    if found is not None:
        for bad, why in problems:
            log(f"checkpoint step {bad} is unusable ({why}); resuming from step {found[2]}, the newest step "
                f"that restores cleanly (step {bad} is kept as {directory / (SET_ASIDE + str(bad))})")
        return found
    if problems:
        listed = _listed(problems)
        raise ConfigError(f"no checkpoint in {directory} restores cleanly ({listed}); each step is kept as "
                          f"{SET_ASIDE}N there: " + START_AFRESH.format(directory=directory))
    set_aside_only = sorted(p.name for p in directory.iterdir() if p.name.startswith(SET_ASIDE)) \
        if directory.exists() else []
    if set_aside_only:
        raise ConfigError(f"every checkpoint in {directory} was set aside as unusable ({', '.join(set_aside_only[:3])}"
                          f"{' ...' if len(set_aside_only) > 3 else ''}), so this run cannot resume: "
                          + START_AFRESH.format(directory=directory))
    return None


def _listed(problems) -> str:
    """'steps 4, 3 and 2: why; step 1: why not' (steps with the same reason together, at most three reasons)."""
    reasons: dict[str, list[int]] = {}
    for step, why in problems:
        reasons.setdefault(why, []).append(step)
    parts = []
    for why, steps in list(reasons.items())[:3]:
        names = ", ".join(map(str, steps[:-1])) + f" and {steps[-1]}" if len(steps) > 1 else str(steps[0])
        parts.append(f"step{'s' if len(steps) > 1 else ''} {names}: {why}")
    return "; ".join(parts)


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
