"""The run lifecycle: exact resume, preemption by a real signal, resharding, --init_from, faults, metrics."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import sharding
from llada_jax.checkpoints import params_export, run_checkpointer
from llada_jax.training import loop
from llada_jax.config import ConfigError
from llada_jax.training.trainer import Trainer

from helpers import ROOT, SMALL_MODEL, TINY, small_config, xla_flags

QUIET = ("checkpoint.tensorboard=False", "train.eval_batches=1")


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    config = small_config(*QUIET, "train.steps=6", "checkpoint.every_steps=0", "mesh.fsdp=4", "mesh.tensor=2")
    straight = tmp_path / "straight"
    loop.run(config, straight, quiet=True)

    resumed = tmp_path / "resumed"
    first = loop.run(config, resumed, quiet=True, stop_after=4)
    assert first == {"step": 4, "stopped_early": "stopped after 4 steps as asked"}
    loop.run(config, resumed, quiet=True)

    a, _ = params_export.load_params(straight / "params")
    b, _ = params_export.load_params(resumed / "params")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise on CPU
    by_step = lambda rs: {r["step"]: r for r in rs if not r.get("final")}  # noqa: E731
    sa, sb = by_step(records(straight)), by_step(records(resumed))
    for step in (5, 6):
        assert sa[step]["loss"] == sb[step]["loss"] and sa[step]["grad_norm"] == sb[step]["grad_norm"]
    assert records(straight)[-1]["eval_loss"] == records(resumed)[-1]["eval_loss"]


@pytest.mark.slow
def test_sigterm_saves_at_the_next_step_and_exits_zero(tmp_path):
    env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
    args = [sys.executable, "-m", "llada_jax.cli", "train", f"--config={TINY}", f"--workdir={tmp_path}",
            *[f"--config.{o}" for o in SMALL_MODEL + list(QUIET)], "--config.train.steps=100000",
            "--config.checkpoint.every_steps=0"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.time() + 300
    while not ((tmp_path / "metrics.jsonl").exists() and (tmp_path / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "training never started"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "received SIGTERM" in out
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and 2 <= steps[0] < 100000


def _save_on_mesh(tmp_path, config, mesh):
    trainer = Trainer(config, mesh)
    state = trainer.init_state()
    ckpt = run_checkpointer.RunCheckpointer(tmp_path, config, mesh=mesh)
    ckpt.save(3, state, {"step": 3})
    ckpt.close()
    return jax.device_get(state.params)


@pytest.mark.parametrize("target_mesh", [{"data": 1, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": 4, "tensor": 2}])
def test_restore_reshards_onto_another_mesh(tmp_path, target_mesh):
    written = _save_on_mesh(tmp_path, small_config(*QUIET, "mesh.fsdp=8"), sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1}))
    devices = jax.devices()[:1] if target_mesh["fsdp"] == 1 else None
    mesh = sharding.make_mesh(target_mesh, devices)
    config = small_config(*QUIET, *[f"mesh.{k}={v}" for k, v in target_mesh.items()])
    trainer = Trainer(config, mesh)
    ckpt = run_checkpointer.RunCheckpointer(tmp_path, config, mesh=mesh)
    state, meta = ckpt.restore(trainer.sharded_abstract_state())
    ckpt.close()
    assert int(state.step) == 3 and meta["data"] == {"step": 3}
    q = state.params["blocks"]["q_proj"]
    assert q.sharding == trainer.state_shardings.params["blocks"]["q_proj"]
    assert {s.data.shape for s in q.addressable_shards} == ({(2, 32, 4, 8)} if devices else {(2, 8, 2, 8)})
    for x, y in zip(jax.tree.leaves(written), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(x, np.asarray(y))


def test_init_from_starts_at_step_zero_from_given_params(trained_run, tmp_path):
    pre, _ = params_export.load_params(trained_run / "params")
    tuned = small_config(*QUIET, "train.steps=1", "optimizer.lr=1e-12", f"train.init_from={trained_run / 'params'}")
    loop.run(tuned, tmp_path / "sft", quiet=True)
    post, _ = params_export.load_params(tmp_path / "sft" / "params")
    for x, y in zip(jax.tree.leaves(pre), jax.tree.leaves(post)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-7)
    assert [r["step"] for r in records(tmp_path / "sft") if not r.get("final")] == [1]


def test_init_from_with_another_model_shape_names_both_values(trained_run, tmp_path):
    other = small_config(*QUIET, "model.d_model=64", f"train.init_from={trained_run}")
    with pytest.raises(ConfigError, match="model.d_model=32 but the config has model.d_model=64"):
        loop.run(other, tmp_path / "other", quiet=True)


def test_resuming_with_another_model_shape_names_both_values(trained_run):
    with pytest.raises(ConfigError, match="model.n_layers=2 but the config has model.n_layers=3"):
        loop.run(small_config(*QUIET, "model.n_layers=3"), trained_run, quiet=True)


def test_workdir_with_foreign_files_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="not llada_jax checkpoints"):
        loop.run(small_config(*QUIET), tmp_path, quiet=True)


def test_half_written_checkpoint_never_replaces_the_good_one(tmp_path):
    config = small_config(*QUIET, "train.steps=4", "checkpoint.every_steps=2")
    loop.run(config, tmp_path, quiet=True, stop_after=2)
    # a crash in the middle of writing step 4 leaves only orbax's temporary folder behind
    crashed = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
    (crashed / "params").mkdir(parents=True)
    (crashed / "params" / "garbage").write_bytes(b"\0" * 10)
    summary = loop.run(config, tmp_path, quiet=True)
    assert summary["step"] == 4
    assert [r["step"] for r in records(tmp_path) if not r.get("final")] == [1, 2, 3, 4]  # resumed from 2


def test_non_finite_updates_are_skipped_then_halt(tmp_path):
    config = small_config(*QUIET)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    trainer = Trainer(config, mesh)
    good = trainer.init_state()
    bad_params = dict(jax.device_get(good.params), ln_f=np.full((32,), np.nan, np.float32))
    params_export.save_params(tmp_path / "nan", bad_params, config)

    state = trainer.state_from_params(params_export.load_params(tmp_path / "nan", mesh)[0])
    tokens = np.full((8, 16), 5, np.int32)
    new, metrics = trainer.step(state, sharding.global_batch({"tokens": tokens}, mesh))
    assert int(metrics["skipped"]) == 1 and int(new.step) == 1
    np.testing.assert_array_equal(np.asarray(new.params["wte"]), np.asarray(bad_params["wte"]))

    halting = small_config(*QUIET, "train.max_nonfinite_in_a_row=2", f"train.init_from={tmp_path / 'nan'}")
    with pytest.raises(FloatingPointError, match="3 steps in a row had a non-finite loss"):
        loop.run(halting, tmp_path / "run", quiet=True)


def test_tensorboard_events_hold_the_logged_loss(tmp_path):
    """Read back with TensorBoard's own loader, as its scalars dashboard does (and no TensorFlow is imported)."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    loop.run(small_config("train.steps=2", "train.eval_batches=1"), tmp_path, quiet=True)
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    seen = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    logged = {r["step"]: r["loss"] for r in records(tmp_path) if not r.get("final")}
    assert seen[("loss", 2)] == pytest.approx(logged[2])
    assert ("checkpoint_block_s", 2) in seen and ("lr", 1) in seen


def test_params_export_is_swapped_in_only_when_complete(tmp_path):
    config = small_config(*QUIET)
    first = {"w": np.ones((4,), np.float32)}
    params_export.save_params(tmp_path / "export", first, config)
    # a crash in the middle of a later export leaves only its staging folder; the good export is untouched
    (tmp_path / "export.incomplete" / "params").mkdir(parents=True)
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "params"]
    params_export.save_params(tmp_path / "export", {"w": np.zeros((4,), np.float32)}, config, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with pytest.raises(ConfigError, match="is not empty"):
        params_export.save_params(tmp_path / "export", first, config)


def test_relative_workdir_as_in_the_readme(tmp_path, monkeypatch):
    """`llada-jax train --workdir=runs/demo`: Orbax wants absolute paths, so relative ones are resolved."""
    monkeypatch.chdir(tmp_path)
    config = small_config(*QUIET, "train.steps=2", "checkpoint.every_steps=1")
    loop.run(config, "runs/demo", quiet=True, stop_after=1)
    loop.run(config, "runs/demo", quiet=True)
    params, saved = params_export.load_params("runs/demo")
    assert saved.train.steps == 2 and (tmp_path / "runs" / "demo" / "params" / "config.json").exists()
    assert params_export.load_params("runs/demo/params")[0]["wte"].shape == params["wte"].shape


def test_log_eval_and_checkpoint_cadences_are_independent(tmp_path):
    """eval_every=3 with log_every=2 used to give no mid-run eval (eval ran only inside the logging block)."""
    config = small_config(*QUIET, "train.steps=6", "train.log_every=2", "train.eval_every=3",
                          "checkpoint.every_steps=5", "checkpoint.keep_last=0")
    loop.run(config, tmp_path, quiet=True)
    rs = [r for r in records(tmp_path) if not r.get("final")]
    assert [r["step"] for r in rs if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in rs if "eval_loss" in r] == [3]  # the last step's eval is the final record's
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [5, 6]


def _python(code: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


STUCK_SAVE = """
import sys, time
import orbax.checkpoint as ocp
sys.path.insert(0, "tests")
from helpers import small_config
from llada_jax.training import loop
ocp.CheckpointManager.save = lambda *a, **k: time.sleep(600)  # a barrier waiting for a host that never comes
loop.run(small_config("checkpoint.tensorboard=False", "train.eval_batches=1", "checkpoint.every_steps=1",
                      "checkpoint.timeout_s=3"), sys.argv[1], quiet=True)
"""


@pytest.mark.slow
def test_a_stuck_save_ends_the_run_with_one_sentence(tmp_path):
    proc = _python(STUCK_SAVE, str(tmp_path))
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("the checkpoint save of step 1 did not finish within checkpoint.timeout_s=3 s")
    assert "rerun to resume" in last


STUCK_LOOP = """
import sys, threading
from llada_jax.training.preemption import PreemptionWatcher
watcher = PreemptionWatcher(grace_s=float(sys.argv[1]))
print("ready", flush=True)
threading.Event().wait()  # stands for a collective whose peer never arrives: no step boundary ever comes
"""


@pytest.mark.parametrize("grace_s, signals", [(2.0, 1), (600.0, 2)])
def test_sigterm_ends_a_process_that_never_reaches_a_step_boundary(grace_s, signals):
    """One SIGTERM ends it after the grace period; a second one ends it at once."""
    proc = _python(STUCK_LOOP, str(grace_s))
    assert proc.stdout.readline().strip() == "ready"
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("SIGTERM did not end the process")
    assert proc.returncode == 128 + signal.SIGTERM
    assert len(err.strip().splitlines()) == 1 and "rerun to resume" in err
