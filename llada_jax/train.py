"""TrainState, the learning-rate schedule, and the jitted masked-diffusion train step.

One `jax.jit` with explicit in/out shardings and a donated state does the whole step: mask, forward,
loss, gradients (accumulated over micro-batches with lax.scan), clipping and AdamW. The same function runs
on one CPU device and on a pod slice; only the mesh differs. The loop that feeds it lives in loop.py.
"""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from llada_jax import diffusion, sharding
from llada_jax import model as model_lib
from llada_jax.config import ModelConfig


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def lr_schedule(opt_cfg, total_steps: int):
    """Warmup then wsd (LLaDA's warmup-stable-decay), cosine or constant, as an optax schedule."""
    peak, warmup = opt_cfg.lr, int(opt_cfg.warmup_steps)
    final = peak * opt_cfg.final_ratio
    if opt_cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif opt_cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, max(total_steps - warmup, 1), alpha=opt_cfg.final_ratio)
    else:
        drop = int(round(opt_cfg.wsd_drop_at * total_steps))
        decay_from = int(round(opt_cfg.wsd_decay_from * total_steps))
        drop_lr = peak * opt_cfg.wsd_drop_ratio

        def after(count):  # count: steps since the end of warmup
            s = count + warmup
            decay_len = max(total_steps - decay_from, 1)
            frac = jnp.clip((s - decay_from) / decay_len, 0.0, 1.0)
            return jnp.where(s < drop, peak, jnp.where(s < decay_from, drop_lr, drop_lr + frac * (final - drop_lr)))

    if warmup == 0:
        return after
    # Linear warmup from 0 at step 0, reaching the peak at step `warmup`.
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(opt_cfg, total_steps: int):
    schedule = lr_schedule(opt_cfg, total_steps)
    chain = []
    if opt_cfg.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(opt_cfg.grad_clip))
    chain.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                             weight_decay=opt_cfg.weight_decay, mask=_decay_mask))
    return optax.chain(*chain), schedule


def _decay_mask(params):
    """Weight decay on projection and embedding matrices; RMSNorm weights are exempt."""
    def decays(path, _):
        name = getattr(path[-1], "key", "")
        return not (name.endswith("_norm") or name == "ln_f")
    return jax.tree_util.tree_map_with_path(decays, params)


def compute_loss(graphdef, config, params, batch, key):
    """Loss and metric sums for one (micro-)batch. The objective picks the noising and the loss."""
    t = config.train
    m = config.model
    tokens = batch["tokens"]
    b, seq = tokens.shape
    key_len, key_mask = jax.random.split(key)
    segment_ids = batch.get("segment_ids")
    if "lengths" in batch:  # eval passes explicit lengths; training draws the random-length crop
        lengths = batch["lengths"]
    elif t.random_length_fraction > 0 and t.objective != "sft":
        lengths = diffusion.random_lengths(key_len, b, seq, t.random_length_fraction)
    else:
        lengths = jnp.full((b,), seq)
    valid = jnp.arange(seq)[None, :] < lengths[:, None]
    if segment_ids is None:
        segment_ids = valid.astype(jnp.int32)  # 0 marks padding: it attends only to itself
    else:  # packed rows: segment 0 is padding, never masked or scored
        valid = valid & (segment_ids > 0)
        segment_ids = jnp.where(valid, segment_ids, 0)

    if t.objective == "ar":
        logits = model_lib.apply_head(graphdef, params, tokens, segment_ids=segment_ids)
        return diffusion.ar_loss(logits, tokens, valid)

    maskable = valid
    if t.objective == "sft":
        maskable = valid & ~batch["prompt_mask"]
    noisy, masked, p = diffusion.forward_process(key_mask, tokens, m.mask_token_id, t.mask_eps, maskable,
                                                 t=batch.get("t"))
    logits = model_lib.apply_head(graphdef, params, noisy, segment_ids=segment_ids,
                                  lengths=None if "segment_ids" in batch else lengths)
    if t.objective == "sft":
        return diffusion.sft_loss(logits, tokens, masked, p, valid & ~batch["prompt_mask"])
    return diffusion.pretrain_loss(logits, tokens, masked, p, lengths)


def step_key(seed: int, step) -> jax.Array:
    """The step's randomness depends only on (seed, step): a resumed run draws what an uninterrupted one would."""
    return jax.random.fold_in(jax.random.key(seed), step)


def train_step(graphdef, config, tx, state: TrainState, batch):
    """One optimizer step over `grad_accum_steps` equal micro-batches."""
    n_micro = config.train.grad_accum_steps
    key = step_key(config.train.seed, state.step)
    grad_fn = jax.value_and_grad(lambda p, mb, k: compute_loss(graphdef, config, p, mb, k), has_aux=True)

    def micro(carry, xs):
        grads_sum, loss_sum, aux_sum = carry
        mb, i = xs
        (loss, aux), grads = grad_fn(state.params, mb, jax.random.fold_in(key, i))
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        aux_sum = jax.tree.map(jnp.add, aux_sum, aux)
        return (grads_sum, loss_sum + loss, aux_sum), None

    micro_batches = jax.tree.map(lambda x: x.reshape((n_micro, x.shape[0] // n_micro) + x.shape[1:]), batch)
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    aux0 = {k: jnp.zeros((), jnp.float32) for k in ("masked_correct", "masked_tokens", "masked_ce_sum")}
    if n_micro == 1:
        (grads, loss, aux), _ = micro((zeros, 0.0, aux0), (jax.tree.map(lambda x: x[0], micro_batches), 0))
    else:
        (grads, loss, aux), _ = jax.lax.scan(micro, (zeros, 0.0, aux0), (micro_batches, jnp.arange(n_micro)))
    grads = jax.tree.map(lambda g: g / n_micro, grads)
    loss = loss / n_micro

    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
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
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def all_finite(tree) -> jax.Array:
    """True when every float in the tree is finite (a scalar; integers such as optimizer counts pass)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.stack(leaves).all() if leaves else jnp.asarray(True)


def eval_step(graphdef, config, params, batch, draw=0, draws=1):
    """Loss with fixed noise, so curves are comparable across a run and across runs: draw k of `draws` uses
    t_i = (i + (k + 0.5) / draws) / B over the B rows (stratified) and a key fixed by k."""
    b = batch["tokens"].shape[0]
    batch = dict(batch)
    batch.setdefault("lengths", jnp.full((b,), batch["tokens"].shape[1]))
    batch.setdefault("t", (jnp.arange(b) + (draw + 0.5) / draws) / b)
    loss, aux = compute_loss(graphdef, config, params, batch, jax.random.fold_in(jax.random.key(12345), draw))
    return {"loss": loss, **aux}


class Trainer:
    """Builds the sharded state and the compiled step for a config on a mesh."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        self.model_cfg = ModelConfig.from_config(config.model)
        self.graphdef, abstract_params, self.param_names = model_lib.split_model(
            model_lib.abstract_model(self.model_cfg))
        self.tx, self.schedule = make_optimizer(config.optimizer, config.train.steps)
        param_sh = sharding.tree_shardings(mesh, self.param_names, abstract_params)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
        opt_sh = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, param_sh,
            transform_non_params=lambda _: sharding.replicated(mesh),
        )
        self.state_shardings = TrainState(step=sharding.replicated(mesh), params=param_sh, opt_state=opt_sh)
        self.abstract_state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                                         opt_state=abstract_opt)
        batch_sh = sharding.batch_sharding(mesh)
        rep = sharding.replicated(mesh)
        self._step = jax.jit(
            lambda state, batch: train_step(self.graphdef, config, self.tx, state, batch),
            in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(self.state_shardings, rep),
            donate_argnums=0,
        )
        self._eval = jax.jit(lambda params, batch, draw, draws: eval_step(self.graphdef, config, params, batch, draw, draws),
                             in_shardings=(param_sh, batch_sh, None), out_shardings=rep, static_argnums=3)

    def sharded_abstract_state(self) -> TrainState:
        """The state's shapes with this mesh's shardings: the restore target (resharding on the fly)."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    def state_from_params(self, params) -> TrainState:
        """Step 0 with fresh optimizer state around given params (SFT or a new run from a checkpoint)."""
        with jax.set_mesh(self.mesh):
            return jax.jit(
                lambda p: TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=self.tx.init(p)),
                in_shardings=(self.state_shardings.params,), out_shardings=self.state_shardings,
            )(params)

    def init_state(self) -> TrainState:
        """Params and optimizer state created directly in their shards (never whole on one device)."""
        cfg, seed = self.model_cfg, self.config.train.seed

        def init():
            params = model_lib.split_model(model_lib.Transformer(cfg, nnx.Rngs(params=seed)))[1]
            return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=self.tx.init(params))

        with jax.set_mesh(self.mesh):
            return jax.jit(init, out_shardings=self.state_shardings)()

    def compile_step(self):
        """Ahead-of-time compile for abstract inputs: the pre-flight check reads its memory analysis."""
        t = self.config.train
        batch = {"tokens": jax.ShapeDtypeStruct((t.global_batch_size, t.seq_len), jnp.int32,
                                                sharding=sharding.batch_sharding(self.mesh))}
        with jax.set_mesh(self.mesh):
            return self._step.lower(self.sharded_abstract_state(), batch).compile()

    def step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
        with jax.set_mesh(self.mesh):
            return self._step(state, batch)

    def eval_losses(self, params, batches, draws: int = 1) -> list[float]:
        """Loss of every (held-out batch, noise draw) pair: nats/token (the ELBO bound for MDM, NLL for AR)."""
        with jax.set_mesh(self.mesh):
            arrays = [sharding.global_batch(b, self.mesh) for b in batches]
            losses = [self._eval(params, a, d, draws)["loss"] for a in arrays for d in range(draws)]
        return [float(x) for x in jax.device_get(losses)]

    def evaluate(self, params, batches) -> float:
        """Mean eval loss over fixed held-out batches (one fixed noise draw each)."""
        return float(np.mean(self.eval_losses(params, batches))) if batches else math.nan
