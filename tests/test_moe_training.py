"""Training a mixture of experts: expert parallelism over 8 simulated devices gives the 1-device loss and gradients,
gradient accumulation stays exact with the router losses on, the expert bias moves by load alone (never by
AdamW), and the router losses reach the loss of every objective."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import small_moe_config
from llada_jax import sharding
from llada_jax.config import ModelConfig
from llada_jax.models import registry as model_lib
from llada_jax.training import step as step_lib
from llada_jax.training.trainer import Trainer

COEFS = ("model.moe.load_balance_coef=0.01", "model.moe.z_loss_coef=0.001")


def random_batch(config, seed=0):
    t = config.train
    tokens = np.random.default_rng(seed).integers(0, 250, (t.global_batch_size, t.seq_len)).astype(np.int32)
    return {"tokens": tokens}


def start_params(config):
    """Fresh params with a non-zero expert bias (so the bias path is exercised)."""
    params = model_lib.init_params(ModelConfig.from_config(config.model), 0)
    bias = params["moe_blocks"]["expert_bias"]
    params["moe_blocks"]["expert_bias"] = jax.random.normal(jax.random.key(7), bias.shape) * 0.01
    return params


def gradients_on(config, mesh_shape, devices, params, batch):
    """(aux sums, gradients) of one accumulated step on a mesh of `devices` shaped `mesh_shape`."""
    config = config.copy_and_resolve_references()
    config.mesh.update(mesh_shape)
    mesh = sharding.make_mesh(config.mesh, devices)
    trainer = Trainer(config, mesh)
    key = jax.random.key(3)
    fn = jax.jit(lambda p, b: step_lib.accumulate_gradients(trainer.graphdef, config, p, b, key),
                 in_shardings=(trainer.state_shardings.params, sharding.batch_sharding(mesh)))
    with jax.set_mesh(mesh):
        grads, aux = fn(params, sharding.global_batch(batch, mesh))
    return jax.device_get(aux), jax.device_get(grads)


@pytest.mark.slow
def test_expert_parallelism_over_8_devices_gives_the_loss_and_gradients_of_one_device():
    config = small_moe_config(*COEFS)
    params, batch = start_params(config), random_batch(config)
    one = {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}
    want_aux, want = gradients_on(config, one, jax.devices()[:1], params, batch)
    for shape in ({"data": 1, "fsdp": 2, "expert": 4, "tensor": 1}, {"data": 1, "fsdp": 2, "expert": 2, "tensor": 2}):
        aux, got = gradients_on(config, shape, jax.devices(), params, batch)
        for name in ("loss_sum", "penalty_sum", "router_balance_sum", "router_z_sum", "masked_tokens"):
            np.testing.assert_allclose(aux[name], want_aux[name], rtol=1e-5, err_msg=f"{name} on {shape}")
        np.testing.assert_array_equal(aux["expert_load"], want_aux["expert_load"])
        for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, atol=2e-6, rtol=1e-4, err_msg=f"{jax.tree_util.keystr(path)} on {shape}")
    assert not np.any(want["moe_blocks"]["expert_bias"])  # no gradient reaches the bias


def test_gradient_accumulation_stays_exact_with_the_router_losses():
    """4 micro-batches give the whole batch's loss, router penalty, loads and gradients. The AR objective draws no
    noise, so both runs see the same inputs (as the dense model's accumulation test does); the balancing loss is
    a mean over rows, which adds up over micro-batches exactly."""
    base = (*COEFS, "model.causal=True", "train.objective=ar", "train.random_length_fraction=0.0")
    params, batch = start_params(small_moe_config(*base)), random_batch(small_moe_config(*base), seed=1)
    one = {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}
    want_aux, want = gradients_on(small_moe_config(*base), one, jax.devices()[:1], params, batch)
    aux, got = gradients_on(small_moe_config(*base, "train.grad_accum_steps=4"), one, jax.devices()[:1], params, batch)
    assert want_aux["penalty_sum"] > 0
    for name in ("loss_sum", "loss_weight", "penalty_sum", "router_balance_sum", "router_z_sum"):
        np.testing.assert_allclose(aux[name], want_aux[name], rtol=1e-5, err_msg=name)
    np.testing.assert_array_equal(aux["expert_load"], want_aux["expert_load"])
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-4)


def one_step(config, params):
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "expert": 1, "tensor": 1}, jax.devices()[:1])
    trainer = Trainer(config, mesh)
    state = trainer.state_from_params(params)
    batch = sharding.global_batch(random_batch(config, seed=4), mesh)
    state, metrics = trainer.step(state, batch)
    return jax.device_get(state.params), jax.device_get(metrics)


def test_the_expert_bias_moves_by_load_alone_and_never_by_adamw():
    """After one step at a large learning rate every bias moved by exactly the update rate (or not at all, at the
    mean load): any AdamW update or weight decay on it would show; the most loaded expert's went down."""
    config = small_moe_config("optimizer.lr=1e-2", "optimizer.warmup_steps=0", "model.moe.bias_update_rate=0.25")
    params = model_lib.init_params(ModelConfig.from_config(config.model), 0)
    moved, metrics = one_step(config, params)
    assert np.any(moved["moe_blocks"]["router"] != params["moe_blocks"]["router"])  # AdamW did run
    delta = moved["moe_blocks"]["expert_bias"] - params["moe_blocks"]["expert_bias"]
    assert set(np.unique(delta)) <= {-0.25, 0.0, 0.25} and (delta < 0).any() and (delta > 0).any()
    ratio = metrics["moe_load_max_mean"]
    assert ratio.shape == (2,) and np.all(ratio > 1.0)
    assert metrics["moe_bias_min"] == -0.25 and metrics["moe_bias_max"] == 0.25
    for name in ("moe_balance_loss", "moe_z_loss", "moe_worst_load"):
        assert np.isfinite(metrics[name])
    assert "moe_dropped_fraction" not in metrics  # dropless: nothing to report


@pytest.mark.parametrize("objective", ["sft", "ar", "block_diffusion"])
def test_every_objective_gets_the_router_penalty(objective):
    """The penalty is added on top of each objective's own loss (block diffusion: both streams routed)."""
    from llada_jax.objectives.registry import compute_loss

    extra = {"ar": ("model.causal=True",), "block_diffusion": ("train.block_size=4",)}.get(objective, ())
    config = small_moe_config("model.moe.load_balance_coef=1.0", f"train.objective={objective}", *extra)
    trainer = Trainer(config, sharding.make_mesh({"data": 1, "fsdp": 1, "expert": 1, "tensor": 1},
                                                 jax.devices()[:1]))
    tokens = jnp.asarray(random_batch(config)["tokens"])
    batch = {"tokens": tokens}
    if objective == "sft":
        batch["prompt_mask"] = jnp.arange(tokens.shape[1])[None, :] < 4
        batch["response_mask"] = ~batch["prompt_mask"]
    params = start_params(config)
    total, aux = compute_loss(trainer.graphdef, config, params, batch, jax.random.key(0))
    assert float(aux["penalty_sum"]) > 0
    np.testing.assert_allclose(float(total) - float(aux["penalty_sum"]),
                               float(compute_loss(trainer.graphdef, small_moe_config(f"train.objective={objective}",
                                                                                      *extra),
                                                  params, batch, jax.random.key(0))[0]), rtol=1e-6)


def test_a_sweep_of_a_mixture_of_experts_spends_its_budgets_on_active_parameters(tmp_path):
    """`sweep plan` on an MoE base config: each run keeps the experts and its steps spend the budget as counted by
    the active parameters (the dense count would plan far fewer steps)."""
    import ml_collections

    from llada_jax.config import load_config
    from llada_jax.models import flops
    from llada_jax.scaling import sweep

    from helpers import ROOT

    config = load_config(f"{ROOT}/configs/tiny_moe.py", ["model.moe.experts=32", "model.moe.n_groups=1",
                                                         "model.moe.topk_groups=1", "train.seq_len=64"])
    config.sweep = ml_collections.ConfigDict(dict(budgets=(3e12,), depths=(2, 3), aspect=64, head_dim=32,
                                                  objectives=("mdm",), min_steps=10))
    runs, _ = sweep.plan(config, tmp_path)
    assert len(runs) == 2
    for run in runs:
        run_cfg = load_config(str(tmp_path / "runs" / run.name / "config.json"))
        model = ModelConfig.from_config(run_cfg.model)
        assert model.family == "llada2_moe" and model.moe.experts == 32 and model.d_model == run.d_model
        spent = run.steps * run_cfg.train.global_batch_size * 64 * flops.flops_per_token(model, 64)
        assert abs(spent - 3e12) <= 0.01 * 3e12
        assert flops.param_counts(model)["total"] > 3 * flops.param_counts(model)["matmul"]
