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
cannot overflow (the logits themselves are the model's float32 output). Everything has static shapes:
prompts of different lengths are left-padded so they end in the same column; the padding is a separate
attention segment and positions start at 0 at each prompt's first real token.

One deliberate difference: the mask id is excluded from the predictions (the official code could reveal a
mask token, which only an untrained model would pick).

Options beyond the official sampler:
- `threshold`: reveal every masked token of the current block whose confidence exceeds it (at least one per
  step), finishing a block in as few forward passes as its predictions allow (`steps` is then unused).
- `kv_cache`: a block-wise prefix KV cache (see `_generate`); an approximation for this bidirectional model.
- `eos_id`: stop after the first block at which every row holds an EOS. Exact for the text up to the first
  EOS: finished blocks are never changed by later ones, so skipping them only saves forward passes.
- the returned trace (the step at which each position was revealed) for `--trace`.
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
    """float64 when x64 is enabled (CPU/GPU with jax_enable_x64), float32 otherwise (TPU has no float64)."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def sample_tokens(logits, key, temperature: float):
    """Gumbel-max in log space; temperature 0 is argmax."""
    logits = logits.astype(_float())
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    u = jax.random.uniform(key, logits.shape, _float(), minval=jnp.finfo(_float()).tiny, maxval=1.0)
    return jnp.argmax(logits - temperature * jnp.log(-jnp.log(u)), axis=-1)


def guided_logits(graphdef, params, x, positions, segment_ids, prompt_mask, mask_id: int, cfg_scale: float, *,
                  prefix_len: int = 0, cache=None, build_cache: bool = False):
    """(logits [B, T, V], prefix cache or None).

    With cfg_scale > 0 the result is un + (cfg + 1) * (cond - un), where `un` sees masks for the prompt.
    `build_cache` also returns the keys/values of the first `prefix_len` positions from this full forward;
    with `cache`, only positions >= prefix_len are recomputed (they attend to the cached prefix) and the
    prefix rows of the logits are zeros (the sampler never reads them: those positions are all revealed).
    """
    if cfg_scale > 0:
        x = jnp.concatenate([x, jnp.where(prompt_mask, mask_id, x)])
        positions = jnp.concatenate([positions, positions])
        segment_ids = jnp.concatenate([segment_ids, segment_ids])
    kv = None
    if cache is not None:
        logits = model_lib.apply(graphdef, params, x[:, prefix_len:], positions[:, prefix_len:],
                                 segment_ids[:, prefix_len:], prefix_kv=cache,
                                 prefix_segment_ids=segment_ids[:, :prefix_len])
        logits = jnp.pad(logits, ((0, 0), (prefix_len, 0), (0, 0)))
        kv = cache
    elif build_cache:
        logits, kv = model_lib.apply(graphdef, params, x, positions, segment_ids, return_kv=True)
        kv = jax.tree.map(lambda a: a[:, :, :prefix_len], kv)
    else:
        logits = model_lib.apply(graphdef, params, x, positions, segment_ids)
    if cfg_scale > 0:
        cond, un = jnp.split(logits, 2)
        logits = un + (cfg_scale + 1.0) * (cond - un)
    return logits, kv


def top_k_mask(confidence: jax.Array, k: jax.Array) -> jax.Array:
    """True at the k[b] largest entries of each row (ties broken by position)."""
    order = jnp.argsort(-confidence, axis=-1, stable=True)
    ranks = jnp.argsort(order, axis=-1, stable=True)
    return ranks < k[:, None]


def check_schedule(gen_length: int, steps: int, block_length: int) -> None:
    """One sentence for a schedule generate.py would reject (blocks must tile the answer, steps the blocks)."""
    from llada_jax.config import ConfigError

    if min(gen_length, steps, block_length) <= 0:
        raise ConfigError(f"gen_length={gen_length}, steps={steps} and block_length={block_length} must be positive")
    if gen_length % block_length:
        raise ConfigError(f"gen_length={gen_length} is not a multiple of block_length={block_length}; "
                          "choose a block length that divides it")
    blocks = gen_length // block_length
    if steps % blocks:
        raise ConfigError(f"steps={steps} does not split over {blocks} blocks; use a multiple of {blocks}")


def generate(graphdef, params, prompt, prompt_valid, key, *, gen_length: int, steps: int, block_length: int,
             temperature: float = 0.0, cfg_scale: float = 0.0, remasking: str = "low_confidence",
             mask_id: int = 126336, threshold: float | None = None, kv_cache: bool = False,
             eos_id: int | None = None):
    """prompt [B, P] (left-padded; `prompt_valid` marks real tokens) -> (tokens [B, P + G], reveal step [B, P + G]
    (-1 where nothing was revealed), forward passes used).

    Checks the schedule and options in Python (one-sentence ConfigError), then runs the jitted decoder.
    """
    from llada_jax.config import ConfigError

    check_schedule(gen_length, steps, block_length)
    if remasking not in ("low_confidence", "random"):
        raise ConfigError(f"remasking={remasking!r} is unknown; use 'low_confidence' or 'random'")
    if temperature < 0 or cfg_scale < 0:
        raise ConfigError(f"temperature={temperature} and cfg_scale={cfg_scale} must be >= 0")
    return _generate(graphdef, params, prompt, prompt_valid, key, gen_length=gen_length, steps=steps,
                     block_length=block_length, temperature=float(temperature), cfg_scale=float(cfg_scale),
                     remasking=remasking, mask_id=int(mask_id),
                     threshold=None if threshold is None else float(threshold), kv_cache=bool(kv_cache),
                     eos_id=None if eos_id is None else int(eos_id))


@functools.partial(jax.jit, static_argnames=("graphdef", "gen_length", "steps", "block_length", "temperature",
                                             "cfg_scale", "remasking", "mask_id", "threshold", "kv_cache", "eos_id"))
def _generate(graphdef, params, prompt, prompt_valid, key, *, gen_length, steps, block_length, temperature,
              cfg_scale, remasking, mask_id, threshold, kv_cache, eos_id):
    """The whole reverse process in one jit (lax loops, static shapes); see `generate`.

    `kv_cache`: each block's first step is a full forward that also caches the keys/values of the prompt and
    the finished blocks; the block's other steps recompute only the block and what follows it, attending to
    the cached prefix. The model is bidirectional, so the true prefix keys/values change whenever a later
    token is revealed; the cache is refreshed only at block starts, hence it is an approximation of the
    official sampler (exactly equal when each block takes one step) that saves the prefix's FLOPs per step.
    """
    b, p = prompt.shape
    total = p + gen_length
    n_blocks = gen_length // block_length
    steps_per_block = steps // n_blocks
    valid = jnp.concatenate([prompt_valid, jnp.ones((b, gen_length), bool)], axis=1)
    segment_ids = valid.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
    prompt_mask = jnp.concatenate([prompt_valid, jnp.zeros((b, gen_length), bool)], axis=1)
    x = jnp.concatenate([prompt, jnp.full((b, gen_length), mask_id, prompt.dtype)], axis=1)
    trace = jnp.full((b, total), -1, jnp.int32)
    columns = jnp.arange(total)[None, :]

    def step(state, block, k_reveal, step_index, prefix_len=0, cache=None, build_cache=False):
        x, trace, key = state
        key, k_noise, k_conf = jax.random.split(key, 3)
        logits, cache = guided_logits(graphdef, params, x, positions, segment_ids, prompt_mask, mask_id, cfg_scale,
                                      prefix_len=prefix_len, cache=cache, build_cache=build_cache)
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
        trace = jnp.where(reveal, jnp.asarray(step_index, trace.dtype), trace)
        return (x, trace, key), cache

    def block_masks(x, block):
        start = p + block * block_length
        region = jax.lax.dynamic_slice_in_dim(x, start, block_length, axis=1)
        return jnp.sum(region == mask_id, axis=1)

    def run_block(block, carry, prefix_len=0):
        """All steps of one block; with the cache, `block` and `prefix_len` are Python ints (static shapes)."""
        x, trace, key, passes = carry
        state, cache = (x, trace, key), None
        if threshold is None:
            schedule = transfer_schedule(block_masks(x, block), steps_per_block)
            first = 0
            if kv_cache:
                state, cache = step(state, block, schedule[:, 0], block * steps_per_block, prefix_len, None, True)
                first = 1

            def body(i, state):
                return step(state, block, schedule[:, i], block * steps_per_block + i, prefix_len, cache)[0]

            state = jax.lax.fori_loop(first, steps_per_block, body, state)
            return (*state, passes + jnp.int32(steps_per_block))

        if kv_cache:
            state, cache = step(state, block, None, passes, prefix_len, None, True)
            passes = passes + 1

        def cond(c):
            return jnp.any(block_masks(c[0], block) > 0)

        def body(c):
            x, trace, key, passes = c
            state, _ = step((x, trace, key), block, None, passes, prefix_len, cache)
            return (*state, passes + 1)

        return jax.lax.while_loop(cond, body, (*state, passes))

    def finished(x, block):
        """True when every row holds an EOS among the generated positions of blocks 0..block (all revealed)."""
        if eos_id is None:
            return jnp.zeros((), bool)
        region = (columns >= p) & (columns < p + (block + 1) * block_length)
        return jnp.all(jnp.any((x == eos_id) & region, axis=1))

    carry = (x, trace, key, jnp.zeros((), jnp.int32))
    if kv_cache:
        done = jnp.zeros((), bool)
        for block in range(n_blocks):  # unrolled: the cached prefix grows by one block each time
            carry = jax.lax.cond(done, lambda c: c,
                                 functools.partial(run_block, block, prefix_len=p + block * block_length), carry)
            done = finished(carry[0], block)
    else:
        def blocks_cond(c):
            block, carry, done = c
            return (block < n_blocks) & ~done

        def blocks_body(c):
            block, carry, _ = c
            carry = run_block(block, carry)
            return block + 1, carry, finished(carry[0], block)

        _, carry, _ = jax.lax.while_loop(blocks_cond, blocks_body, (jnp.int32(0), carry, jnp.zeros((), bool)))
    x, trace, _, passes = carry
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
