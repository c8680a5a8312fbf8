"""Monte Carlo conditional log-likelihood log p(answer | prompt) for a mask predictor (get_log_likelihood.py).

Each sample masks l of the L answer tokens (a uniformly random subset) and scores (L / l) * sum of the CE at
the masked positions; the prompt is never masked. Over l uniform on {1..L} and uniform subsets this has
expectation sum_l (1/l) E[sum of masked CE] = the ELBO bound on -log p(a | p), so the mean over samples
estimates -log p(a | p) from above and candidates are ranked by the estimate of log p.

Within a mini-batch of B samples the l are stratified from one uniform offset k in {1..L}:
l_j = ((k + floor(j L / B + 1/2) - 1) mod L) + 1. The official code rounds k + j L / B half-to-even instead
(torch.round); that differs only where j L / B ends in exactly .5, and there it is biased (l_j is no longer
uniform over k: e.g. L=3, B=2 gives l_1 in {2, 1, 1}). Rounding the shift alone keeps every l_j uniform,
so the estimator is unbiased; `estimator_expectation` checks this by enumeration in the tests.

Sequences are padded to a multiple of `bucket` tokens (the padding is its own attention segment, so it
changes nothing) and the lengths are traced values: scoring many answers compiles once per bucket.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax import diffusion
from llada_jax.sampling import guided_logits


def stratified_counts(offset, batch: int, answer_len):
    """Numbers of masked answer tokens [batch] for offset k in 1..L: k shifted by round-half-up(j L / B), mod L."""
    j = jnp.arange(batch, dtype=jnp.int32)
    shift = (2 * j * answer_len + batch) // (2 * batch)  # floor(j L / B + 1/2) in exact integer arithmetic
    return (offset - 1 + shift) % answer_len + 1


def stratified_mask_counts(key, batch: int, answer_len) -> jax.Array:
    """One uniform offset per mini-batch, then `stratified_counts`."""
    return stratified_counts(jax.random.randint(key, (), 1, answer_len + 1), batch, answer_len)


def sample_masks(key, batch: int, total: int, prompt_len, answer_len) -> jax.Array:
    """[batch, total] bool: for each sample, a uniformly random subset of l_j answer positions (stratified l_j)."""
    key_l, key_perm = jax.random.split(key)
    counts = stratified_mask_counts(key_l, batch, answer_len)
    cols = jnp.arange(total)
    in_answer = (cols >= prompt_len) & (cols < prompt_len + answer_len)
    noise = jnp.where(in_answer, jax.random.uniform(key_perm, (batch, total)), 2.0)  # non-answer ranks last
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # a uniformly random order of the answer positions
    return (ranks < counts[:, None]) & in_answer


@functools.partial(jax.jit, static_argnames=("graphdef", "batch", "mask_id", "cfg_scale"))
def minibatch_nll(graphdef, params, seq, prompt_len, answer_len, key, *, batch: int, mask_id: int,
                  cfg_scale: float = 0.0):
    """Per-sample (L / l) * sum of masked CE for `batch` samples of one sequence.

    seq [T]: prompt (prompt_len tokens), answer (answer_len tokens), then any padding; the lengths may be traced.
    """
    total = seq.shape[0]
    masked = sample_masks(key, batch, total, prompt_len, answer_len)
    cols = jnp.arange(total)
    tokens = jnp.broadcast_to(seq, (batch, total))
    noisy = jnp.where(masked, mask_id, tokens)
    positions = jnp.broadcast_to(cols, (batch, total))
    segment_ids = jnp.broadcast_to((cols < prompt_len + answer_len).astype(jnp.int32), (batch, total))
    prompt_mask = jnp.broadcast_to(cols < prompt_len, (batch, total))
    logits, _ = guided_logits(graphdef, params, noisy, positions, segment_ids, prompt_mask, mask_id, cfg_scale)
    ce = diffusion.cross_entropy(logits, tokens)
    counts = jnp.sum(masked, axis=1)
    return jnp.sum(ce * masked, axis=1) * answer_len / counts


def log_likelihood(graphdef, params, prompt: list[int], answer: list[int], key, *, mask_id: int,
                   mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                   bucket: int = 32) -> tuple[float, float]:
    """(estimate of log p(answer | prompt), its Monte Carlo standard error).

    Runs max(mc_num // batch_size, 1) mini-batches, as the official code does. The standard error comes from
    the spread of the mini-batch means (independent; the samples inside one are stratified, not independent).
    Inputs are token ids; the caller checks the length against the model's max_seq_len.
    """
    from llada_jax.config import ConfigError

    if not answer:
        raise ConfigError("the answer is empty; give at least one answer token to score")
    if mc_num <= 0 or batch_size <= 0:
        raise ConfigError(f"mc_num={mc_num} and batch_size={batch_size} must be positive")
    length = len(prompt) + len(answer)
    padded = list(prompt) + list(answer) + [0] * (-length % bucket)
    seq = jnp.asarray(padded, jnp.int32)
    batches = [np.asarray(minibatch_nll(graphdef, params, seq, jnp.int32(len(prompt)), jnp.int32(len(answer)),
                                        jax.random.fold_in(key, i), batch=batch_size, mask_id=mask_id,
                                        cfg_scale=cfg_scale))
               for i in range(max(mc_num // batch_size, 1))]
    means = np.asarray([b.mean() for b in batches])
    if len(means) > 1:
        stderr = means.std(ddof=1) / math.sqrt(len(means))
    else:  # one mini-batch: treat its samples as independent (stratification makes this conservative)
        stderr = batches[0].std(ddof=1) / math.sqrt(batch_size) if batch_size > 1 else float("nan")
    return -float(means.mean()), float(stderr)
