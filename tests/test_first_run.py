"""What a new user meets first: help, fast config errors, no TensorFlow, progress from step 1, honest labels,
inference on whatever devices are present, and a resumed run that says when its schedule changed."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from llada_jax.checkpoints import params_export
from llada_jax.training import loop
from llada_jax.cli import main
from llada_jax.utils.progress import Progress, fmt_time

from helpers import ROOT, TINY, small_config

QUIET = ("checkpoint.tensorboard=False", "train.eval_batches=1")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_speaks_at_the_first_item_then_every_few_seconds_and_at_the_end():
    clock = FakeClock()
    progress = Progress(10, every_s=5.0, clock=clock)
    said = []
    for done in range(1, 11):
        clock.now += 2.0  # two seconds per item
        said.append(progress.due(done))
    # item 1 at once, then the first item at least 5 s after the last print (4 at +6 s, 7 at +6 s), then 10
    assert [d for d, s in zip(range(1, 11), said) if s] == [1, 4, 7, 10]


def test_progress_eta_ignores_the_slow_first_item():
    clock = FakeClock()
    progress = Progress(101, clock=clock)
    clock.now += 60.0  # the first step waits for the compilation
    progress.due(1)
    assert progress.eta() == "?"
    clock.now += 10.0  # then 10 steps in 10 s: 90 steps left at 1 step/s
    progress.due(11)
    assert progress.rate() == pytest.approx(1.0) and progress.eta() == fmt_time(90) == "0:01:30"


def test_help_describes_every_command_and_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for command, line in [("demo", "Train a small model on a generated task"), ("sample", "Generate text"),
                          ("prepare", "Tokenize a corpus")]:
        assert f"{command}" in top and line in top
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    sample = " ".join(capsys.readouterr().out.split())
    assert "--gen-length GEN_LENGTH tokens to generate after each prompt (default: 128)" in sample
    assert "--temperature TEMPERATURE Gumbel noise on the logits; 0 is greedy (default: 0.0)" in sample


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_config_error_comes_before_jax_or_tensorflow_is_imported():
    proc = _python(
        "import sys; from llada_jax.cli import main\n"
        f"code = main(['train', '--config={TINY}', '--workdir=/tmp/never', '--config.model.n_heads=3'])\n"
        "print(code, 'jax' in sys.modules, 'tensorflow' in sys.modules)")
    assert proc.stdout.split() == ["2", "False", "False"], proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and "n_heads" in proc.stderr


def test_training_and_its_tensorboard_writer_never_import_tensorflow(tmp_path):
    proc = _python(
        "import sys; from llada_jax.training import loop, metrics; from llada_jax.data import pipeline\n"
        f"w = metrics.MetricsWriter({str(tmp_path)!r}); w.write({{'step': 1, 'loss': 2.0}}); w.close()\n"
        "print('tensorflow' in sys.modules, 'seqio' in sys.modules, 'torch' in sys.modules)")
    assert proc.stdout.split() == ["False", "False", "False"], proc.stderr[-2000:]
    assert list((tmp_path / "tensorboard").iterdir())  # the event file was written


def test_progress_from_the_first_step_and_compile_lines(tmp_path, capsys):
    loop.run(small_config(*QUIET, "train.steps=3", "train.log_every=100"), tmp_path)
    out = capsys.readouterr().out
    assert "compiling the train step" in out and "compiled and ran step 1 in" in out
    assert "step 1/3 | loss" in out and "step 3/3 | loss" in out
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[:-1]]
    assert logged == [3]  # console lines in between are not extra metrics records


def test_autoregressive_run_is_labelled_nll_and_next_token_accuracy(tmp_path, capsys):
    config = small_config(*QUIET, "model.causal=True", "train.objective=ar", "train.steps=1")
    loop.run(config, tmp_path)
    out = capsys.readouterr().out
    assert "| NLL " in out and "next-token acc" in out and "nats/token (NLL)" in out
    assert "ELBO" not in out and "masked" not in out


def test_resumed_run_with_another_schedule_says_so(trained_run, tmp_path, capsys):
    shutil.copytree(trained_run, tmp_path / "run")
    loop.run(small_config(*QUIET, "train.steps=3", "checkpoint.every_steps=1"), tmp_path / "run")
    out = capsys.readouterr().out
    assert "resuming from the checkpoint at step 2" in out
    assert "the schedule differs from the checkpoint's (train.steps 2 -> 3)" in out and "new --workdir" in out
    loop.run(small_config(*QUIET, "train.steps=3", "checkpoint.every_steps=1"), tmp_path / "run")
    assert "schedule differs" not in capsys.readouterr().out  # same schedule: nothing to say


def test_sample_uses_the_devices_present_whatever_mesh_trained_the_model(trained_run, tmp_path, capsys):
    # a checkpoint written by a 16-device run: its mesh cannot exist on the 8 devices here
    params, config = params_export.load_params(trained_run / "params")
    config.mesh.fsdp, config.mesh.data = 8, 2
    params_export.save_params(tmp_path / "pod", params, config)
    args = ["sample", f"--checkpoint={tmp_path / 'pod'}", "--prompt=ab", "--gen-length=4", "--steps=4",
            "--block-length=4"]
    assert main(args) == 0
    assert "forward passes for 1 x 4 tokens" in capsys.readouterr().out
    assert main([*args, "--config.mesh.fsdp=16"]) == 2  # an explicit mesh is still checked against the devices
    assert "multiplies to 16 but there are 8 devices" in capsys.readouterr().err


def test_sample_threshold_must_be_a_confidence(trained_run, capsys):
    assert main(["sample", f"--checkpoint={trained_run}", "--prompt=a", "--threshold=1.5"]) == 2
    assert "--threshold=1.5 is not a confidence" in capsys.readouterr().err


def test_corpus_too_small_for_an_eval_split_says_so(tmp_path, capsys):
    (tmp_path / "doc.txt").write_text("a corpus of thirty-nine bytes, no more.")
    config = small_config(*QUIET, "data.source=text", f"data.path={tmp_path / 'doc.txt'}", "train.steps=1",
                          f"data.cache_dir={tmp_path / 'cache'}")
    loop.run(config, tmp_path / "run")
    captured = capsys.readouterr()
    assert "the eval split is empty" in captured.err
    assert "no eval loss (the eval split is empty" in captured.out and "eval loss nan" not in captured.out


def test_tpu_plugin_is_skipped_only_where_no_tpu_or_platform_choice_exists(monkeypatch):
    import importlib.util

    from llada_jax import cli

    chosen = {"JAX_PLATFORMS": "tpu"}
    cli.skip_absent_tpu(chosen)
    assert chosen == {"JAX_PLATFORMS": "tpu"}  # the user's choice stands
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no libtpu: nothing to hide
    untouched = {}
    cli.skip_absent_tpu(untouched)
    assert untouched == {}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "libtpu" else None)
    monkeypatch.setattr(cli.glob, "glob", lambda pattern: [])  # libtpu but no TPU device
    hidden = {}
    cli.skip_absent_tpu(hidden)
    assert hidden == {"JAX_PLATFORMS": "cpu"}


def test_sweep_estimates_the_time_left_from_the_time_per_flop():
    from llada_jax.scaling.sweep import sweep_eta

    assert sweep_eta(0.0, 0.0, 3e12) == ""  # nothing measured before the first run ends
    assert sweep_eta(60.0, 1e12, 3e12) == " | about 0:02:00 left for the sweep"  # 60 s per 1e12 FLOPs, 2e12 to go
