"""Settings that reproduce the official LLaDA 8B Base lm-eval runs (evaluation/eval.sh of the release and the
issue's table). Multiple-choice runs: mc_num 128 in mini-batches of 8, no greedy check, the official estimator;
generation runs: gen_length = steps = block_length = 1024. num_fewshot None keeps the task's own default."""
from __future__ import annotations

_MC = {"mc_num": 128, "mc_batch_size": 8, "estimator": "official", "check_greedy": False}
_GEN = {"gen_length": 1024, "steps": 1024, "block_length": 1024}

# preset -> task -> (num_fewshot, settings)
PRESETS: dict[str, dict[str, tuple[int | None, dict]]] = {
    "llada_base": {
        "mmlu": (5, {**_MC, "mc_num": 1, "mc_batch_size": 1, "cfg_scale": 0.0}),
        "arc_challenge": (0, {**_MC, "cfg_scale": 0.5}),
        "hellaswag": (0, {**_MC, "cfg_scale": 0.5}),
        "winogrande": (5, {**_MC, "cfg_scale": 0.0}),
        "piqa": (0, {**_MC, "cfg_scale": 0.5}),
        "gpqa_main_n_shot": (5, {**_MC, "cfg_scale": 0.5}),
        "truthfulqa_mc2": (0, {**_MC, "cfg_scale": 2.0}),
        "gsm8k": (None, dict(_GEN)),
        "bbh": (None, dict(_GEN)),
        "minerva_math": (None, dict(_GEN)),
        "humaneval": (None, dict(_GEN)),
        "mbpp": (None, dict(_GEN)),
    },
}


def preset_for(preset: str | None, task: str) -> tuple[int | None, dict]:
    """(num_fewshot, settings) of `task` in `preset`; (None, {}) without a preset."""
    from llada_jax.config import ConfigError

    if preset is None:
        return None, {}
    if preset not in PRESETS:
        raise ConfigError(f"--preset={preset} is unknown; use one of {', '.join(PRESETS)}")
    if task not in PRESETS[preset]:
        raise ConfigError(f"task {task} has no setting in --preset={preset} (it covers "
                          f"{', '.join(PRESETS[preset])}); drop --preset or pass the settings as flags")
    return PRESETS[preset][task]
