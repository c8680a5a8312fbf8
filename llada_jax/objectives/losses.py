"""The training losses as pure functions of (logits or the chunked head, targets, masks).

Pretraining loss: sum over masked positions of CE / p, divided by the sequence length, averaged over the
batch -- an upper bound on the NLL (the ELBO). SFT: the prompt is never masked and the sum is divided by the
response length. The AR baseline's next-token loss lives here too so scaling sweeps compare both objectives
in the same units (nats per token). Every loss returns (sum, weight, aux) rather than a mean, so
accumulating over micro-batches and dividing once is exact. The forward process that makes the masks is in
masking.py; the objectives that combine the two with the model are mdm.py, sft.py and ar.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from llada_jax.models.head_loss import weighted_ce


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-position CE in float32: logsumexp(logits) - logits[target]."""
    logits = logits.astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jax.nn.logsumexp(logits, axis=-1) - target_logit


def _weighted_masked_loss(logits, targets, masked, p, normaliser):
    """(sum_b [sum_i masked_bi * CE_bi / p_b / normaliser_b], rows with normaliser_b > 0, accuracy counts).

    `logits` is a [B, T, V] array or the model's output_head.HeadOutput (chunked, no [B, T, V] array; its
    gradient is formed in the same pass as the loss, head_loss.py)."""
    maskf = masked.astype(jnp.float32)
    normaliser = normaliser.astype(jnp.float32)
    weights = maskf / p[:, None] / jnp.maximum(normaliser, 1.0)[:, None]
    total, (ce, hits) = weighted_ce(logits, targets, weights)
    correct = hits.astype(jnp.float32) * maskf
    aux = {"masked_correct": jnp.sum(correct), "masked_tokens": jnp.sum(maskf), "masked_ce_sum": jnp.sum(ce * maskf)}
    return total, jnp.sum((normaliser > 0).astype(jnp.float32)), aux


def pretrain_loss(logits, targets, masked, p, lengths=None):
    """LLaDA pretraining loss as (sum over sequences, number of sequences, aux); the loss is sum / number.
    `lengths` [B] (default: full rows) is each sequence's count of real tokens."""
    if lengths is None:
        lengths = jnp.full(targets.shape[:1], targets.shape[1])
    return _weighted_masked_loss(logits, targets, masked, p, lengths)


def sft_loss(logits, targets, masked, p, response_mask):
    """LLaDA SFT loss as (sum, number of examples, aux): masked response CE / p, normalised per example by
    its response length (EOS padding counts as response). `masked` must already exclude the prompt."""
    return _weighted_masked_loss(logits, targets, masked, p, jnp.sum(response_mask, axis=-1))


def block_loss(logits, targets, masked, p, normaliser, weighting: str = "elbo"):
    """Block diffusion's loss as (sum, weight, aux). `p` [B, n_blocks] is each block's mask probability.

    elbo: sum over blocks of (masked CE in the block) / p_block, divided by the row's `normaliser` (its real
    tokens, or its response length in SFT), summed over rows with weight = rows scored: LLaDA's bound, and exactly
    its pretraining/SFT loss with one block. mean: masked CE summed, weight = masked tokens (no 1/p; dFactory).
    """
    maskf = masked.astype(jnp.float32)
    if weighting == "mean":
        weights = maskf
    else:
        p_token = jnp.repeat(p, targets.shape[1] // p.shape[1], axis=1)  # each position's block probability
        weights = maskf / p_token / jnp.maximum(normaliser.astype(jnp.float32), 1.0)[:, None]
    total, (ce, hits) = weighted_ce(logits, targets, weights)
    aux = {"masked_correct": jnp.sum(hits.astype(jnp.float32) * maskf), "masked_tokens": jnp.sum(maskf),
           "masked_ce_sum": jnp.sum(ce * maskf)}
    if weighting == "mean":
        return total, aux["masked_tokens"], aux
    return total, jnp.sum((normaliser > 0).astype(jnp.float32)), aux


def ar_loss(logits, tokens, valid=None):
    """Next-token NLL as (sum over predicted positions, number of them, aux): the autoregressive baseline.
    `logits` as in _weighted_masked_loss; position i is scored against token i + 1 (the last position's score
    is dropped).

    Returning the sum and the count (not their ratio) keeps gradient accumulation exact when micro-batches
    hold different numbers of real tokens: the step divides once, by the whole batch's count.
    """
    next_tokens = jnp.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)
    w = jnp.ones(tokens.shape, jnp.float32) if valid is None else (valid[:, 1:] & valid[:, :-1]).astype(jnp.float32)
    if valid is None:
        w = w[:, 1:]
    w = jnp.pad(w, ((0, 0), (0, 1)))  # the last position predicts nothing
    total, (ce, hits) = weighted_ce(logits, next_tokens, w)
    correct = hits.astype(jnp.float32) * w
    aux = {"masked_correct": jnp.sum(correct), "masked_tokens": jnp.sum(w), "masked_ce_sum": jnp.sum(ce * w)}
    return total, jnp.sum(w), aux


def mean_loss(total, weight):
    """The loss a (total, weight) pair stands for; 0 when nothing was scored."""
    return total / jnp.maximum(weight, 1.0)
