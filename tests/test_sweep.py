"""Scaling sweeps: the grid hits each budget, the fitter recovers a known power law, and plan/run/fit work
end to end through the CLI on a micro sweep."""
import csv
import json
import os

import numpy as np
import pytest

from llada_jax.models import flops
from llada_jax.scaling import fit, grid
from llada_jax.cli import main
from llada_jax.config import ConfigError, ModelConfig

from helpers import ROOT


def test_grid_hits_every_budget_within_one_percent():
    budgets = [1e17, 1e18, 1e19, 1e20, 1e21]
    runs, skipped = grid.plan_grid(budgets, [4, 8, 12, 16, 24], vocab_size=32000, seq_len=2048, batch=256,
                                      aspect=64, head_dim=64)
    assert runs
    for r in runs:
        cfg = ModelConfig(vocab_size=32000, d_model=r.d_model, n_layers=r.n_layers, n_heads=r.n_heads,
                          n_kv_heads=r.n_heads, head_dim=64, mlp_hidden=r.mlp_hidden)
        spent = r.steps * 256 * 2048 * flops.flops_per_token(cfg, 2048)
        assert spent == pytest.approx(r.flops) and abs(spent - r.budget) <= 0.01 * r.budget
        assert r.steps >= 50 and r.name.startswith(f"isoflop-{grid.budget_label(r.budget)}-N")
    # each (budget, size) appears once per objective, with identical shape and steps
    mdm = {(r.budget, r.d_model): r.steps for r in runs if r.objective == "mdm"}
    ar = {(r.budget, r.d_model): r.steps for r in runs if r.objective == "ar"}
    assert mdm == ar
    assert any("1e17 x 24 layers" in s for s in skipped)  # too few steps for the biggest model at 1e17
    assert grid.budget_label(1e18) == "1e18" and grid.budget_label(3e17) == "3e17"


def test_one_grid_compares_mdm_block_diffusion_and_ar_at_equal_flops(tmp_path, capsys):
    """Block diffusion (block 4 of 16) runs its layers over two streams: fewer steps for the same budget, each run
    within 1% of it by the objective's own count, and its config.json trains block diffusion at that size."""
    from llada_jax.config import load_config, validate
    from llada_jax.objectives import block_diffusion

    config = os.path.join(ROOT, "configs", "sweep_cpu.py")
    sweep = tmp_path / "sweep"
    objectives = "--config.sweep.objectives=('mdm', 'block_diffusion', 'ar')"
    assert main(["sweep", "plan", f"--config={config}", f"--out={sweep}", *MICRO, objectives,
                 "--config.train.block_size=4"]) == 0
    plan = json.loads((sweep / "plan.json").read_text())["runs"]
    by = {(r["budget"], r["d_model"], r["objective"]): r for r in plan}
    assert {r["objective"] for r in plan} == {"mdm", "block_diffusion", "ar"}
    for (budget, d_model, objective), r in by.items():
        cfg = ModelConfig(vocab_size=320, d_model=d_model, n_layers=r["n_layers"], n_heads=r["n_heads"],
                          n_kv_heads=r["n_heads"], head_dim=16, mlp_hidden=r["mlp_hidden"])
        fpt = (block_diffusion.flops_per_token(cfg, 16, 4) if objective == "block_diffusion"
               else flops.flops_per_token(cfg, 16))
        assert abs(r["steps"] * 8 * 16 * fpt - budget) <= 0.01 * budget
        if objective == "block_diffusion":
            assert r["name"].endswith("-bd4") and r["block_size"] == 4
            assert r["steps"] < by[(budget, d_model, "mdm")]["steps"]
            saved = load_config(str(sweep / "runs" / r["name"] / "config.json"))
            validate(saved)
            assert saved.train.objective == "block_diffusion" and saved.train.block_size == 4
            assert not saved.model.causal


def test_fitter_recovers_a_known_compute_optimal_exponent():
    """Synthetic losses L = E + A/N^alpha + B/D^beta with D = C/(6N): the IsoFLOP minima follow
    N* ~ C^(beta/(alpha+beta)) and D* ~ C^(alpha/(alpha+beta))."""
    e, a, b, alpha, beta = 1.7, 400.0, 410.0, 0.34, 0.28
    results = []
    for budget in [1e18, 1e19, 1e20, 1e21]:
        n_star = (alpha * a / (beta * b)) ** (1 / (alpha + beta)) * (budget / 6) ** (beta / (alpha + beta))
        for n in n_star * np.logspace(-0.6, 0.6, 9):
            d = budget / (6 * n)
            for objective, shift in (("mdm", 0.1), ("ar", 0.0)):
                results.append({"objective": objective, "budget": budget, "non_embedding_params": n,
                                "eval_loss": e + shift + a / n ** alpha + b / d ** beta})
    fits = fit.fit_scaling(results)
    for objective in ("mdm", "ar"):
        assert fits[objective]["n_opt"]["exponent"] == pytest.approx(beta / (alpha + beta), abs=0.02)
        assert fits[objective]["d_opt"]["exponent"] == pytest.approx(alpha / (alpha + beta), abs=0.02)
        assert fits[objective]["loss"]["exponent"] < 0
    assert fits["mdm"]["isoflop"]["1e+18"]["loss_opt"] > fits["ar"]["isoflop"]["1e+18"]["loss_opt"]


def test_parabola_without_interior_minimum_is_rejected():
    assert fit.fit_parabola(np.array([6.0, 7.0, 8.0]), np.array([3.0, 2.0, 1.5])) is None
    assert fit.fit_parabola(np.array([6.0, 7.0]), np.array([3.0, 2.0])) is None


# 2 budgets x 2 depths x 2 objectives: the plumbing end to end (the fit's math has its own tests above).
MICRO = [
    "--config.sweep.budgets=(1.5e9, 4e9)", "--config.sweep.depths=(1, 2)", "--config.sweep.aspect=32",
    "--config.sweep.head_dim=16", "--config.sweep.min_steps=10", "--config.train.seq_len=16",
    "--config.model.max_seq_len=16", "--config.train.global_batch_size=8", "--config.train.eval_batches=2",
    "--config.train.eval_draws=2",
]


@pytest.mark.slow
def test_sweep_plan_run_fit_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    config = os.path.join(ROOT, "configs", "sweep_cpu.py")
    sweep = tmp_path / "sweep"
    assert main(["sweep", "plan", f"--config={config}", f"--out={sweep}", *MICRO]) == 0
    assert "runs planned in" in capsys.readouterr().out
    plan = json.loads((sweep / "plan.json").read_text())["runs"]
    assert len(plan) >= 8 and {r["objective"] for r in plan} == {"mdm", "ar"}
    saved = json.loads((sweep / "runs" / plan[0]["name"] / "config.json").read_text())
    assert saved["train"]["steps"] == plan[0]["steps"] and saved["model"]["causal"] == (plan[0]["objective"] == "ar")

    assert main(["sweep", "run", f"--sweep={sweep}", "--print-launch=--name=pod --zone=z"]) == 0
    launch = capsys.readouterr().out.strip().splitlines()
    assert len(launch) == len(plan) and all(line.startswith("python launch/tpu_vm.py train --name=pod") for line in launch)

    assert main(["sweep", "run", f"--sweep={sweep}"]) == 0
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["name"] for r in rows) == sorted(r["name"] for r in plan)
    assert all(np.isfinite(float(r["eval_loss"])) and float(r["eval_loss_se"]) > 0 for r in rows)
    assert main(["sweep", "run", f"--sweep={sweep}"]) == 0  # nothing left to do: no duplicate rows
    with open(sweep / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(plan)

    assert main(["sweep", "fit", f"--sweep={sweep}"]) == 0
    assert "wrote fit.json" in capsys.readouterr().out
    assert set(json.loads((sweep / "fit.json").read_text())) == {"mdm", "ar"}
    for name in ("isoflop.png", "scaling.png"):
        assert (sweep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(ConfigError, match="already holds a different sweep plan"):
        from llada_jax.scaling import sweep as sweep_lib
        from llada_jax.config import load_config
        sweep_lib.plan(load_config(config, [m[2:] for m in MICRO] + ["train.seq_len=8"]), sweep)
