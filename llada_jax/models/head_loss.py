"""The training loss's use of the output head: sum_i w_i * CE_i over chunks of positions, with its gradient
computed in the same pass as the loss.

Autodiff through the chunked head (output_head.chunked_scores) recomputes each chunk's logits in the
backward pass, so the head costs four [tokens, d] x [d, V] matmuls: logits, logits again, then d(hidden)
and d(weight). The per-position weights of every loss here (mask / p / normaliser) are known before the head
runs, so this pass computes the softmax once and forms both gradients right away, scaled later by the
scalar cotangent of the weighted sum: three matmuls, and no [B, T, V] array in either direction. Without
differentiation (eval) only the loss is computed.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import sharding
from llada_jax.models.output_head import (HeadOutput, TokenScores, chunk_len_for, project, scores_from_logits)


def weighted_ce(outputs, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, TokenScores]:
    """(sum of weights * CE, per-position scores) from a HeadOutput (fused, chunked) or a logits array.

    Only the sum is differentiable; the returned scores are for metrics."""
    if isinstance(outputs, HeadOutput):
        b, t = outputs.hidden.shape[:2]
        chunk = chunk_len_for(b, t, outputs.chunk_tokens)
        total, ce, correct = _fused(outputs.hidden, outputs.weight, targets, weights.astype(jnp.float32), chunk)
        return total, TokenScores(jax.lax.stop_gradient(ce), correct)
    scores = scores_from_logits(outputs, targets)
    return jnp.sum(scores.ce * weights), TokenScores(jax.lax.stop_gradient(scores.ce), scores.correct)


def _chunked(xs, chunk: int):
    """[B, T, ...] arrays -> [n, B, chunk, ...] (T padded with zeros up to a multiple of chunk), and a way back."""
    b, t = xs[0].shape[:2]
    pad = -t % chunk
    n = (t + pad) // chunk

    def split(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x
        return jnp.moveaxis(x.reshape((b, n, chunk) + x.shape[2:]), 1, 0)

    def join(x):
        return jnp.moveaxis(x, 0, 1).reshape((b, n * chunk) + x.shape[3:])[:, :t]

    return [split(x) for x in xs], join


def _scores_and_grads(h, weight, y, w):
    """One chunk: (ce, correct, d loss / d h, d loss / d weight) for loss = sum(w * ce)."""
    logits = project(h, weight)
    scores = scores_from_logits(logits, y)
    probs = jax.nn.softmax(logits, axis=-1)
    d_logits = w[..., None] * (probs - jax.nn.one_hot(y, logits.shape[-1], dtype=probs.dtype))
    d_logits = sharding.constrain(d_logits, ("batch", "length", "vocab"))
    d_h = jnp.einsum("btv,dv->btd", d_logits.astype(h.dtype), weight.astype(h.dtype),
                     preferred_element_type=jnp.float32)
    d_w = jnp.einsum("btd,btv->dv", h, d_logits.astype(h.dtype), preferred_element_type=jnp.float32)
    return scores.ce, scores.correct, d_h.astype(h.dtype), d_w


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(hidden, weight, targets, weights, chunk):
    """(sum(weights * ce), ce, correct) chunk by chunk; the plain pass used when nothing is differentiated."""
    (hs, ys, ws), join = _chunked([hidden, targets, weights], chunk)

    def body(total, xs):
        h, y, w = xs
        s = scores_from_logits(project(h, weight), y)
        return total + jnp.sum(s.ce * w), (s.ce, s.correct)

    total, (ce, correct) = jax.lax.scan(body, jnp.zeros((), jnp.float32), (hs, ys, ws))
    return total, join(ce), join(correct)


def _fused_fwd(hidden, weight, targets, weights, chunk):
    (hs, ys, ws), join = _chunked([hidden, targets, weights], chunk)

    def body(carry, xs):
        total, d_weight = carry
        h, y, w = xs
        ce, correct, d_h, d_w = _scores_and_grads(h, weight, y, w)
        d_weight = sharding.constrain(d_weight + d_w, ("embed", "vocab"))
        return (total + jnp.sum(ce * w), d_weight), (ce, correct, d_h)

    init = (jnp.zeros((), jnp.float32), jnp.zeros(weight.shape, jnp.float32))
    (total, d_weight), (ce, correct, d_hidden) = jax.lax.scan(body, init, (hs, ys, ws))
    ce = join(ce)
    return (total, ce, join(correct)), (join(d_hidden), d_weight.astype(weight.dtype), targets.shape, ce)


def _fused_bwd(chunk, residuals, cotangents):
    d_hidden, d_weight, targets_shape, ce = residuals
    g = cotangents[0]  # only the weighted sum is differentiable (the scores are stop_gradient-ed by the caller)
    return ((g * d_hidden.astype(jnp.float32)).astype(d_hidden.dtype), g.astype(d_weight.dtype) * d_weight,
            np.zeros(targets_shape, jax.dtypes.float0), g * ce)


_fused.defvjp(_fused_fwd, _fused_bwd)
