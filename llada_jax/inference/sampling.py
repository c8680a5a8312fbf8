"""LLaDA's reverse process as one jitted function: start from masks, reveal the most confident predictions.

Semantics follow the official generate.py: the generation region is split into blocks decoded left to
right; within a block, `steps_per_block` steps each reveal a scheduled number of tokens (m masks over s steps:
m // s each, the first m % s steps one more). Each step predicts every masked token (Gumbel-max at
`temperature`, optionally with classifier-free guidance), scores them (the prediction's probability under the
full softmax, or uniform noise for `random` remasking), keeps positions after the current block at -inf,
and reveals the top-k. sampling_rules.py holds that per-step math (and the one deliberate difference: the
mask id is never predicted); sampling_cache.py the forward passes. Everything has static shapes: prompts of
different lengths are left-padded so they end in the same column; the padding is a separate attention
segment and positions start at 0 at each prompt's first real token. Blocks and steps run in lax loops, so
compile time does not grow with the number of blocks.

Options beyond the official sampler:
- `threshold` / `factor`: parallel decoding (see sampling_rules.py); a block takes as many forward passes as
  its predictions need and `steps` is unused.
- `cache="prefix" | "dual"`: keys/values cached at each block's first (full) step and reused by its other
  steps, which recompute only a window (sampling_cache.py). Approximate for this bidirectional model, exact
  when each block takes one step.
- `eos_id`: stop after the first block at which every row holds an EOS. Exact for the text up to the first
  EOS: finished blocks are never changed by later ones, so skipping them only saves forward passes.
- the returned trace (the step at which each position was revealed) for `--trace`.

A block-diffusion model (train.objective=block_diffusion) decodes with `block_diffusion=True`: block by block with
an exact KV cache of the finished blocks (block_sampling.py); `cache="auto"` picks that cache for such a model and
none for a full-sequence one, whose decoding is unchanged.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llada_jax.inference import block_sampling
from llada_jax.inference.sampling_cache import CACHES, guided_logits, window_logits, window_start, window_width
from llada_jax.inference.sampling_rules import check_rule, reveal_columns, transfer_schedule

BLOCK_CACHE_NAMES = ("auto", "exact")  # auto: exact for a block-diffusion model, none otherwise

__all__ = ["generate", "guided_logits", "left_pad", "crop_at_eos", "transfer_schedule", "check_schedule"]


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


def check_options(remasking: str, temperature: float, cfg_scale: float, threshold, factor, cache: str) -> None:
    """One ConfigError sentence for an option the decoder cannot honour."""
    from llada_jax.config import ConfigError

    check_rule(remasking, temperature, threshold, factor)
    if cfg_scale < 0:
        raise ConfigError(f"cfg_scale={cfg_scale} must be >= 0")
    if cache not in CACHES + BLOCK_CACHE_NAMES:
        raise ConfigError(f"cache={cache!r} is unknown; use one of {', '.join(CACHES + BLOCK_CACHE_NAMES)}")


def resolve_cache(cache: str, block_diffusion: bool) -> str:
    """`auto`: a block-diffusion model's exact cache, none for a full-sequence model; `exact` needs the former."""
    from llada_jax.config import ConfigError

    if cache == "auto":
        return "exact" if block_diffusion else "none"
    if cache == "exact" and not block_diffusion:
        raise ConfigError("cache='exact' keeps the finished blocks of a block-diffusion model, and this model is a "
                          "full-sequence one; use none, prefix or dual")
    return cache


def generate(graphdef, params, prompt, prompt_valid, key, *, gen_length: int, steps: int, block_length: int,
             temperature: float = 0.0, cfg_scale: float = 0.0, remasking: str = "low_confidence",
             mask_id: int = 126336, threshold: float | None = None, factor: float | None = None,
             cache: str = "none", eos_id: int | None = None, block_diffusion: bool = False):
    """prompt [B, P] (left-padded; `prompt_valid` marks real tokens) -> (tokens [B, P + G], reveal step [B, P + G]
    (-1 where nothing was revealed), forward passes used).

    Checks the schedule and options in Python (one-sentence ConfigError), then runs the jitted decoder.
    `block_diffusion`: the model was trained with train.objective=block_diffusion and `block_length` is its
    block size: decoding goes block by block with an exact cache (block_sampling.py).
    """
    decode, _ = decoder(graphdef, gen_length=gen_length, steps=steps, block_length=block_length,
                        temperature=temperature, cfg_scale=cfg_scale, remasking=remasking, mask_id=mask_id,
                        threshold=threshold, factor=factor, cache=cache, eos_id=eos_id,
                        block_diffusion=block_diffusion)
    return decode(params, prompt, prompt_valid, key)


def decoder(graphdef, *, gen_length: int, steps: int, block_length: int, temperature: float = 0.0,
            cfg_scale: float = 0.0, remasking: str = "low_confidence", mask_id: int = 126336,
            threshold: float | None = None, factor: float | None = None, cache: str = "none",
            eos_id: int | None = None, block_diffusion: bool = False):
    """(jitted decode(params, prompt, prompt_valid, key), its static options as a dict) after the checks of
    `generate`: the form `export_cache` stores, so a repeated `llada-jax sample` skips tracing."""
    check_options(remasking, temperature, cfg_scale, threshold, factor, cache)
    cache = resolve_cache(cache, block_diffusion)
    if block_diffusion:
        return block_sampling.block_decoder(
            graphdef, gen_length=gen_length, steps=steps, block_size=block_length, temperature=temperature,
            remasking=remasking, mask_id=mask_id, threshold=threshold, factor=factor, cache=cache, eos_id=eos_id,
            cfg_scale=cfg_scale)
    check_schedule(gen_length, steps, block_length)
    optional = lambda v, kind: None if v is None else kind(v)  # noqa: E731  (hashable static arguments)
    options = dict(gen_length=int(gen_length), steps=int(steps), block_length=int(block_length),
                   temperature=float(temperature), cfg_scale=float(cfg_scale), remasking=remasking,
                   mask_id=int(mask_id), threshold=optional(threshold, float), factor=optional(factor, float),
                   cache=cache, eos_id=optional(eos_id, int))
    return functools.partial(_generate, graphdef, **options), options


@functools.partial(jax.jit, static_argnames=("graphdef", "gen_length", "steps", "block_length", "temperature",
                                             "cfg_scale", "remasking", "mask_id", "threshold", "factor", "cache",
                                             "eos_id"))
def _generate(graphdef, params, prompt, prompt_valid, key, *, gen_length, steps, block_length, temperature,
              cfg_scale, remasking, mask_id, threshold, factor, cache, eos_id):
    """The whole reverse process in one jit: a while loop over blocks (stopping early at EOS), and in each block
    a fori loop over the scheduled steps, or a while loop until the block is revealed (parallel decoding)."""
    b, p = prompt.shape
    n_blocks = gen_length // block_length
    valid = jnp.concatenate([prompt_valid, jnp.ones((b, gen_length), bool)], axis=1)
    seq = dict(positions=jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0),
               segment_ids=valid.astype(jnp.int32),
               prompt_mask=jnp.concatenate([prompt_valid, jnp.zeros((b, gen_length), bool)], axis=1))
    x = jnp.concatenate([prompt, jnp.full((b, gen_length), mask_id, prompt.dtype)], axis=1)
    decode_block = functools.partial(
        _decode_block, graphdef, params, seq, prompt_width=p, steps_per_block=steps // n_blocks,
        block_length=block_length, gen_length=gen_length, temperature=temperature, cfg_scale=cfg_scale,
        remasking=remasking, mask_id=mask_id, threshold=threshold, factor=factor, cache=cache)

    def finished(x, block):
        """True when every row holds an EOS among the generated positions of blocks 0..block (all revealed)."""
        if eos_id is None:
            return jnp.zeros((), bool)
        columns = jnp.arange(x.shape[1])[None, :]
        region = (columns >= p) & (columns < p + (block + 1) * block_length)
        return jnp.all(jnp.any((x == eos_id) & region, axis=1))

    def blocks_body(c):
        block, carry, _ = c
        carry = decode_block(block, carry)
        return block + 1, carry, finished(carry[0], block)

    carry = (x, jnp.full(x.shape, -1, jnp.int32), key, jnp.zeros((), jnp.int32))
    _, carry, _ = jax.lax.while_loop(lambda c: (c[0] < n_blocks) & ~c[2], blocks_body,
                                     (jnp.int32(0), carry, jnp.zeros((), bool)))
    x, trace, _, passes = carry
    return x, trace, passes


def _decode_block(graphdef, params, seq, block, carry, *, prompt_width, steps_per_block, block_length,
                  gen_length, temperature, cfg_scale, remasking, mask_id, threshold, factor, cache):
    """All steps of one block (`block` is traced). With a cache, the first step is a full forward that also
    returns the keys/values; the others recompute only the cache's window against them."""
    x, trace, key, passes = carry
    block_start = prompt_width + block * block_length
    reveal = functools.partial(reveal_columns, block_end=block_start + block_length, temperature=temperature,
                               remasking=remasking, mask_id=mask_id, threshold=threshold, factor=factor)
    common = (seq["positions"], seq["segment_ids"], seq["prompt_mask"], mask_id, cfg_scale)

    def full_step(state, scheduled, step_index, return_kv=False):
        logits, kv = guided_logits(graphdef, params, state[0], *common, return_kv=return_kv)
        return reveal(state, logits, 0, scheduled=scheduled, step_index=step_index), kv

    def step(state, kv, scheduled, step_index):
        if kv is None:
            return full_step(state, scheduled, step_index)[0]
        start = window_start(cache, prompt_width, block, block_length)
        logits = window_logits(graphdef, params, state[0], *common, kv, start,
                               window_width(cache, gen_length, block_length))
        return reveal(state, logits, start, scheduled=scheduled, step_index=step_index)

    region = lambda x: jax.lax.dynamic_slice_in_dim(x, block_start, block_length, axis=1)  # noqa: E731
    schedule = transfer_schedule(jnp.sum(region(x) == mask_id, axis=1), steps_per_block)
    state, kv, first = (x, trace, key), None, 0
    if cache != "none":
        state, kv = full_step(state, schedule[:, 0], passes, return_kv=True)
        first = 1
    if threshold is None and factor is None:
        state = jax.lax.fori_loop(first, steps_per_block,
                                  lambda i, s: step(s, kv, schedule[:, i], passes + i), state)
        return (*state, passes + steps_per_block)

    def body(c):
        return (*step(c[:3], kv, None, c[3]), c[3] + 1)

    return jax.lax.while_loop(lambda c: jnp.any(region(c[0]) == mask_id), body, (*state, passes + first))


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
