"""Which positions of a batch row are real tokens, and the attention segments they form.

Padding (segment 0) attends only to itself and is never masked or scored. Rows may end early: eval passes
explicit `lengths`, pretraining draws LLaDA's random-length crop, packed rows carry segment ids.
"""
from __future__ import annotations

import jax.numpy as jnp

from llada_jax.objectives.masking import random_lengths


def row_lengths(batch, key, crop_fraction: float):
    """[B] real tokens per row: the batch's `lengths` (eval), else a `crop_fraction` of rows cut to a random
    length (LLaDA's 1%), else full rows."""
    if "lengths" in batch:
        return batch["lengths"]
    b, seq = batch["tokens"].shape
    if crop_fraction > 0:
        return random_lengths(key, b, seq, crop_fraction)
    return jnp.full((b,), seq)


def valid_positions(tokens, lengths, segment_ids=None):
    """(valid [B, T] bool, segment_ids [B, T]): a prefix of `lengths` tokens, cut further by packed segments
    (segment 0 is padding), and the segment ids attention uses (valid rows as segment 1 without packing)."""
    seq = tokens.shape[1]
    valid = jnp.arange(seq)[None, :] < lengths[:, None]
    if segment_ids is None:
        return valid, valid.astype(jnp.int32)
    valid = valid & (segment_ids > 0)
    return valid, jnp.where(valid, segment_ids, 0)
