"""LLaDA SFT: the prompt stays clean, only the response (and its EOS padding) is masked and predicted.

SFT rows (data/sft.py) mark their own example (prompt, response, one EOS) with segment 1; every row is
widened to the micro-batch's longest example, so the EOS padding up to that length counts as response (as in
LLaDA) while the columns past it are padding, never seen or scored. No random-length crop.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from llada_jax.models import registry as model_lib
from llada_jax.objectives import losses, masking
from llada_jax.objectives.positions import row_lengths, valid_positions

BATCH_FIELDS = {"prompt_mask": jnp.bool_, "segment_ids": jnp.int32}  # what SFT rows carry besides tokens


def widened_segments(segment_ids):
    """Segment 1 up to the micro-batch's longest example in every row, 0 after it."""
    b, seq = segment_ids.shape
    longest = jnp.max(jnp.sum(segment_ids > 0, axis=-1))
    return jnp.broadcast_to(jnp.arange(seq)[None, :] < longest, (b, seq)).astype(jnp.int32)


def loss(graphdef, config, params, batch, key):
    """(loss sum, aux with loss_weight): masked response CE / p, normalised per example by its response length."""
    t, m = config.train, config.model
    tokens = batch["tokens"]
    key_len, key_mask = jax.random.split(key)
    segment_ids = batch.get("segment_ids")
    if segment_ids is not None:
        segment_ids = widened_segments(segment_ids)
    valid, segment_ids = valid_positions(tokens, row_lengths(batch, key_len, 0.0), segment_ids)
    maskable = valid & ~batch["prompt_mask"]
    noisy, masked, p = masking.forward_process(key_mask, tokens, m.mask_token_id, t.mask_eps, maskable,
                                               t=batch.get("t"))
    outputs = model_lib.apply_head(graphdef, params, noisy, segment_ids=segment_ids,
                                   lengths=jnp.sum(valid, axis=-1), mask_noise=masking.embedding_noise(batch, key))
    total, weight, aux = losses.sft_loss(outputs, tokens, masked, p, maskable)
    return total, {**aux, "loss_weight": weight}
