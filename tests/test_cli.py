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


# ---------------------------------------------------------------- plain mistakes: one sentence, before JAX loads


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_files_of_the_wrong_kind_are_one_line(trained_run, tmp_path, capsys):
    """The probe's tracebacks: a binary --prompt-file (UnicodeDecodeError), score --input=<a folder>
    (IsADirectoryError), sweep plan --out=<an existing file> (NotADirectoryError)."""
    (tmp_path / "prompts.bin").write_bytes(bytes(range(256)))
    (tmp_path / "notes.txt").write_text("mine")
    for argv, said in [
        (["sample", f"--checkpoint={trained_run}", f"--prompt-file={tmp_path / 'prompts.bin'}"],
         f"--prompt-file={tmp_path / 'prompts.bin'} is not UTF-8 text (byte 128 cannot be decoded)"),
        (["score", f"--checkpoint={trained_run}", f"--input={tmp_path}"], f"--input={tmp_path} is a folder"),
        (["sweep", "plan", f"--config={ROOT}/configs/sweep_cpu.py", f"--out={tmp_path / 'notes.txt'}"],
         f"--out={tmp_path / 'notes.txt'} is a file, not a folder"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def _float_flags():
    """(argv that satisfies the command's required flags, float flag) for every float flag of every command."""
    import argparse
    import importlib

    from llada_jax import cli

    for name, module in cli.COMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(module).register(parser)
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for path, sub in [([], parser)] + [([d], p) for a in nested for d, p in a.choices.items()]:
            required = [f"{a.option_strings[0]}=x" for a in sub._actions if a.required and a.option_strings]
            positional = [a.choices[0] for a in sub._actions if not a.option_strings and a.choices and
                          not isinstance(a, argparse._SubParsersAction)]
            for action in sub._actions:
                if action.type is float:
                    yield [name, *path, *positional, *required], action.option_strings[0]


@pytest.mark.parametrize("argv, flag", list(_float_flags()), ids=lambda v: v if isinstance(v, str) else v[0])
def test_every_float_flag_of_every_command_refuses_nan_and_infinity(argv, flag, capsys):
    """`sample --temperature=nan` decoded as if it were 0; config fields already refused NaN."""
    for value in ("nan", "inf", "-inf"):
        assert main([*argv, f"{flag}={value}"]) == 2
        err = capsys.readouterr().err
        assert f"{flag}={float(value)} is not a finite number" in err and len(err.strip().splitlines()) == 1


def test_every_float_flag_is_found():
    flags = {(argv[0], flag) for argv, flag in _float_flags()}
    assert {("sample", "--temperature"), ("sample", "--threshold"), ("score", "--cfg-scale"),
            ("eval", "--limit"), ("prepare", "--eval-fraction")} <= flags


def test_a_missing_checkpoint_says_it_does_not_exist_before_jax_loads(tmp_path):
    """It said the folder "holds no 'params' checkpoint", after 4-9 s of loading."""
    missing = tmp_path / "no-such-run"
    (tmp_path / "items.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
    calls = [["sample", f"--checkpoint={missing}", "--prompt=a"],
             ["score", f"--checkpoint={missing}", f"--input={tmp_path / 'items.jsonl'}"],
             ["eval", f"--checkpoint={missing}", "--tasks=x"],
             ["convert", "to-hf", f"--checkpoint={missing}", f"--out={tmp_path / 'hf'}"]]
    proc = _python("import sys; from llada_jax.cli import main\n"
                   f"print([main(argv) for argv in {calls!r}], 'jax' in sys.modules, 'lm_eval' in sys.modules)")
    assert proc.stdout.split() == ["[2,", "2,", "2,", "2]", "False", "False"], proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 4 and all(f"{missing} does not exist; pass a folder written by llada-jax" in line
                                   for line in lines)


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def test_every_flag_has_help_and_no_help_names_internal_code(capsys):
    import argparse
    import importlib
    import re

    from llada_jax import cli

    for name, module in cli.COMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(module).register(parser)
        subs = [p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]
        for sub in [parser, *subs]:
            for action in sub._actions:
                assert action.help, (name, action.dest)  # before: preflight --config and many sample/eval flags
        # what --help prints above the flags: before, score's named ITEMS_PER_CALL and batched_log_likelihoods
        for text in [importlib.import_module(module).__doc__, *(p.description for p in subs)]:
            assert not re.search(r"\b[A-Z]+_[A-Z_]+\b|\b[a-z_]+\.[a-z_]+_[a-z_]+\b", text), (name, text)


def test_convert_directions_have_their_own_help(capsys):
    to_hf, from_hf = _help(["convert", "to-hf"], capsys), _help(["convert", "from-hf"], capsys)
    assert "--checkpoint" in to_hf and "--max-shard-size" in to_hf and "--hf-dir" not in to_hf
    assert "--hf-dir" in from_hf and "--checkpoint" not in from_hf and "--max-shard-size" not in from_hf


def test_a_config_typo_suggests_the_field(tmp_path, capsys):
    for typo, meant in [("train.stepz=1", "train.steps"), ("trian.steps=1", "train.steps"),
                        ("optimizer.lr_=1", "optimizer.lr")]:
        assert main(["train", f"--config={TINY}", f"--workdir={tmp_path}", f"--config.{typo}"]) == 2
        assert f"(did you mean {meant}?)" in capsys.readouterr().err
