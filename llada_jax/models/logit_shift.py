"""Logit shift: the prediction for position i is read from the hidden state at position i - 1.

An autoregressive model's state at i - 1 already predicts token i. Reading block diffusion's predictions the same
way (Dream's adaptation of an AR model; `model.logit_shift`) lets an AR checkpoint start block diffusion
predicting what it already knew instead of learning to move every prediction one position. Which state sits at i - 1:
- the first position of a block: the clean stream's last position of the previous block, which sees exactly the
  clean tokens before i (an AR model's next-token prediction; with block size 1 this is all there is);
- any other position: the noisy stream's i - 1, in the same block (it sees that block's noisy tokens and the
  clean blocks before it).
A position whose predecessor is in another document (or that has none: position 0) is never predicted.
The training objective, the block-diffusion ELBO and the block sampler all read predictions through here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _previous(hidden: jax.Array) -> jax.Array:
    """[B, T, d] -> the same with row i holding row i - 1 (zeros at 0)."""
    return jnp.pad(hidden[:, :-1], ((0, 0), (1, 0), (0, 0)))


def shifted_hidden(noisy: jax.Array, clean: jax.Array | None, block_size: int) -> jax.Array:
    """[B, T, d]: at position i the state that predicts token i (module docstring). `clean` is None when the
    row is one block (nothing before a block's first position but the noisy stream)."""
    previous = _previous(noisy)
    if clean is None:
        return previous
    first_of_block = (jnp.arange(noisy.shape[1]) % block_size == 0)[None, :, None]
    return jnp.where(first_of_block, _previous(clean), previous)


def predictable(segment_ids: jax.Array) -> jax.Array:
    """[B, T] bool: position i has a predecessor in its own document (segment), so a shifted model predicts it."""
    same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
    return jnp.pad(same, ((0, 0), (1, 0)))
