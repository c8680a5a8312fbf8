"""The jitted train step: schedule, accumulation, and identical results on 1 device and on an fsdp x tensor mesh."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import sharding
from llada_jax.train import Trainer, lr_schedule

from helpers import small_config


def random_batch(config, seed=0):
    t = config.train
    rng = np.random.default_rng(seed)
    return {"tokens": rng.integers(3, 259, size=(t.global_batch_size, t.seq_len)).astype(np.int32)}


def run_steps(config, mesh, n_steps=2):
    trainer = Trainer(config, mesh)
    state = trainer.init_state()
    losses = []
    for i in range(n_steps):
        state, metrics = trainer.step(state, sharding.global_batch(random_batch(config, i), mesh))
        losses.append(float(metrics["loss"]))
    return trainer, state, losses


def one_device_mesh():
    return sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


def test_wsd_schedule_matches_the_paper_shape():
    cfg = small_config("optimizer.lr=4e-4", "optimizer.warmup_steps=20", f"optimizer.wsd_drop_at={1.2 / 2.3}",
                       f"optimizer.wsd_decay_from={2.0 / 2.3}", "optimizer.wsd_drop_ratio=0.25",
                       "optimizer.final_ratio=0.025").optimizer
    s = lr_schedule(cfg, 230)  # 230 steps standing for 2.3T tokens: drop at 120, decay from 200
    assert float(s(0)) == 0.0
    np.testing.assert_allclose(float(s(10)), 2e-4, rtol=1e-6)  # linear warmup
    np.testing.assert_allclose(float(s(20)), 4e-4, rtol=1e-6)
    np.testing.assert_allclose(float(s(119)), 4e-4, rtol=1e-6)  # stable
    np.testing.assert_allclose(float(s(120)), 1e-4, rtol=1e-6)  # dropped to 1e-4
    np.testing.assert_allclose(float(s(199)), 1e-4, rtol=1e-6)
    np.testing.assert_allclose(float(s(215)), 1e-4 + 0.5 * (1e-5 - 1e-4), rtol=1e-5)  # linear decay
    np.testing.assert_allclose(float(s(230)), 1e-5, rtol=1e-5)


def test_cosine_and_constant_schedules():
    cos = lr_schedule(small_config("optimizer.schedule=cosine", "optimizer.warmup_steps=10",
                                   "optimizer.final_ratio=0.1", "optimizer.lr=1.0").optimizer, 110)
    np.testing.assert_allclose([float(cos(10)), float(cos(60)), float(cos(110))], [1.0, 0.55, 0.1], rtol=1e-5)
    const = lr_schedule(small_config("optimizer.schedule=constant", "optimizer.warmup_steps=0",
                                     "optimizer.lr=0.5").optimizer, 10)
    assert float(const(0)) == float(const(9)) == 0.5


def test_params_are_created_sharded_over_fsdp_and_tensor():
    config = small_config("mesh.fsdp=4", "mesh.tensor=2")
    mesh = sharding.make_mesh(config.mesh)
    state = Trainer(config, mesh).init_state()
    q = state.params["blocks"]["q_proj"]  # [layers, embed, heads, head_dim] -> embed/4, heads/2
    assert q.shape == (2, 32, 4, 8)
    assert {s.data.shape for s in q.addressable_shards} == {(2, 8, 2, 8)}
    assert {s.data.shape for s in state.params["wte"].addressable_shards} == {(160, 8)}  # vocab/2, embed/4
    mu = state.opt_state[1][0].mu["blocks"]["ff_proj"]  # optimizer moments sharded like their params
    assert {s.data.shape for s in mu.addressable_shards} == {(2, 8, 32)}


def test_sharded_step_equals_single_device_step():
    config = small_config("mesh.fsdp=4", "mesh.tensor=2", "train.random_length_fraction=0.5")
    _, s8, l8 = run_steps(config, sharding.make_mesh(config.mesh))
    config1 = small_config("train.random_length_fraction=0.5")
    _, s1, l1 = run_steps(config1, one_device_mesh())
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_matches_one_big_batch():
    """Same masks need the same keys per row, so compare the accumulated step against micro-steps done by hand:
    here we check the weaker, key-independent property that with masking disabled in effect (AR objective)
    4 micro-batches give the full-batch loss and update."""
    base = ("model.causal=True", "train.objective=ar", "train.random_length_fraction=0.0")
    _, s_full, l_full = run_steps(small_config(*base), one_device_mesh(), 1)
    _, s_acc, l_acc = run_steps(small_config(*base, "train.grad_accum_steps=4"), one_device_mesh(), 1)
    np.testing.assert_allclose(l_acc, l_full, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s_acc.params), jax.tree.leaves(s_full.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_training_reduces_fixed_noise_loss_on_a_repeated_batch():
    """Single-step MDM losses are noisy (random t, 1/p weights); the eval loss uses fixed noise levels."""
    config = small_config("train.steps=30", "optimizer.lr=3e-3", "train.random_length_fraction=0.0")
    trainer = Trainer(config, one_device_mesh())
    state = trainer.init_state()
    t = config.train  # periodic rows: every masked token is predictable from its neighbours
    local = {"tokens": ((np.arange(t.seq_len)[None] + np.arange(t.global_batch_size)[:, None]) % 5 + 3).astype(np.int32)}
    before = trainer.evaluate(state.params, [local])
    batch = sharding.global_batch(local, trainer.mesh)
    for _ in range(30):
        state, metrics = trainer.step(state, batch)
    assert trainer.evaluate(state.params, [local]) < 0.5 * before
    assert int(state.step) == 30 and np.isfinite(float(metrics["grad_norm"]))


def test_norm_weights_are_not_decayed():
    config = small_config("optimizer.lr=1e-3", "optimizer.weight_decay=0.5", "train.steps=2")
    trainer = Trainer(config, one_device_mesh())
    state = trainer.init_state()
    # zero gradients except through decay: a step on a batch scaled by nothing still decays matrices
    zero = jax.tree.map(jnp.zeros_like, state.params)
    updates, _ = trainer.tx.update(zero, state.opt_state, state.params)
    assert float(jnp.abs(updates["ln_f"]).max()) == 0.0
    assert float(jnp.abs(updates["blocks"]["attn_norm"]).max()) == 0.0
    assert float(jnp.abs(updates["blocks"]["q_proj"]).max()) == 0.0  # lr is 0 at step 0 (warmup)


def test_eval_is_deterministic():
    config = small_config()
    trainer = Trainer(config, one_device_mesh())
    state = trainer.init_state()
    batches = [random_batch(config, 5)]
    assert trainer.evaluate(state.params, batches) == trainer.evaluate(state.params, batches)
