"""LLaDA2.0's Gaussian noise on mask-token embeddings (train.mask_embedding_noise): drawn only where an input is the
mask id, scaled per row, falling linearly to 0 over train.mask_embedding_noise_steps, present in training steps of
every diffusion objective, absent from eval and from the AR baseline; bad settings are one sentence; `llada-jax
train` logs its level."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llada_jax.cli import main
from llada_jax.config import ConfigError, ModelConfig, validate
from llada_jax.models import registry as M
from llada_jax.objectives import masking
from llada_jax.objectives import registry as R
from llada_jax.training.optimizer import make_optimizer
from llada_jax.training.step import TrainState, eval_step, train_step

from helpers import SMALL_MODEL, TINY, small_config

F32 = "model.dtype=float32"


def model_and_params(config):
    cfg = ModelConfig.from_config(config.model)
    model = M.build(cfg, nnx.Rngs(0))
    return cfg, model, *M.split_model(model)[:2]


def test_noise_is_drawn_only_at_mask_tokens_with_each_rows_standard_deviation():
    config = small_config(F32)
    cfg, model, _, _ = model_and_params(config)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 250, (3, 16)).astype(np.int32)
    is_mask = rng.random((3, 16)) < 0.5
    tokens = jnp.asarray(np.where(is_mask, cfg.mask_token_id, tokens))
    key, std = jax.random.key(7), jnp.asarray([0.0, 2.0, 0.5])
    diff = np.asarray(model.embed(tokens, (key, std)) - model.embed(tokens))
    # the same draw computed here: one N(0, 1) per (row, position, dimension), scaled by the row's std, mask only
    want = np.asarray(jax.random.normal(key, (3, 16, cfg.d_model))) * np.asarray(std)[:, None, None] * is_mask[..., None]
    np.testing.assert_allclose(diff, want, rtol=1e-6, atol=1e-6)
    assert not diff[~is_mask].any() and not diff[0].any()
    assert 1.8 < diff[1][is_mask[1]].std() < 2.2  # 16 x ~8 masked positions x 32 dims of N(0, 4)


def test_noise_level_falls_linearly_to_zero_at_its_last_step():
    t = small_config("train.mask_embedding_noise=0.5", "train.mask_embedding_noise_steps=10").train
    assert [float(masking.mask_embedding_noise_at(t, s)) for s in (0, 5, 10, 20)] == [0.5, 0.25, 0.0, 0.0]
    whole_run = small_config("train.mask_embedding_noise=0.5").train
    assert float(masking.mask_embedding_noise_at(whole_run, 10**6)) == 0.5


@pytest.mark.parametrize("objective", [("train.objective=mdm",), ("train.objective=block_diffusion",
                                                                   "train.block_size=4",
                                                                   "train.complementary_masks=True")])
def test_train_step_noises_until_the_schedule_ends_and_eval_never(objective):
    """Same params, batch and step key: at step 0 the noised step's loss differs from the plain one; at the step
    the noise has fallen to 0 it equals it; the eval loss never sees the noise."""
    noisy = small_config(F32, *objective, "train.mask_embedding_noise=3.0", "train.mask_embedding_noise_steps=2")
    plain = small_config(F32, *objective)
    _, _, graphdef, params = model_and_params(plain)
    tx, schedule = make_optimizer(plain.optimizer, plain.train.steps)
    batch = {"tokens": jnp.asarray(np.random.default_rng(1).integers(3, 250, (8, 16)).astype(np.int32))}
    steps = {id(c): jax.jit(lambda s, b, c=c: train_step(graphdef, c, tx, schedule, s, b)) for c in (noisy, plain)}

    def loss_at(config, at):
        state = TrainState(step=jnp.asarray(at, jnp.int32), params=params, opt_state=tx.init(params))
        return jax.device_get(steps[id(config)](state, batch)[1])

    start_noisy, start_plain = loss_at(noisy, 0), loss_at(plain, 0)
    assert start_noisy["mask_noise_std"] == 3.0 and "mask_noise_std" not in start_plain
    assert abs(start_noisy["loss"] - start_plain["loss"]) > 1e-4
    end_noisy, end_plain = loss_at(noisy, 2), loss_at(plain, 2)
    assert end_noisy["mask_noise_std"] == 0.0
    np.testing.assert_allclose(end_noisy["loss"], end_plain["loss"], rtol=1e-6)
    np.testing.assert_allclose(eval_step(graphdef, noisy, params, batch)["loss"],
                               eval_step(graphdef, plain, params, batch)["loss"], rtol=1e-6)


def test_sft_rows_are_noised_through_the_batch_field():
    config = small_config(F32, "train.objective=sft")
    _, _, graphdef, params = model_and_params(config)
    rng = np.random.default_rng(2)
    batch = {"tokens": jnp.asarray(rng.integers(3, 250, (4, 16)).astype(np.int32)),
             "prompt_mask": jnp.asarray(np.arange(16)[None, :] < 4).repeat(4, 0),
             "segment_ids": jnp.ones((4, 16), jnp.int32), "t": jnp.full((4,), 0.9)}
    key = jax.random.key(3)
    losses = [float(R.compute_loss(graphdef, config, params, {**batch, **extra}, key)[0])
              for extra in ({}, {"mask_noise_std": jnp.zeros(4)}, {"mask_noise_std": jnp.full(4, 3.0)})]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6) and abs(losses[2] - losses[0]) > 1e-4


@pytest.mark.parametrize("setting, message", [
    ("train.mask_embedding_noise=-0.1", "train.mask_embedding_noise=-0.1 must be a finite standard deviation >= 0"),
    ("train.mask_embedding_noise_steps=-5", "train.mask_embedding_noise_steps=-5 must be >= 0"),
])
def test_bad_noise_settings_are_one_sentence(setting, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(small_config(setting))


def test_the_autoregressive_baseline_ignores_the_noise_like_a_comparisons_other_fields():
    """One set of overrides serves MDM, block diffusion and the AR baseline (sweeps, benchmarks/block_diffusion.py):
    AR inputs hold no mask tokens, so its step is the plain one and logs no noise level."""
    ar = ("train.objective=ar", "model.causal=True", F32)
    noisy = small_config(*ar, "train.mask_embedding_noise=3.0")
    validate(noisy)
    plain = small_config(*ar)
    _, _, graphdef, params = model_and_params(plain)
    tx, schedule = make_optimizer(plain.optimizer, plain.train.steps)
    state = TrainState(step=jnp.asarray(0, jnp.int32), params=params, opt_state=tx.init(params))
    batch = {"tokens": jnp.asarray(np.random.default_rng(1).integers(3, 250, (8, 16)).astype(np.int32))}
    got, want = (jax.jit(lambda s, b, c=c: train_step(graphdef, c, tx, schedule, s, b))(state, batch)[1]
                 for c in (noisy, plain))
    assert "mask_noise_std" not in got and float(got["loss"]) == float(want["loss"])


def test_train_command_logs_the_falling_noise_level(tmp_path, capsys):
    """On an fsdp x tensor mesh of 8 simulated devices."""
    overrides = [f"--config.{o}" for o in SMALL_MODEL]
    assert main(["train", f"--config={TINY}", f"--workdir={tmp_path}", *overrides, "--config.train.steps=4",
                 "--config.train.objective=block_diffusion", "--config.train.block_size=4",
                 "--config.train.mask_embedding_noise=0.8", "--config.train.mask_embedding_noise_steps=2",
                 "--config.checkpoint.tensorboard=False", "--config.train.eval_batches=1", "--config.mesh.fsdp=4",
                 "--config.mesh.tensor=2"]) == 0
    out = capsys.readouterr().out
    assert "| mask noise 0.800" in out and "| mask noise 0.000" in out
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    levels = [r["mask_noise_std"] for r in records if "loss" in r and not r.get("final")]
    assert levels == pytest.approx([0.8, 0.4, 0.0, 0.0])
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
