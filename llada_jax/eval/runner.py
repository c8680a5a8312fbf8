"""Run lm-eval tasks on a checkpoint: settings per task (defaults < preset < flags), one model load for all.

Offline use: tasks defined by YAML files in `include_path` (e.g. `dataset_path: json` with local
`data_files`) are looked up there first, without indexing lm-eval's bundled tasks at all.
"""
from __future__ import annotations

import dataclasses
import time

from llada_jax.eval.presets import preset_for
from llada_jax.eval.settings import EvalSettings
from llada_jax.inference.likelihood import default_rows_per_pass


def task_manager(tasks: list[str], include_path: str | None):
    """lm-eval's TaskManager that knows every task asked for; one sentence naming any it does not know."""
    from lm_eval.tasks import TaskManager

    from llada_jax.config import ConfigError

    manager = None
    if include_path:
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if set(tasks) - set(manager.all_tasks):
            manager = None
    manager = manager or TaskManager(include_path=include_path)
    unknown = sorted(set(tasks) - set(manager.all_tasks))
    if unknown:
        where = f" or in --include-path={include_path}" if include_path else "; pass --include-path=DIR for local YAML"
        raise ConfigError(f"unknown task(s) {', '.join(unknown)}: not among lm-eval's tasks{where}")
    return manager


def task_settings(task: str, preset: str | None, flags: dict, num_fewshot: int | None):
    """(num_fewshot, EvalSettings) for one task: the defaults, then the preset's row, then the given flags."""
    preset_fewshot, preset_values = preset_for(preset, task)
    settings = EvalSettings().replace(**preset_values).replace(**flags)
    return (num_fewshot if num_fewshot is not None else preset_fewshot), settings


def evaluate(checkpoint: str, tasks: list[str], *, preset: str | None = None, flags: dict | None = None,
             num_fewshot: int | None = None, limit: float | None = None, include_path: str | None = None,
             mesh_overrides=(), log_samples: bool = False, bootstrap_iters: int = 1000) -> dict | None:
    """Merged lm-eval results of every task (None on processes other than 0); the settings each task used
    are stored under "llada_jax"."""
    from lm_eval import simple_evaluate

    from llada_jax.eval.harness_model import LladaJaxLM

    plans = {task: task_settings(task, preset, flags or {}, num_fewshot) for task in tasks}  # checks flags first
    manager = task_manager(tasks, include_path)
    model = LladaJaxLM(checkpoint, mesh_overrides)
    merged: dict = {"results": {}, "versions": {}, "n-shot": {}, "higher_is_better": {}, "samples": {},
                    "configs": {}, "llada_jax": {}}
    for task, (fewshot, settings) in plans.items():
        model.settings = settings
        start = time.monotonic()
        out = simple_evaluate(model=model, tasks=[task], num_fewshot=fewshot, limit=limit, task_manager=manager,
                              log_samples=log_samples, bootstrap_iters=bootstrap_iters)
        if out is None:  # not process 0
            continue
        for key in ("results", "versions", "n-shot", "higher_is_better", "samples", "configs"):
            merged[key].update(out.get(key) or {})
        used = dataclasses.asdict(settings)
        if used["rows_per_pass"] is None:  # the backend's default, recorded as the number it was
            used["rows_per_pass"] = default_rows_per_pass()
        merged["llada_jax"][task] = {"num_fewshot": fewshot, "seconds": round(time.monotonic() - start, 1), **used}
    if model.process_index != 0:
        return None
    if not log_samples:
        merged.pop("samples")
    return merged


def results_table(merged: dict) -> str:
    """lm-eval's markdown table of the merged results."""
    from lm_eval.utils import make_table

    return make_table(merged)
