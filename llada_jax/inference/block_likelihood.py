"""The block-diffusion ELBO of an answer: each block denoised given the clean blocks before it.

-log p(answer | prompt) <= sum over blocks b of E_l[(n_b / l) * sum of the CE at l masked answer positions of
block b], where n_b is the number of answer positions in block b and l ~ U{1..n_b} (blocks of b(i) = i //
block_size over positions 0..L-1, prompt included, as in training and decoding; prompt positions are never
masked, also where a block holds both). likelihood.py draws the masks (a stratified count per block, an
independent uniform subset in each); this module scores them.

One row costs two passes, the training objective's two streams: the clean sequence with block-causal
attention gives every layer's keys/values, then the noisy sequence runs as a window against them, each noisy
block seeing the clean blocks before it and its own noisy tokens (attention.py's visibility ranks, from
block_mask.visibility_ranks: a noisy query of block b has rank 2b; a clean key of block c is visible from 2c + 1
on, a noisy one to 2c only).
Classifier-free guidance is not built for block-diffusion models.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from llada_jax.models import logit_shift, registry as model_lib
from llada_jax.models.block_mask import CLEAN, NOISY, visibility_ranks
from llada_jax.models.output_head import project
from llada_jax.objectives import losses


def two_stream_visibility(block):
    """(noisy query ranks [R, T], key from / to [R, 2T] over [clean keys, noisy keys]) for column blocks `block`:
    training's two-stream rule (block_mask.visibility_ranks) for the noisy stream's queries."""
    q_rank, noisy_from, noisy_to = visibility_ranks(NOISY, block)
    _, clean_from, clean_to = visibility_ranks(CLEAN, block)
    return q_rank, jnp.concatenate([clean_from, noisy_from], axis=1), jnp.concatenate([clean_to, noisy_to], axis=1)


def noisy_hidden(graphdef, params, seqs, noisy, segment_ids, block_size: int):
    """The states that predict the noisy stream [R, T, d] and the head weight: clean keys/values first
    (block-causal), then the noisy tokens as a window at column T of a [clean, noisy] cache. For a model with
    model.logit_shift those are the states one position earlier (models/logit_shift.py)."""
    rows, total = seqs.shape
    positions = jnp.broadcast_to(jnp.arange(total), (rows, total))
    block = positions // block_size
    clean_head, clean = model_lib.apply_with_kv(graphdef, params, seqs, positions, segment_ids,
                                                visibility=visibility_ranks(CLEAN, block))
    cache = jax.tree.map(lambda c: jnp.concatenate([c, jnp.zeros_like(c)], axis=2), clean)
    head, _ = model_lib.apply_with_kv(graphdef, params, noisy, positions, segment_ids, cache_kv=cache,
                                      cache_segment_ids=jnp.concatenate([segment_ids, segment_ids], axis=1),
                                      window_start=total, visibility=two_stream_visibility(block))
    if model_lib.model_config(graphdef, params).logit_shift:
        head = dataclasses.replace(head, hidden=logit_shift.shifted_hidden(head.hidden, clean_head.hidden, block_size))
    return head


def token_weights(masked, in_answer, block_size: int):
    """[R, T] n_b / l_b at every masked answer position of block b (n_b answer positions, l_b of them masked)."""
    total = masked.shape[1]
    blocks = jnp.arange(total) // block_size
    one_hot = (blocks[:, None] == jnp.arange(-(-total // block_size))[None, :]).astype(jnp.float32)
    answer_count = in_answer.astype(jnp.float32) @ one_hot
    masked_count = (masked & in_answer).astype(jnp.float32) @ one_hot
    ratio = answer_count / jnp.maximum(masked_count, 1.0)
    return jnp.where(masked & in_answer, jnp.take(ratio, blocks, axis=1), 0.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "window", "mask_id", "block_size"))
def block_rows_nll(graphdef, params, seqs, masked, prompt_lens, answer_lens, *, window: int, mask_id: int,
                   block_size: int):
    """[R] sum over blocks of (n_b / l_b) * the masked CE of block b, for rows of prompt, answer, then padding,
    with the head run over only the `window` columns from each row's answer start (likelihood.rows_nll's form)."""
    total = seqs.shape[1]
    cols = jnp.arange(total)[None, :]
    ends = (prompt_lens + answer_lens)[:, None]
    segment_ids = (cols < ends).astype(jnp.int32)
    in_answer = (cols >= prompt_lens[:, None]) & (cols < ends)
    head = noisy_hidden(graphdef, params, seqs, jnp.where(masked, mask_id, seqs), segment_ids, block_size)
    take = jnp.minimum(prompt_lens[:, None] + jnp.arange(window)[None, :], total - 1)  # [R, window]
    hidden = jnp.take_along_axis(head.hidden, take[..., None], axis=1)
    ce = losses.cross_entropy(project(hidden, head.weight), jnp.take_along_axis(seqs, take, axis=1))
    weights = jnp.take_along_axis(token_weights(masked, in_answer, block_size), take, axis=1)
    weights = jnp.where(jnp.arange(window)[None, :] < answer_lens[:, None], weights, 0.0)
    return jnp.sum(ce * weights, axis=1)
