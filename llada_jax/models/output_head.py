"""The output head and its cross entropy, in chunks of positions, so [batch, length, vocab] float32 logits
never exist.

With a 126k vocabulary the logits are the largest tensor of the step (4 bytes x 126,464 per token, plus their
softmax for the backward pass). `chunked_scores` runs the head over `chunk_len` positions of every row at a
time inside a scan whose body is rematerialised, so the forward keeps only per-token CE and correctness and
the backward recomputes one chunk of logits at a time. Chunks cut the length, not the batch, so every device
works on each chunk; `HeadOutput` sizes them from a token budget per device (config model.loss_chunk_tokens). Losses receive a `HeadOutput` where they used to receive logits and
ask it for `TokenScores`; plain logits arrays still work (the sampler and tests use them).
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


def chunked_scores(hidden: jax.Array, weight: jax.Array, targets: jax.Array, chunk_len: int) -> TokenScores:
    """scores_from_logits(project(hidden, weight), targets) holding one [B, chunk_len, V] block at a time.

    The length is padded up to a multiple of `chunk_len` (padded positions are dropped from the result).
    """
    b, t, d = hidden.shape
    chunk_len = max(1, min(chunk_len, t))
    pad = -t % chunk_len
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    n = (t + pad) // chunk_len
    to_chunks = lambda x: jnp.moveaxis(x.reshape((b, n, chunk_len) + x.shape[2:]), 1, 0)  # noqa: E731

    @jax.checkpoint
    def one_chunk(h, y):
        s = scores_from_logits(project(h, weight), y)
        return s.ce, s.correct

    def body(_, xs):
        return None, one_chunk(*xs)

    _, (ce, correct) = jax.lax.scan(body, None, (to_chunks(hidden), to_chunks(targets)))
    from_chunks = lambda x: jnp.moveaxis(x, 0, 1).reshape(b, n * chunk_len)[:, :t]  # noqa: E731
    return TokenScores(from_chunks(ce), from_chunks(correct))


def chunk_len_for(batch: int, length: int, tokens_per_device: int) -> int:
    """Positions per chunk so one chunk holds about `tokens_per_device` tokens on each device (at least 1)."""
    rows_per_device = max(1, batch // sharding.shard_count(("batch",), (batch,)))
    return max(1, min(length, tokens_per_device // rows_per_device))


@dataclasses.dataclass(frozen=True)
class HeadOutput:
    """The model's final hidden states with the head weight: logits on demand, never all at once.

    `chunk_tokens` is the per-device token budget of one chunk of logits.
    """

    hidden: jax.Array
    weight: jax.Array
    chunk_tokens: int

    def scores(self, targets: jax.Array) -> TokenScores:
        b, t = self.hidden.shape[:2]
        return chunked_scores(self.hidden, self.weight, targets, chunk_len_for(b, t, self.chunk_tokens))


def token_scores(outputs, targets: jax.Array) -> TokenScores:
    """Scores from whatever the model returned: a HeadOutput (training) or a logits array."""
    if isinstance(outputs, HeadOutput):
        return outputs.scores(targets)
    return scores_from_logits(outputs, targets)
