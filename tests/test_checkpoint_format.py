"""Checkpoints written by earlier code keep restoring: a params export and a run checkpoint made by main at
1460ba5 (tests/fixtures/checkpoint_format_v1, before the layout moved) give the same logits and resume."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import sharding
from llada_jax.checkpoints import locate, params_export
from llada_jax.checkpoints.run_checkpointer import RunCheckpointer
from llada_jax.models import registry as M
from llada_jax.training.trainer import Trainer

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "checkpoint_format_v1")


def expected():
    with open(os.path.join(FIXTURE, "expected.json")) as f:
        return json.load(f)


def one_device_mesh():
    return sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


def test_a_params_export_from_the_old_layout_gives_the_same_logits():
    graphdef, params, config = params_export.load_model(os.path.join(FIXTURE, "params"))
    want = expected()
    logits = np.asarray(M.apply(graphdef, params, jnp.asarray(want["tokens"], jnp.int32)))
    np.testing.assert_allclose(logits, np.asarray(want["logits"]), rtol=0, atol=1e-5)


def test_a_run_checkpoint_from_the_old_layout_restores_verified_and_trains_on(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    config = locate.read_config(run / "checkpoints" / "1")
    mesh = one_device_mesh()
    trainer = Trainer(config, mesh)
    ckpt = RunCheckpointer(run, config, mesh=mesh)
    said = []
    try:
        state, meta = ckpt.restore_newest_good(trainer.sharded_abstract_state(), said.append)
    finally:
        ckpt.close()
    assert said == [] and int(state.step) == 1 and meta["data"] == {"fixture": True}
    exported, _ = params_export.load_params(run / "params")
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(exported)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    batch = {"tokens": np.random.RandomState(0).randint(0, 60, (2, 8)).astype(np.int32)}
    state, metrics = trainer.step(state, sharding.global_batch(batch, mesh))
    assert int(state.step) == 2 and np.isfinite(float(metrics["loss"]))
