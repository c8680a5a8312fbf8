"""`llada-jax train` through the real console entry point, on the bundled corpus."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llada_jax.checkpoints import params_export
from llada_jax.cli import main

from helpers import ROOT, SMALL_MODEL, TINY, xla_flags


def run_cli(*args):
    env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "llada_jax.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_train_command_runs_on_a_sharded_mesh_and_exports_params(tmp_path):
    overrides = [f"--config.{o}" for o in SMALL_MODEL]
    proc = run_cli("train", f"--config={TINY}", f"--workdir={tmp_path}", *overrides,
                   "--config.train.steps=6", "--config.train.log_every=3", "--config.mesh.fsdp=4",
                   "--config.mesh.tensor=2", "--config.train.eval_batches=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 6/6" in proc.stdout and "unigram entropy" in proc.stdout and "tok/s" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records[:-1]] == [3, 6] and records[-1]["final"]
    assert np.isfinite(records[-1]["eval_loss"])
    params, config = params_export.load_params(tmp_path / "params")
    assert config.train.steps == 6 and params["blocks"]["q_proj"].shape == (2, 32, 4, 8)


def test_bad_config_value_is_one_line_error_exit_2(tmp_path, capsys):
    code = main(["train", f"--config={TINY}", f"--workdir={tmp_path}", "--config.model.d_model=250"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "d_model=250 is not divisible by model.n_heads=4" in err


def test_unknown_override_field_is_reported(tmp_path, capsys):
    assert main(["train", f"--config={TINY}", f"--workdir={tmp_path}", "--config.train.stepz=1"]) == 2
    assert "unknown config field 'train.stepz'" in capsys.readouterr().err


def test_an_attention_kernel_that_cannot_run_here_is_one_line_before_training(tmp_path, capsys):
    overrides = [f"--config.{o}" for o in SMALL_MODEL]
    code = main(["train", f"--config={TINY}", f"--workdir={tmp_path}", *overrides, "--config.model.attention=cudnn"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "model.attention='cudnn' cannot run here: the cuDNN kernel runs on GPUs only, not on cpu" in err
    assert not (tmp_path / "checkpoints").exists()


def test_xla_defaults_are_added_once_and_never_override_the_users_flags():
    from llada_jax.utils import xla_flags

    assert xla_flags.with_defaults("") == "--xla_gpu_enable_triton_gemm=false"
    mine = "--xla_force_host_platform_device_count=8 --xla_gpu_enable_triton_gemm=true"
    assert xla_flags.with_defaults(mine) == mine
    once = xla_flags.with_defaults("--xla_dump_to=/tmp/x")
    assert xla_flags.with_defaults(once) == once == "--xla_dump_to=/tmp/x --xla_gpu_enable_triton_gemm=false"
