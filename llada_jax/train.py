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
    """The learning rate of update `count` (0-based): linear warmup, then wsd (LLaDA's warmup-stable-decay),
    cosine or constant.

    Endpoints are exact on purpose: update 0 uses lr / warmup (not 0, which would waste the first step) and
    the last update (count = total_steps - 1) uses the final lr.
    """
    peak, warmup = float(opt_cfg.lr), int(opt_cfg.warmup_steps)
    final = peak * opt_cfg.final_ratio
    last = total_steps - 1
    drop = int(round(opt_cfg.wsd_drop_at * total_steps))
    decay_from = int(round(opt_cfg.wsd_decay_from * total_steps))
    drop_lr = peak * opt_cfg.wsd_drop_ratio

    def after_warmup(s):
        if opt_cfg.schedule == "constant":
            return jnp.full_like(s, peak)
        if opt_cfg.schedule == "cosine":
            progress = jnp.clip((s - warmup) / max(last - warmup, 1), 0.0, 1.0)
            return final + (peak - final) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        frac = jnp.clip((s - decay_from) / max(last - decay_from, 1), 0.0, 1.0)
        return jnp.where(s < drop, peak, jnp.where(s < decay_from, drop_lr, drop_lr + frac * (final - drop_lr)))

    def schedule(count):
        s = jnp.asarray(count, jnp.float32)
        warming = peak * (s + 1.0) / max(warmup, 1)
        return jnp.where(s < warmup, warming, after_warmup(s))

    return schedule


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


def _valid_positions(config, batch, key):
    """(valid [B, T] bool, segment_ids [B, T]): which positions are real tokens, and the attention segments.

    Padding (segment 0) attends only to itself and is never masked or scored. SFT rows mark their own
    example (prompt, response, one EOS) with segment 1; every row is then widened to the micro-batch's longest
    example, so the EOS padding up to that length counts as response (LLaDA) while the rest is padding.
    """
    t = config.train
    tokens = batch["tokens"]
    b, seq = tokens.shape
    segment_ids = batch.get("segment_ids")
    if "lengths" in batch:  # eval passes explicit lengths; training draws the random-length crop
        lengths = batch["lengths"]
    elif t.random_length_fraction > 0 and t.objective != "sft":
        lengths = diffusion.random_lengths(key, b, seq, t.random_length_fraction)
    else:
        lengths = jnp.full((b,), seq)
    valid = jnp.arange(seq)[None, :] < lengths[:, None]
    if segment_ids is not None and t.objective == "sft":
        longest = jnp.max(jnp.sum(segment_ids > 0, axis=-1))
        segment_ids = jnp.broadcast_to(jnp.arange(seq)[None, :] < longest, (b, seq)).astype(jnp.int32)
    if segment_ids is None:
        return valid, valid.astype(jnp.int32)
    valid = valid & (segment_ids > 0)  # packed rows: segment 0 is padding
    return valid, jnp.where(valid, segment_ids, 0)


def compute_loss(graphdef, config, params, batch, key):
    """(loss sum, aux) for one (micro-)batch; aux["loss_weight"] is what the sum is divided by (summed over
    micro-batches first), the other aux entries are metric sums. The objective picks the noising and the loss."""
    t = config.train
    m = config.model
    tokens = batch["tokens"]
    key_len, key_mask = jax.random.split(key)
    valid, segment_ids = _valid_positions(config, batch, key_len)

    if t.objective == "ar":
        logits = model_lib.apply_head(graphdef, params, tokens, segment_ids=segment_ids)
        total, weight, aux = diffusion.ar_loss(logits, tokens, valid)
        return total, {**aux, "loss_weight": weight}

    maskable = valid
    if t.objective == "sft":
        maskable = valid & ~batch["prompt_mask"]
    noisy, masked, p = diffusion.forward_process(key_mask, tokens, m.mask_token_id, t.mask_eps, maskable,
                                                 t=batch.get("t"))
    # valid is a prefix of each row unless rows are packed documents: then attention may use lengths
    packed = "segment_ids" in batch and t.objective != "sft"
    logits = model_lib.apply_head(graphdef, params, noisy, segment_ids=segment_ids,
                                  lengths=None if packed else jnp.sum(valid, axis=-1))
    if t.objective == "sft":
        total, weight, aux = diffusion.sft_loss(logits, tokens, masked, p, maskable)
    else:  # normalised by each row's real tokens (first_fit rows end in padding)
        total, weight, aux = diffusion.pretrain_loss(logits, tokens, masked, p, jnp.sum(valid, axis=-1))
    return total, {**aux, "loss_weight": weight}


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
    names = ("masked_correct", "masked_tokens", "masked_ce_sum", "loss_weight", "loss_sum")
    aux0 = {k: jnp.zeros((), jnp.float32) for k in names}
    if n_micro == 1:
        (grads, aux), _ = micro((zeros, aux0), (jax.tree.map(lambda x: x[0], micro_batches), 0))
    else:
        (grads, aux), _ = jax.lax.scan(micro, (zeros, aux0), (micro_batches, jnp.arange(n_micro)))
    weight = jnp.maximum(aux["loss_weight"], 1.0)
    return jax.tree.map(lambda g: g / weight, grads), aux


def train_step(graphdef, config, tx, schedule, state: TrainState, batch):
    """One optimizer step over `grad_accum_steps` equal micro-batches."""
    key = step_key(config.train.seed, state.step)
    grads, aux = accumulate_gradients(graphdef, config, state.params, batch, key)
    loss = diffusion.mean_loss(aux["loss_sum"], aux["loss_weight"])

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
        # the lr this step's update used (or would have): a skipped update leaves the schedule where it was
        "lr": schedule(updates_applied(state.opt_state)),
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
    return {"loss": diffusion.mean_loss(total, aux["loss_weight"]), **aux}


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
            lambda state, batch: train_step(self.graphdef, config, self.tx, self.schedule, state, batch),
            in_shardings=(self.state_shardings, batch_sh),
            out_shardings=(self.state_shardings, rep),
            donate_argnums=0,
        )
        self._eval = jax.jit(
            lambda params, batch, index, draw, draws: eval_step(self.graphdef, config, params, batch, index, draw, draws),
            in_shardings=(param_sh, batch_sh, None, None), out_shardings=rep, static_argnums=4)

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
        rows = lambda dtype: jax.ShapeDtypeStruct((t.global_batch_size, t.seq_len), dtype,  # noqa: E731
                                                  sharding=sharding.batch_sharding(self.mesh))
        batch = {"tokens": rows(jnp.int32)}
        if t.objective == "sft":  # the fields SFT rows carry (data/sft.py)
            batch.update(prompt_mask=rows(jnp.bool_), segment_ids=rows(jnp.int32))
        with jax.set_mesh(self.mesh):
            return self._step.lower(self.sharded_abstract_state(), batch).compile()

    def step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
        with jax.set_mesh(self.mesh):
            return self._step(state, batch)

    def eval_losses(self, params, batches, draws: int = 1) -> list[float]:
        """Loss of every (held-out batch, noise draw) pair: nats/token (the ELBO bound for MDM, NLL for AR)."""
        with jax.set_mesh(self.mesh):
            arrays = [sharding.global_batch(b, self.mesh) for b in batches]
            losses = [self._eval(params, a, i, d, draws)["loss"] for i, a in enumerate(arrays) for d in range(draws)]
        return [float(x) for x in jax.device_get(losses)]

    def evaluate(self, params, batches) -> float:
        """Mean eval loss over fixed held-out batches (one fixed noise draw each)."""
        return float(np.mean(self.eval_losses(params, batches))) if batches else math.nan
