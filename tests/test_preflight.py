"""`llada-jax preflight` on this machine: shapes XLA cannot hold are one sentence, the compile says what it
compiles and how long that took last time and keeps a heartbeat, and libtpu's start-up chatter stays off the
console (with or without --topology)."""
import json
import os
import subprocess
import sys
import time

import pytest

from helpers import ROOT, SMALL_MODEL, TINY, small_config, xla_flags
from llada_jax.training import step_compile


def preflight_cli(*args, env_drop=(), timeout=600):
    env = {k: v for k, v in dict(os.environ, XLA_FLAGS=xla_flags(1), JAX_PLATFORMS="cpu").items()
           if k not in env_drop}
    return subprocess.run([sys.executable, "-m", "llada_jax.cli", "preflight", f"--config={TINY}", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def test_a_sequence_too_long_for_xla_is_one_sentence_not_an_abort():
    """The probe's trial: a billion-token sequence made XLA abort the process in C++ (exit -6)."""
    proc = preflight_cli("--config.model.max_seq_len=1000000000", "--config.train.seq_len=1000000000")
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("llada-jax preflight: error: train.seq_len=1000000000 with train.global_batch_size=32 "
                              "makes the step hold a ") and "more than XLA can index" in err[-1]
    assert len(err) == 1 and "Traceback" not in proc.stderr


class SlowCompile:
    """A trainer whose compile takes `seconds` (a big model on a pod slice takes minutes)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def compile_step(self, traced=None):
        time.sleep(self.seconds)
        return "compiled"


def test_a_long_compile_says_what_and_how_long_last_time_then_keeps_a_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setenv("LLADA_JAX_COMPILATION_CACHE", str(tmp_path))  # where compile times are remembered
    said = []
    key = step_compile.compile_key(small_config(), [type("D", (), {"device_kind": "TPU v5p"})()] * 64)
    assert step_compile.compile_with_progress(SlowCompile(0.35), None, "configs/llada_8b.py for 64 x TPU v5p",
                                              key=key, log=said.append, every_s=0.1) == "compiled"
    assert said[0] == ("preflight: compiling the train step of configs/llada_8b.py for 64 x TPU v5p; this may take "
                       "minutes ...")
    beats = [line for line in said if line.startswith("preflight: still compiling (0:00:0")]
    assert len(beats) >= 2 and said[-1] == "preflight: compiled in 0:00:00"
    said.clear()
    step_compile.compile_with_progress(SlowCompile(0.0), None, "it", key=key, log=said.append)
    assert said[0] == "preflight: compiling the train step of it; the last such compile took 0:00:00 ..."


@pytest.mark.slow
def test_preflight_prints_no_libtpu_chatter_and_says_what_it_compiles():
    """With libtpu installed, a CPU preflight printed libtpu's E0000 ... unexpected worker hostname and a Source
    Location Trace, and a topology compile a warning that reads like a failure; then nothing until the figures."""
    pytest.importorskip("libtpu")
    small = [f"--config.{o}" for o in SMALL_MODEL if not o.startswith(("train.seq_len", "model.max_seq_len"))]
    small += ["--config.train.seq_len=128", "--config.model.max_seq_len=128"]
    for topology in ([], ["--topology=v5p:2x2x1"]):
        proc = preflight_cli(*small, *topology, "--json", env_drop=("JAX_PLATFORMS",))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout)["devices"] == (4 if topology else 1)
        lines = proc.stderr.strip().splitlines()
        kind = "TPU v5" if topology else "cpu"
        assert lines[0].startswith(f"preflight: compiling the train step of {TINY} for ") and kind in lines[0]
        assert lines[-1].startswith("preflight: compiled in ")
        assert all(line.startswith("preflight: ") for line in lines), proc.stderr[-3000:]
