"""Scaling-law sweeps on disk: plan a grid of runs, run them, gather results, fit and plot.

A sweep folder holds `plan.json` (the runs), `runs/<name>/config.json` (each run's full config, usable with
`llada-jax train --config=...json`), `runs/<name>/` (the run's workdir), `results.csv` (one row per finished
run), `fit.json` and the plots. Every step can be re-run: finished runs are skipped.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import shlex
import time

import ml_collections
from etils import epath

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.scaling import fit as fit_lib
from llada_jax.scaling import grid

RESULT_FIELDS = ("name", "objective", "budget", "non_embedding_params", "d_model", "n_layers", "steps", "tokens",
                 "flops", "eval_loss", "eval_loss_se", "train_loss", "wall_s")


def run_config(config, run: grid.PlannedRun) -> ml_collections.ConfigDict:
    """The base config with the run's shape, objective and step count; MDM and AR share everything else."""
    c = ml_collections.ConfigDict(config.to_dict())
    del c["sweep"]
    for field in ("d_model", "n_layers", "n_heads", "mlp_hidden"):
        c.model[field] = getattr(run, field)
    c.model.n_kv_heads = 0
    c.model.head_dim = 0
    c.model.causal = run.objective == "ar"
    c.train.objective = run.objective
    if run.block_size:
        c.train.block_size = run.block_size
    c.train.steps = run.steps
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, max(run.steps // 10, 1))
    return c


def _moe_fields(model) -> dict:
    """A mixture-of-experts base config's family and experts, so the grid counts its active FLOPs."""
    resolved = ModelConfig.from_config(model)
    return {"family": resolved.family, "moe": resolved.moe} if resolved.is_moe else {}


def plan(config, out) -> tuple[list[grid.PlannedRun], list[str]]:
    """Writes plan.json and each run's config; refuses a folder that holds a different plan."""
    if "sweep" not in config:
        raise ConfigError("the config has no 'sweep' section; start from configs/sweep_cpu.py")
    s = config.sweep
    runs, skipped = grid.plan_grid(
        list(s.budgets), list(s.depths), vocab_size=config.model.vocab_size, seq_len=config.train.seq_len,
        batch=config.train.global_batch_size, aspect=s.aspect, head_dim=s.head_dim, objectives=tuple(s.objectives),
        min_steps=s.min_steps, model_fields=_moe_fields(config.model), block_size=config.train.get("block_size", 32))
    if not runs:
        raise ConfigError("no (budget, depth) pair gives a run of at least sweep.min_steps steps; raise sweep.budgets")
    out = epath.Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out={out} is a file, not a folder; name a new folder for the sweep (or an earlier "
                          "sweep's folder)")
    text = json.dumps({"runs": [dataclasses.asdict(r) for r in runs], "skipped": skipped}, indent=2)
    if (out / "plan.json").exists() and (out / "plan.json").read_text() != text:
        raise ConfigError(f"{out} already holds a different sweep plan; choose a new --out folder")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(text)
    for r in runs:
        (out / "runs" / r.name).mkdir(exist_ok=True)
        (out / "runs" / r.name / "config.json").write_text(run_config(config, r).to_json(indent=2))
    return runs, skipped


def read_plan(sweep) -> list[grid.PlannedRun]:
    path = epath.Path(sweep) / "plan.json"
    if not path.exists():
        raise ConfigError(f"{sweep} has no plan.json; run `llada-jax sweep plan --out={sweep}` first")
    return [grid.PlannedRun(**r) for r in json.loads(path.read_text())["runs"]]


def read_results(sweep) -> list[dict]:
    path = epath.Path(sweep) / "results.csv"
    if not path.exists():
        return []
    with path.open() as f:
        rows = list(csv.DictReader(f))
    numeric = set(RESULT_FIELDS) - {"name", "objective"}
    return [{k: (float(v) if k in numeric else v) for k, v in row.items()} for row in rows]


def launch_commands(sweep, launcher_args: str) -> list[str]:
    """One `launch/tpu_vm.py train` command per run, for running the sweep on a pod instead of locally."""
    return [f"python launch/tpu_vm.py train {launcher_args} --config={epath.Path(sweep) / 'runs' / r.name / 'config.json'} "
            f"--workdir={shlex.quote('gs://BUCKET/' + r.name)}" for r in read_plan(sweep)]


def sweep_eta(elapsed_s: float, flops_done: float, total_flops: float) -> str:
    """' | about H:MM:SS left' from the time per FLOP so far (runs cost about their FLOPs); '' before the first."""
    from llada_jax.utils.progress import fmt_time

    if flops_done <= 0:
        return ""
    return f" | about {fmt_time(elapsed_s / flops_done * (total_flops - flops_done))} left for the sweep"


def run_all(sweep, log=print) -> list[dict]:
    """Trains every planned run without a result, one after another, appending a row to results.csv each."""
    from llada_jax.training import loop
    from llada_jax.config import load_config

    sweep = epath.Path(sweep)
    done = {r["name"] for r in read_results(sweep)}
    todo = [r for r in read_plan(sweep) if r.name not in done]
    path = sweep / "results.csv"
    total_flops, flops_done, began = sum(r.flops for r in todo), 0.0, time.perf_counter()
    for i, run in enumerate(todo, 1):
        log(f"[{i}/{len(todo)}] {run.name}: {run.steps} steps, {run.flops:.3g} FLOPs"
            + sweep_eta(time.perf_counter() - began, flops_done, total_flops))
        config = load_config(str(sweep / "runs" / run.name / "config.json"))
        start = time.perf_counter()
        summary = loop.run(config, sweep / "runs" / run.name, quiet=True)
        row = {**{k: getattr(run, k) for k in RESULT_FIELDS if hasattr(run, k)},
               "eval_loss": summary["eval_loss"], "eval_loss_se": summary["eval_loss_se"],
               "train_loss": summary["train_loss"], "wall_s": time.perf_counter() - start}
        new = not path.exists()
        with path.open("a") as f:
            writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        flops_done += run.flops
        log(f"    eval {summary['eval_loss']:.4f} +- {summary['eval_loss_se']:.4f} nats/token in {row['wall_s']:.0f} s")
    return read_results(sweep)


def fit(sweep) -> dict:
    """Fits IsoFLOP parabolas and power laws to results.csv; writes fit.json, isoflop.png and scaling.png."""
    sweep = epath.Path(sweep)
    results = read_results(sweep)
    if not results:
        raise ConfigError(f"{sweep} has no results.csv yet; run `llada-jax sweep run --sweep={sweep}` first")
    fits = fit_lib.fit_scaling(results)
    (sweep / "fit.json").write_text(json.dumps(fits, indent=2))
    plot(results, fits, sweep)
    return fits


def plot(results: list[dict], fits: dict, sweep) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    styles = {"mdm": "-", "ar": "--", "block_diffusion": ":"}
    budgets = sorted({r["budget"] for r in results})
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(budgets)))
    fig, ax = plt.subplots(figsize=(7, 5))
    for objective in sorted({r["objective"] for r in results}):
        for budget, colour in zip(budgets, colours):
            rows = sorted((r for r in results if r["objective"] == objective and r["budget"] == budget),
                          key=lambda r: r["non_embedding_params"])
            if not rows:
                continue
            n = np.array([r["non_embedding_params"] for r in rows])
            ax.errorbar(n, [r["eval_loss"] for r in rows], yerr=[r["eval_loss_se"] for r in rows], fmt="o",
                        color=colour, mfc="white" if objective == "ar" else colour)
            curve = fits.get(objective, {}).get("isoflop", {}).get(str(budget))
            if curve:
                x = np.linspace(np.log10(n.min()) - 0.1, np.log10(n.max()) + 0.1, 50)
                ax.plot(10 ** x, curve["a"] * x * x + curve["b"] * x + curve["c"], styles.get(objective, ":"),
                        color=colour, label=f"{objective.upper()} C={grid.budget_label(budget)}")
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("eval loss (nats/token; MDM: ELBO bound)")
    ax.set_title("IsoFLOP curves: MDM (solid), block diffusion (dotted), AR (dashed)")
    if ax.get_legend_handles_labels()[0]:  # no fitted curve (too few points): no empty-legend warning
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(str(sweep / "isoflop.png"), dpi=120)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for objective, entry in sorted(fits.items()):
        curves = entry.get("isoflop", {})
        if not curves:
            continue
        c = np.array(sorted(float(b) for b in curves))
        left.plot(c, [curves[str(b)]["n_opt"] for b in c], "o", label=f"{objective.upper()} N*")
        right.plot(c, [curves[str(b)]["loss_opt"] for b in c], "o", label=f"{objective.upper()} L*")
        if "n_opt" in entry:
            left.plot(c, entry["n_opt"]["k"] * c ** entry["n_opt"]["exponent"], styles.get(objective, ":"),
                      label=f"{objective.upper()}: N* ~ C^{entry['n_opt']['exponent']:.2f}")
            right.plot(c, entry["loss"]["k"] * c ** entry["loss"]["exponent"], styles.get(objective, ":"),
                       label=f"{objective.upper()}: L* ~ C^{entry['loss']['exponent']:.3f}")
    for ax, label in ((left, "compute-optimal N*"), (right, "loss at N*")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(sweep / "scaling.png"), dpi=120)
    plt.close(fig)
