"""Evaluate a checkpoint on lm-evaluation-harness tasks: `llada-jax eval --checkpoint=DIR --tasks=arc_challenge`.

Needs the [eval] extra (`pip install -e .[eval]`). Settings per task: the defaults, then `--preset`'s row (the
official LLaDA Base settings: `--preset=llada_base`), then the flags given here. Local tasks: lm-eval YAML
files in `--include-path=DIR` (`dataset_path: json` with local `data_files` runs with no download).
Prints progress (requests/s, ETA) and a results table; `--output` writes the results JSON (process 0).
"""
from __future__ import annotations

import argparse

# flag -> EvalSettings field; flags left unset do not override the preset
SETTING_FLAGS = {
    "mc_num": int, "mc_batch_size": int, "cfg_scale": float, "estimator": str, "check_greedy": None,
    "rows_per_pass": int, "gen_length": int, "steps": int, "block_length": int, "temperature": float,
    "remasking": str, "threshold": float, "factor": float, "cache": str, "gen_batch_size": int, "seed": int,
}
HELP = {
    "mc_num": "Monte Carlo samples per answer (default 128)",
    "cfg_scale": "classifier-free guidance scale for scoring and generation (default 0: off)",
    "gen_length": "generate_until: tokens to generate (default: the task's max_gen_toks, else 256)",
    "steps": "generate_until: reverse-process steps (default: one per generated token)",
    "block_length": "generate_until: tokens per block, decoded left to right (default: the whole length)",
    "temperature": "generate_until: Gumbel noise on the logits; 0 is greedy (default 0)",
    "remasking": "generate_until: reveal the most confident predictions or random ones (default low_confidence)",
    "seed": "random seed of the Monte Carlo masks and the sampling noise (default 0)",
    "mc_batch_size": "samples per stratified mini-batch, the official --batch_size (default 16)",
    "estimator": "official: half-to-even rounding as get_log_likelihood.py (default in presets); "
                 "unbiased: this project's (default otherwise)",
    "rows_per_pass": "Monte Carlo rows of any requests per forward pass (default: 32 on CPU, 256 on GPU/TPU)",
    "gen_batch_size": "prompts decoded together by generate_until (default 16)",
    "threshold": "generate_until: reveal every token above this confidence (fast sampler mode)",
    "factor": "generate_until: Fast-dLLM's factor rule for parallel decoding (fast sampler mode)",
    "cache": "generate_until: sampler KV cache, none / prefix / dual (approximate, faster) for a full-sequence "
             "model, exact / none for a block-diffusion one (default auto: none / exact)",
    "check_greedy": "loglikelihood: also report whether greedy decoding reproduces the answer",
}


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="params export, run workdir or checkpoint step")
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    parser.add_argument("--preset", default=None, help="official settings per task: llada_base")
    parser.add_argument("--include-path", default=None, help="folder of lm-eval task YAML files (local tasks)")
    parser.add_argument("--num-fewshot", type=int, default=None,
                        help="few-shot examples per prompt (default: the preset's, else the task's own)")
    parser.add_argument("--limit", type=float, default=None, help="evaluate only the first N documents per task")
    parser.add_argument("--output", default=None, help="write the results JSON here")
    parser.add_argument("--log-samples", action="store_true", help="keep per-document outputs in --output")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    for name, kind in SETTING_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if kind is None:
            parser.add_argument(flag, action="store_true", default=None, help=HELP.get(name))
        elif name == "estimator":
            parser.add_argument(flag, choices=["official", "unbiased"], default=None, help=HELP[name])
        elif name == "remasking":
            parser.add_argument(flag, choices=["low_confidence", "random"], default=None, help=HELP[name])
        elif name == "cache":
            parser.add_argument(flag, choices=["auto", "none", "prefix", "dual", "exact"], default=None, help=HELP[name])
        else:
            parser.add_argument(flag, type=kind, default=None, help=HELP.get(name))


def start_processes(overrides: list[str]) -> list[str]:
    """Joins a multi-host job (Cloud TPU / SLURM detected, or --config.distributed.* / LLADA_* variables, as
    `train` does) before any device is touched; returns the other overrides (the mesh ones)."""
    import ml_collections

    from llada_jax.training import distributed
    from llada_jax.config import apply_override

    dist = ml_collections.ConfigDict({"distributed": {"auto": True, "coordinator_address": "", "num_processes": 0,
                                                      "process_id": -1, "timeout_s": 300}})
    for item in overrides:
        if item.startswith("--config.distributed."):
            apply_override(dist, item)
    distributed.initialize(dist.distributed)
    return [item for item in overrides if not item.startswith("--config.distributed.")]


def run(args, overrides) -> int:
    import json
    import os

    from llada_jax.config import ConfigError
    from llada_jax.utils.output_dirs import check_file

    from llada_jax.checkpoints import locate

    if args.output:  # refused before hours of evaluation, never after
        check_file(args.output, flag="--output", overwrite=args.overwrite)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("--tasks is empty; pass comma-separated lm-eval task names")
    if args.include_path and not os.path.isdir(args.include_path):
        raise ConfigError(f"--include-path={args.include_path} is not a folder; pass the folder of task YAML files")
    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit={args.limit} must be positive")
    locate.resolve(args.checkpoint)  # a wrong path is said before lm-eval loads (seconds)
    try:
        import lm_eval  # noqa: F401  (the [eval] extra)
    except ImportError as e:
        raise ConfigError(f"llada-jax eval needs lm-evaluation-harness ({e}); "
                          "install it with pip install -e .[eval]") from None
    from llada_jax.eval import runner

    flags = {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None}
    mesh_overrides = start_processes(overrides)
    merged = runner.evaluate(args.checkpoint, tasks, preset=args.preset, flags=flags, num_fewshot=args.num_fewshot,
                             limit=int(args.limit) if args.limit and args.limit >= 1 else args.limit,
                             include_path=args.include_path, mesh_overrides=mesh_overrides,
                             log_samples=args.log_samples)
    if merged is None:  # processes other than 0 report nothing
        return 0
    print(runner.results_table(merged))
    if args.output:
        with open(f"{args.output}.incomplete", "w", encoding="utf-8") as f:  # renamed only once complete
            json.dump(merged, f, indent=2, default=str)
        os.replace(f"{args.output}.incomplete", args.output)
        print(f"results written to {args.output}")
    return 0
