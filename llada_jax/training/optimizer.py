"""AdamW with global-norm clipping and the learning-rate schedules (LLaDA's warmup-stable-decay, cosine, constant)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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
    """Weight decay on projection and embedding matrices; RMSNorm weights and biases are exempt."""
    def decays(path, _):
        name = getattr(path[-1], "key", "")
        return not (name.endswith(("_norm", "_bias")) or name == "ln_f")
    return jax.tree_util.tree_map_with_path(decays, params)
