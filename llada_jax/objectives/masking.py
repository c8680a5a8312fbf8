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
