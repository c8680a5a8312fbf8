"""LLaDA's reverse process as one jitted function: start from masks, reveal the most confident predictions.

Semantics follow the official generate.py: the generation region is split into blocks decoded left to
right; within a block, `steps_per_block` steps each reveal a scheduled number of tokens (m masks over s steps:
m // s each, the first m % s steps one more). Each step predicts every masked token (Gumbel-max at
`temperature`, optionally with classifier-free guidance), scores them (softmax probability of the
prediction, or uniform noise for `random` remasking), keeps positions outside the current block at -inf,
and reveals the top-k.

Numerics: the official code draws the Gumbel noise and the softmax in float64. JAX has no float64 on TPU
and only with jax_enable_x64 elsewhere, so this runs them in float64 when x64 is enabled and in float32
otherwise, in log space (argmax(logits - T * log(-log u)) == argmax(exp(logits) / (-log u)^T)), which
cannot overflow. Everything has static shapes: prompts of different lengths are left-padded and the
padding is a separate attention segment.

One deliberate difference: the mask id is excluded from the predictions (the official code could reveal a
mask token, which only an untrained model would pick). Option beyond the official sampler: `threshold` reveals every masked token of the current block whose
confidence exceeds it (at least one per step), finishing a block in as few forward passes as its
predictions allow.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llada_jax import model as model_lib

NEG_INF = -jnp.inf


def transfer_schedule(mask_counts: jax.Array, steps: int) -> jax.Array:
    """[B] masks in a block -> [B, steps] tokens to reveal per step (earlier steps take the remainder)."""
    base = mask_counts[:, None] // steps
    extra = jnp.arange(steps)[None, :] < (mask_counts[:, None] % steps)
    return base + extra.astype(base.dtype)


def _float():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def sample_tokens(logits, key, temperature: float):
    """Gumbel-max in log space; temperature 0 is argmax."""
    logits = logits.astype(_float())
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    u = jax.random.uniform(key, logits.shape, _float(), minval=jnp.finfo(_float()).tiny, maxval=1.0)
    return jnp.argmax(logits - temperature * jnp.log(-jnp.log(u)), axis=-1)


def guided_logits(graphdef, params, x, positions, segment_ids, prompt_mask, mask_id: int, cfg_scale: float):
    """Model logits; with cfg_scale > 0, un + (cfg + 1) * (cond - un) where `un` sees masks for the prompt."""
    if cfg_scale <= 0:
        return model_lib.apply(graphdef, params, x, positions, segment_ids)
    uncond = jnp.where(prompt_mask, mask_id, x)
    both = model_lib.apply(graphdef, params, jnp.concatenate([x, uncond]), jnp.concatenate([positions, positions]),
                           jnp.concatenate([segment_ids, segment_ids]))
    cond, un = jnp.split(both, 2)
    return un + (cfg_scale + 1.0) * (cond - un)


def top_k_mask(confidence: jax.Array, k: jax.Array) -> jax.Array:
    """True at the k[b] largest entries of each row (ties broken by position)."""
    order = jnp.argsort(-confidence, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return ranks < k[:, None]


@functools.partial(jax.jit, static_argnames=("graphdef", "gen_length", "steps", "block_length", "temperature",
                                             "cfg_scale", "remasking", "mask_id", "threshold"))
def generate(graphdef, params, prompt, prompt_valid, key, *, gen_length: int, steps: int, block_length: int,
             temperature: float = 0.0, cfg_scale: float = 0.0, remasking: str = "low_confidence",
             mask_id: int = 126336, threshold: float | None = None):
    """prompt [B, P] (left-padded; `prompt_valid` marks real tokens) -> (tokens [B, P + G], reveal step [B, P + G]
    (-1 where nothing was revealed), forward passes used)."""
    b, p = prompt.shape
    total = p + gen_length
    n_blocks = gen_length // block_length
    steps_per_block = steps // n_blocks
    valid = jnp.concatenate([prompt_valid, jnp.ones((b, gen_length), bool)], axis=1)
    segment_ids = valid.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    prompt_mask = jnp.concatenate([prompt_valid, jnp.zeros((b, gen_length), bool)], axis=1)
    x = jnp.concatenate([prompt, jnp.full((b, gen_length), mask_id, prompt.dtype)], axis=1)
    trace = jnp.full((b, total), -1, jnp.int32)
    columns = jnp.arange(total)[None, :]

    def step(state, block, k_reveal, step_index):
        x, trace, key = state
        key, k_noise, k_conf = jax.random.split(key, 3)
        logits = guided_logits(graphdef, params, x, positions, segment_ids, prompt_mask, mask_id, cfg_scale)
        logits = logits.at[..., mask_id].set(NEG_INF)  # never "reveal" a mask (possible for untrained models)
        x0 = sample_tokens(logits, k_noise, temperature)
        if remasking == "low_confidence":
            probs = jax.nn.softmax(logits.astype(_float()), axis=-1)
            conf = jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]
        else:
            conf = jax.random.uniform(k_conf, x0.shape, _float())
        masked = x == mask_id
        in_block = columns < p + (block + 1) * block_length
        conf = jnp.where(masked & in_block, conf, NEG_INF)
        if threshold is None:
            reveal = top_k_mask(conf, k_reveal) & masked
        else:
            best = top_k_mask(conf, jnp.ones((b,), jnp.int32)) & jnp.isfinite(conf)
            reveal = ((conf > threshold) | best) & masked & in_block
        x = jnp.where(reveal, x0.astype(x.dtype), x)
        trace = jnp.where(reveal, step_index, trace)
        return x, trace, key

    def block_masks(x, block):
        start = p + block * block_length
        region = jax.lax.dynamic_slice_in_dim(x, start, block_length, axis=1)
        return jnp.sum(region == mask_id, axis=1)

    def run_block(block, carry):
        x, trace, key, passes = carry
        if threshold is None:
            schedule = transfer_schedule(block_masks(x, block), steps_per_block)

            def body(i, state):
                return step(state, block, schedule[:, i], block * steps_per_block + i)

            x, trace, key = jax.lax.fori_loop(0, steps_per_block, body, (x, trace, key))
            return x, trace, key, passes + steps_per_block

        def cond(c):
            return jnp.any(block_masks(c[0], block) > 0)

        def body(c):
            x, trace, key, passes = c
            x, trace, key = step((x, trace, key), block, None, passes)
            return x, trace, key, passes + 1

        return jax.lax.while_loop(cond, body, (x, trace, key, passes))

    x, trace, _, passes = jax.lax.fori_loop(0, n_blocks, run_block, (x, trace, key, jnp.zeros((), jnp.int32)))
    return x, trace, passes


def left_pad(prompts: list[list[int]], pad_id: int):
    """Token lists -> (ids [B, P], valid [B, P]) with every prompt ending in the last column."""
    width = max(len(t) for t in prompts)
    ids = [[pad_id] * (width - len(t)) + list(t) for t in prompts]
    valid = [[False] * (width - len(t)) + [True] * len(t) for t in prompts]
    return jnp.asarray(ids, jnp.int32), jnp.asarray(valid, bool)


def crop_at_eos(tokens, eos_id: int) -> list[int]:
    """Generated ids up to (not including) the first EOS: the model pads its answer with EOS."""
    tokens = [int(t) for t in tokens]
    return tokens[:tokens.index(eos_id)] if eos_id in tokens else tokens
