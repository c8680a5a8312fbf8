"""The jitted masked-diffusion train step and the eval step, as pure functions of (state, batch).

One step: the objective's loss (objectives/registry.py) and its gradients, accumulated over micro-batches
with lax.scan, then clipping and AdamW; non-finite updates are skipped. Trainer (trainer.py) jits it with
explicit shardings; the loop that feeds it is loop.py.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from llada_jax.config import ModelConfig
from llada_jax.models import registry as model_lib
from llada_jax.objectives import losses, masking, router_losses
from llada_jax.objectives.registry import compute_loss, get as get_objective


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def step_key(seed: int, step) -> jax.Array:
    """The step's randomness depends only on (seed, step): a resumed run draws what an uninterrupted one would."""
    return jax.random.fold_in(jax.random.key(seed), step)


def split_micro_batches(batch, n_micro: int):
    """[B, ...] -> [n_micro, B / n_micro, ...], micro-batch i holding rows i, i + n, i + 2n, ...

    Reshaping to (B / n, n) and swapping (not to (n, B / n)) keeps every micro-batch spread over all the
    devices that hold the batch, so the accumulation loop never moves activations between devices.
    """
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape((x.shape[0] // n_micro, n_micro) + x.shape[1:]), 0, 1), batch)


def updates_applied(opt_state) -> jax.Array:
    """How many updates the optimizer has applied (its schedule count): skipped steps do not advance it."""
    is_count = lambda x: isinstance(x, optax.ScaleByScheduleState)  # noqa: E731
    return next(x.count for x in jax.tree.leaves(opt_state, is_leaf=is_count) if is_count(x))


def accumulate_gradients(graphdef, config, params, batch, key):
    """(gradient of the batch's mean loss, metric sums) over `grad_accum_steps` micro-batches: loss sums and
    weights are added up and divided once, so the result equals the unaccumulated step's."""
    n_micro = config.train.grad_accum_steps
    grad_fn = jax.value_and_grad(lambda p, mb, k: compute_loss(graphdef, config, p, mb, k), has_aux=True)

    def micro(carry, xs):
        grads_sum, aux_sum = carry
        mb, i = xs
        (total, aux), grads = grad_fn(params, mb, jax.random.fold_in(key, i))
        aux = {**aux, "loss_sum": total}
        return (jax.tree.map(jnp.add, grads_sum, grads), jax.tree.map(jnp.add, aux_sum, aux)), None

    micro_batches = split_micro_batches(batch, n_micro)
    zeros = jax.tree.map(jnp.zeros_like, params)
    first = jax.tree.map(lambda x: x[0], micro_batches)
    aux_shapes = jax.eval_shape(lambda: compute_loss(graphdef, config, params, first, key)[1])  # all sums
    aux0 = {k: jnp.zeros(v.shape, v.dtype) for k, v in {**aux_shapes, "loss_sum": aux_shapes["loss_weight"]}.items()}
    if n_micro == 1:
        (grads, aux), _ = micro((zeros, aux0), (first, 0))
    else:
        (grads, aux), _ = jax.lax.scan(micro, (zeros, aux0), (micro_batches, jnp.arange(n_micro)))
    weight = jnp.maximum(aux["loss_weight"], 1.0)
    return jax.tree.map(lambda g: g / weight, grads), aux


def train_step(graphdef, config, tx, schedule, state: TrainState, batch):
    """One optimizer step over `grad_accum_steps` equal micro-batches."""
    key = step_key(config.train.seed, state.step)
    noise_std = None
    if config.train.get("mask_embedding_noise", 0.0) > 0 and get_objective(config.train.objective).masks_inputs:
        # a per-row field, so micro-batches split it like tokens
        noise_std = masking.mask_embedding_noise_at(config.train, state.step)
        batch = {**batch, "mask_noise_std": jnp.full(batch["tokens"].shape[:1], noise_std, jnp.float32)}
    grads, aux = accumulate_gradients(graphdef, config, state.params, batch, key)
    loss = losses.mean_loss(router_losses.objective_sum(aux), aux["loss_weight"])
    model_cfg = ModelConfig.from_config(config.model)

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = model_lib.update_expert_bias(model_cfg, params, aux.get("expert_load"))  # by load, not gradients
    # A non-finite loss, gradient, update or resulting param skips the update (params and optimizer moments
    # stay as they were); the loop counts skips and halts after too many in a row. Checking the params too
    # catches what a finite gradient can still produce (an overflowing learning rate or optimizer state).
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params) & all_finite(opt_state)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics = {
        "loss": loss,
        "skipped": 1 - finite.astype(jnp.int32),
        "grad_norm": grad_norm,
        "masked_accuracy": aux["masked_correct"] / jnp.maximum(aux["masked_tokens"], 1.0),
        "masked_tokens": aux["masked_tokens"],
        # the lr this step's update used (or would have): a skipped update leaves the schedule where it was
        "lr": schedule(updates_applied(state.opt_state)),
        **router_losses.router_metrics(aux, model_cfg),
        **model_lib.bias_range(model_cfg, params),
        **({} if noise_std is None else {"mask_noise_std": noise_std}),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def all_finite(tree) -> jax.Array:
    """True when every float in the tree is finite (a scalar; integers such as optimizer counts pass)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def eval_step(graphdef, config, params, batch, index=0, draw=0, draws=1):
    """Loss with fixed noise, so curves are comparable across a run and across runs: draw k of `draws` uses
    t_i = (i + (k + 0.5) / draws) / B over the B rows (stratified) and a key fixed by (batch index, k), so
    different eval batches get independent masks (their losses are averaged as independent samples)."""
    b = batch["tokens"].shape[0]
    batch = dict(batch)
    batch.setdefault("lengths", jnp.full((b,), batch["tokens"].shape[1]))
    batch.setdefault("t", (jnp.arange(b) + (draw + 0.5) / draws) / b)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(12345), index), draw)
    total, aux = compute_loss(graphdef, config, params, batch, key)
    aux = {**aux, "loss_sum": total}
    return {"loss": losses.mean_loss(router_losses.objective_sum(aux), aux["loss_weight"]), **aux}
