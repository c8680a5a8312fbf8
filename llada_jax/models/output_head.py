"""The output head and its cross entropy: logits, per-position scores, and the training output that never
holds [batch, length, vocab] float32 logits.

With a 126k vocabulary the logits are the largest tensor of the step (4 bytes x 126,464 per token, plus their
softmax for the backward pass). In training the model returns a `HeadOutput` (final hidden states and the head
weight) instead of logits, and the loss runs the head chunk by chunk of positions (head_loss.py). Chunks cut the
length, not the batch, so every device works on each chunk; `chunk_len_for` sizes them from a token budget per
device (config model.loss_chunk_tokens). Plain logits arrays serve the sampler, the scorer and tests.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from llada_jax import sharding


class TokenScores(NamedTuple):
    """Per position: cross entropy in float32 [B, T] and whether the argmax is the target [B, T] bool."""

    ce: jax.Array
    correct: jax.Array


def project(hidden: jax.Array, weight: jax.Array) -> jax.Array:
    """hidden [B, T, d] @ weight [d, V] -> float32 logits [B, T, V] (float32 accumulation, compute dtype in)."""
    logits = jnp.einsum("btd,dv->btv", hidden, weight.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return sharding.constrain(logits, ("batch", "length", "vocab"))


def scores_from_logits(logits: jax.Array, targets: jax.Array) -> TokenScores:
    """CE = logsumexp(logits) - logits[target], in float32, and argmax == target."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    ce = jax.nn.logsumexp(logits, axis=-1) - target_logit
    return TokenScores(ce, jnp.argmax(logits, axis=-1) == targets)


def chunk_len_for(batch: int, length: int, tokens_per_device: int) -> int:
    """Positions per chunk so one chunk holds about `tokens_per_device` tokens on each device (at least 1)."""
    rows_per_device = max(1, batch // sharding.shard_count(("batch",), (batch,)))
    return max(1, min(length, tokens_per_device // rows_per_device))


@dataclasses.dataclass(frozen=True)
class HeadOutput:
    """The model's final hidden states with the head weight: logits on demand, a chunk at a time
    (head_loss.weighted_ce). `chunk_tokens` is the per-device token budget of one chunk of logits."""

    hidden: jax.Array
    weight: jax.Array
    chunk_tokens: int
