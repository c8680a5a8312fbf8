"""Block-by-block decoding for a block-diffusion model, recomputing the whole sequence at every step.

A model trained with train.objective=block_diffusion denoises block b(i) = i // block_size given the clean blocks
before it (models/block_mask.py). Decoding follows that order: each row is laid out from column 0 (its prompt,
then `gen_length` masks, then padding), blocks are decoded left to right, and every step runs the model over the
whole row with the one-stream block-causal layout, where the current block sees the finished blocks and the
prompt before it and itself, and nothing sees the masks of later blocks. Inside a block each step reveals the most
confident masked tokens (sampling_rules.py: the official schedule, or `threshold`).

It is the simple, exact form of block decoding (no KV cache), used by the demo and benchmarks/block_diffusion.py;
a cached block sampler must reproduce it token for token.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.inference import sampling_rules as rules
from llada_jax.inference.sampling import transfer_schedule
from llada_jax.models import registry as model_lib
from llada_jax.models.block_mask import BlockPattern


def layout(prompts: list[list[int]], gen_length: int, mask_id: int, pad_id: int):
    """(tokens [B, W], segment ids [B, W], generation region [B, W]): prompts from column 0, masks after each."""
    width = max(len(p) for p in prompts) + gen_length
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    region = np.zeros((len(prompts), width), bool)
    for row, prompt in enumerate(prompts):
        tokens[row, :len(prompt)] = prompt
        tokens[row, len(prompt):len(prompt) + gen_length] = mask_id
        region[row, len(prompt):len(prompt) + gen_length] = True
    segments = (np.arange(width)[None, :] < np.array([len(p) + gen_length for p in prompts])[:, None])
    return jnp.asarray(tokens), jnp.asarray(segments.astype(np.int32)), jnp.asarray(region)


def generate(graphdef, params, prompts: list[list[int]], key, *, gen_length: int, block_size: int, mask_id: int,
             pad_id: int = 0, steps_per_block: int | None = None, threshold: float | None = None,
             temperature: float = 0.0, remasking: str = "low_confidence"):
    """Decodes every prompt's `gen_length` tokens; returns (tokens [B, W], the generation region [B, W], forward
    passes). `steps_per_block` defaults to the block size (one token per step); `threshold` reveals every token
    above it (at least one) per step instead."""
    tokens, segments, region = layout(prompts, gen_length, mask_id, pad_id)
    first = min(len(p) for p in prompts) // block_size
    last = (tokens.shape[1] - 1) // block_size
    out, passes = _decode(graphdef, params, tokens, segments, region, key, block_size=block_size, first=first,
                          last=last, mask_id=mask_id, steps=steps_per_block or block_size, threshold=threshold,
                          temperature=float(temperature), remasking=remasking)
    return out, region, passes


@functools.partial(jax.jit, static_argnames=("graphdef", "block_size", "first", "last", "mask_id", "steps",
                                             "threshold", "temperature", "remasking"))
def _decode(graphdef, params, tokens, segments, region, key, *, block_size, first, last, mask_id, steps, threshold,
            temperature, remasking):
    pattern = BlockPattern(block_size)
    columns = jnp.arange(tokens.shape[1])[None, :]

    def reveal(carry, block, scheduled):
        x, key, passes = carry
        key, k_noise, k_conf = jax.random.split(key, 3)
        logits = model_lib.apply(graphdef, params, x, segment_ids=segments, attention_pattern=pattern)
        prediction = rules.predict(logits, k_noise, temperature, mask_id)
        candidates = region & (x == mask_id) & (columns // block_size == block)
        conf = jnp.where(candidates, rules.confidence(logits, prediction, k_conf, remasking), rules.NEG_INF)
        chosen = rules.reveal_mask(conf, scheduled, threshold=threshold, factor=None)
        return jnp.where(chosen, prediction.astype(x.dtype), x), key, passes + 1

    def one_block(block, carry):
        open_in_block = lambda x: region & (x == mask_id) & (columns // block_size == block)  # noqa: E731
        if threshold is not None:
            return jax.lax.while_loop(lambda c: jnp.any(open_in_block(c[0])), lambda c: reveal(c, block, None),
                                      carry)
        schedule = transfer_schedule(jnp.sum(open_in_block(carry[0]), axis=1), steps)
        return jax.lax.fori_loop(0, steps, lambda i, c: reveal(c, block, schedule[:, i]), carry)

    x, _, passes = jax.lax.fori_loop(first, last + 1, one_block, (tokens, key, jnp.zeros((), jnp.int32)))
    return x, passes


def answers(tokens, region, eos_id: int) -> list[list[int]]:
    """Each row's generated ids up to its first EOS."""
    tokens, region = np.asarray(jax.device_get(tokens)), np.asarray(jax.device_get(region))
    out = []
    for row, keep in zip(tokens, region):
        ids = [int(t) for t in row[keep]]
        out.append(ids[:ids.index(eos_id)] if eos_id in ids else ids)
    return out
