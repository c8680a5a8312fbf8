"""configs/tiny_moe.py through the commands users run: `train` with expert parallelism on the 8 simulated devices
(router metrics in the progress line, metrics.jsonl and TensorBoard; the expert bias saved with the params),
then `sample`, `score` and `preflight` on the result."""
import contextlib
import io
import json
import os

import numpy as np
import pytest

from helpers import ROOT
from llada_jax.cli import main

TINY_MOE = os.path.join(ROOT, "configs", "tiny_moe.py")
SHRINK = ["--config.model.d_model=64", "--config.model.mlp_hidden=96", "--config.model.moe.expert_hidden=32",
          "--config.model.max_seq_len=64", "--config.train.seq_len=32", "--config.train.global_batch_size=8",
          "--config.train.eval_batches=1", "--config.optimizer.warmup_steps=1"]


@pytest.fixture(scope="module")
def moe_run(tmp_path_factory):
    """3 steps with experts split 4 ways (fsdp 2 x expert 4), checkpoints at steps 2 and 3; (workdir, stdout)."""
    workdir = tmp_path_factory.mktemp("moe_run")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", f"--config={TINY_MOE}", f"--workdir={workdir}", *SHRINK, "--config.train.steps=3",
                     "--config.train.log_every=1", "--config.checkpoint.every_steps=2", "--config.mesh.fsdp=2",
                     "--config.mesh.expert=4", "--config.model.moe.bias_update_rate=0.01"])
    assert code == 0, out.getvalue()[-3000:]
    return workdir, out.getvalue()


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_reports_the_router_in_the_progress_line_metrics_and_tensorboard(moe_run):
    workdir, out = moe_run
    assert "mesh {'data': 1, 'fsdp': 2, 'expert': 4, 'tensor': 1}" in out
    line = next(line for line in out.splitlines() if line.startswith("step 3/3 |"))
    assert "load max/mean" in line and "balance" in line and "bias [" in line
    steps = [r for r in records(workdir) if "loss" in r and not r.get("final")]
    assert [r["step"] for r in steps] == [1, 2, 3]
    layers = sorted(k for k in steps[-1] if k.startswith("moe_load_max_mean/"))
    assert layers == ["moe_load_max_mean/layer1", "moe_load_max_mean/layer2", "moe_load_max_mean/layer3"]
    assert steps[-1]["moe_worst_load"] == max(steps[-1][k] for k in layers) >= 1.0
    assert steps[-1]["moe_bias_max"] == pytest.approx(0.03) and steps[0]["moe_bias_max"] == pytest.approx(0.01)
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"moe_load_max_mean/layer1", "moe_balance_loss", "moe_z_loss", "moe_bias_min"} <= tags


@pytest.mark.slow
def test_checkpoints_keep_the_expert_bias(moe_run):
    from llada_jax.checkpoints import params_export

    workdir, _ = moe_run
    by_step = {r["step"]: r for r in records(workdir) if "moe_bias_min" in r}
    for source, step in ((workdir / "checkpoints" / "2", 2), (workdir / "params", 3)):
        params, config = params_export.load_params(str(source))
        bias = np.asarray(params["moe_blocks"]["expert_bias"])
        assert bias.shape == (3, 8) and config.model.family == "llada2_moe"
        assert bias.min() == pytest.approx(by_step[step]["moe_bias_min"])
        assert bias.max() == pytest.approx(by_step[step]["moe_bias_max"])


@pytest.mark.slow
def test_sample_score_and_preflight_run_on_the_moe_checkpoint(moe_run, tmp_path, capsys):
    workdir, _ = moe_run
    common = [f"--checkpoint={workdir}", "--prompt=def f(", "--prompt=x", "--gen-length=8", "--steps=4",
              "--block-length=4", "--no-early-stop"]
    assert main(["sample", *common]) == 0
    text = capsys.readouterr().out
    assert "=== def f(" in text and "=== x" in text
    # the same answers with the experts split 2 ways and the dual KV cache (exact at one step per block here)
    one_step_per_block = [a for a in common if not a.startswith("--steps")] + ["--steps=2"]
    assert main(["sample", *one_step_per_block, "--cache=dual", "--config.mesh.fsdp=4", "--config.mesh.expert=2"]) == 0
    assert main(["sample", *one_step_per_block]) == 0
    dual, plain = capsys.readouterr().out.split("=== def f(", 2)[1:]
    assert dual.split("(")[0] == plain.split("(")[0]
    data = tmp_path / "mc.jsonl"
    data.write_text('{"prompt": "ab", "choices": ["cd", "e"], "label": 1}\n')
    assert main(["score", f"--checkpoint={workdir}", f"--input={data}", "--mc-num=4", "--batch-size=4"]) == 0
    scored = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(scored[0]["log_likelihood"]) == 2 and all(v < 0 for v in scored[0]["log_likelihood"])
    assert main(["preflight", f"--config={TINY_MOE}", "--json", *SHRINK, "--config.mesh.expert=2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mesh"]["expert"] == 2 and report["temp_bytes"] > 0


@pytest.mark.slow
def test_eval_runs_on_the_moe_checkpoint(moe_run, tmp_path, monkeypatch):
    """`llada-jax eval` (lm-evaluation-harness, a local multiple-choice task, offline) on the MoE run."""
    pytest.importorskip("lm_eval")
    from test_eval import eval_argv, write_tasks

    workdir, _ = moe_run
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output = tmp_path / "results.json"
    assert main(eval_argv(str(workdir), write_tasks(tmp_path / "tasks"), output, "local_mc")) == 0
    accuracy = json.loads(output.read_text())["results"]["local_mc"]["acc,none"]
    assert 0.0 <= accuracy <= 1.0
