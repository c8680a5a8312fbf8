"""Monte Carlo conditional log-likelihood log p(answer | prompt) for a mask predictor (get_log_likelihood.py).

Each sample masks l of the L answer tokens (a uniformly random subset) and scores (L / l) * sum of the CE at
the masked positions; the prompt is never masked. Within a mini-batch the l are stratified from one uniform
offset (l_j = ((round(k + j L / B) - 1) mod L) + 1), which lowers the variance. The mean over samples
estimates -log p(a | p) from above (it is an ELBO), so candidates are ranked by the estimate of log p.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llada_jax import diffusion
from llada_jax.sampling import guided_logits


def stratified_mask_counts(key, batch: int, answer_len: int) -> jax.Array:
    k = jax.random.randint(key, (), 1, answer_len + 1)
    x = jnp.round(k + jnp.arange(batch) * (answer_len / batch)).astype(jnp.int32)
    return (x - 1) % answer_len + 1


@functools.partial(jax.jit, static_argnames=("graphdef", "prompt_len", "batch", "mask_id", "cfg_scale"))
def minibatch_nll(graphdef, params, seq, key, *, prompt_len: int, batch: int, mask_id: int, cfg_scale: float = 0.0):
    """Per-sample (L / l) * sum of masked CE for `batch` samples of one [T] prompt+answer sequence."""
    total = seq.shape[0]
    answer_len = total - prompt_len
    key_l, key_perm = jax.random.split(key)
    counts = stratified_mask_counts(key_l, batch, answer_len)
    noise = jax.random.uniform(key_perm, (batch, answer_len))
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)  # a uniformly random order of answer positions
    masked_answer = ranks < counts[:, None]
    masked = jnp.concatenate([jnp.zeros((batch, prompt_len), bool), masked_answer], axis=1)
    tokens = jnp.broadcast_to(seq, (batch, total))
    noisy = jnp.where(masked, mask_id, tokens)
    positions = jnp.broadcast_to(jnp.arange(total), (batch, total))
    prompt_mask = jnp.broadcast_to(jnp.arange(total) < prompt_len, (batch, total))
    logits, _ = guided_logits(graphdef, params, noisy, positions, jnp.ones_like(noisy), prompt_mask, mask_id, cfg_scale)
    ce = diffusion.cross_entropy(logits, tokens)
    return jnp.sum(ce * masked, axis=1) * answer_len / counts


def log_likelihood(graphdef, params, prompt: list[int], answer: list[int], key, *, mask_id: int,
                   mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0) -> tuple[float, float]:
    """(estimate of log p(answer | prompt), its Monte Carlo standard error)."""
    if not answer:
        raise ValueError("the answer is empty; there is nothing to score")
    seq = jnp.asarray(list(prompt) + list(answer), jnp.int32)
    samples = []
    for i in range(max(mc_num // batch_size, 1)):
        samples.append(minibatch_nll(graphdef, params, seq, jax.random.fold_in(key, i), prompt_len=len(prompt),
                                     batch=batch_size, mask_id=mask_id, cfg_scale=cfg_scale))
    values = jnp.concatenate(samples)
    return -float(values.mean()), float(values.std() / jnp.sqrt(values.shape[0]))
