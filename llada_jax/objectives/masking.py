"""The masked-diffusion forward process: which tokens become the mask id, and at what noise level.

Per sequence t ~ U(0, 1), p = (1 - eps) t + eps, each (maskable) token replaced by the mask id independently
with probability p. Pure functions of keys and arrays.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_probability(t: jax.Array, eps: float) -> jax.Array:
    return (1.0 - eps) * t + eps


def forward_process(key, tokens, mask_id: int, eps: float, maskable=None, t=None):
    """Masks `tokens` [B, T]; returns (noisy tokens, masked [B, T] bool, p [B]).

    `maskable` excludes positions (prompt tokens in SFT, padding); `t` [B] fixes the noise levels (eval)
    instead of drawing them.
    """
    key_t, key_m = jax.random.split(key)
    if t is None:
        t = jax.random.uniform(key_t, (tokens.shape[0],))
    p = mask_probability(t, eps)
    masked = jax.random.uniform(key_m, tokens.shape) < p[:, None]
    if maskable is not None:
        masked = masked & maskable
    return jnp.where(masked, mask_id, tokens), masked, p


def random_lengths(key, batch: int, seq_len: int, fraction: float) -> jax.Array:
    """Per-sequence lengths: a `fraction` of sequences cut to U{1..seq_len}, the rest seq_len.

    LLaDA cuts 1% of pretraining sequences so the model also sees short inputs; with static shapes the cut
    becomes a validity mask (the tail is padding, invisible to attention and the loss).
    """
    key_pick, key_len = jax.random.split(key)
    cut = jax.random.uniform(key_pick, (batch,)) < fraction
    lengths = jax.random.randint(key_len, (batch,), 1, seq_len + 1)
    return jnp.where(cut, lengths, seq_len)


def block_forward_process(key, tokens, mask_id: int, eps: float, block_size: int, maskable=None, t=None,
                          per_block: bool = True, noise_range=(0.0, 1.0)):
    """Block diffusion's forward process: (noisy tokens, masked [B, T] bool, p [B, n_blocks or 1]).

    A noise level per block of `block_size` columns (BD3-LM), or one per row (`per_block=False`; `t` [B] given,
    as in eval, is one per row too), with t ~ U(noise_range) and p = (1 - eps) t + eps. The keys are split and
    drawn as in `forward_process`, so one block per row masks exactly the tokens LLaDA's process masks.
    """
    key_t, key_m = jax.random.split(key)
    b, length = tokens.shape
    n_blocks = length // block_size if per_block and t is None else 1
    t = jax.random.uniform(key_t, (b, n_blocks)) if t is None else t[:, None]
    low, high = noise_range
    if (low, high) != (0.0, 1.0):
        t = low + (high - low) * t
    p = mask_probability(t, eps)
    masked = jax.random.uniform(key_m, tokens.shape) < per_position(p, length)
    if maskable is not None:
        masked = masked & maskable
    return jnp.where(masked, mask_id, tokens), masked, p


def per_position(p, length: int):
    """[B, n_blocks] per-block values -> [B, length] (each block's value over its columns)."""
    return jnp.repeat(p, length // p.shape[1], axis=1)


NOISE_STREAM = 0x6D6E  # folded into an objective's key for the embedding noise, leaving its masks' draws as they were


def mask_embedding_noise_at(t, step):
    """The standard deviation of the Gaussian noise added to mask-token embeddings at step `step` (traced or not):
    train.mask_embedding_noise, falling linearly to 0 at train.mask_embedding_noise_steps (0: the whole run).

    LLaDA2.0 adds such noise early in continued pretraining from an AR model, whose mask embedding was never
    trained, to keep the gradients stable.
    """
    std = float(t.get("mask_embedding_noise", 0.0))
    steps = int(t.get("mask_embedding_noise_steps", 0))
    if steps <= 0:
        return jnp.asarray(std, jnp.float32)
    return std * jnp.clip(1.0 - jnp.asarray(step, jnp.float32) / steps, 0.0, 1.0)


def embedding_noise(batch, key, rows: int | None = None):
    """The model's `mask_noise` argument for this batch, (key, standard deviation per row), or None when the batch
    carries no "mask_noise_std" (eval, and runs without the noise). `rows`: a forward pass over more rows than the
    batch has (complementary masks repeat the batch) repeats the per-row values to match."""
    std = batch.get("mask_noise_std")
    if std is None:
        return None
    if rows is not None and rows != std.shape[0]:
        std = jnp.tile(std, rows // std.shape[0])
    return jax.random.fold_in(key, NOISE_STREAM), std
