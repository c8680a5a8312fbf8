"""Building blocks every model family shares: parameter init, RMSNorm, rotary embeddings, the SwiGLU MLP.

Kept apart from the networks so a new family (mixture-of-experts layers, QK-norm, partial rotary) reuses
the exact numerics the dense LLaDA model was verified with (logits to 2e-5 against the official code).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from llada_jax import sharding


def param(rngs: nnx.Rngs, shape, std: float, dtype, names) -> nnx.Param:
    """A normal(0, std) parameter carrying its logical axis names (sharding.py places it)."""
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype), sharding_names=names)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x * rsqrt(mean(x^2) + eps) computed in float32, cast back to x's dtype, then scaled by the weight.

    A custom VJP so the backward pass keeps x in its own dtype (bf16) instead of the float32 copy autodiff
    would save, and recomputes the normalisation from it.
    """
    return _rms_norm_forward(x, weight, eps)


def _rms_norm_forward(x, weight, eps):
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return y.astype(x.dtype) * weight.astype(x.dtype)


def _rms_norm_fwd(x, weight, eps):
    return _rms_norm_forward(x, weight, eps), (x, weight)


def _rms_norm_bwd(eps, res, dy):
    x, weight = res
    xf = x.astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    normed = xf * r
    dyf = dy.astype(jnp.float32)
    d_weight = jnp.sum(dyf * normed.astype(x.dtype).astype(jnp.float32), axis=tuple(range(x.ndim - 1)))
    d_normed = dyf * weight.astype(x.dtype).astype(jnp.float32)
    dx = r * (d_normed - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
    return dx.astype(x.dtype), d_weight.astype(weight.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


def rope_tables(positions: jax.Array, rotary_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin of shape [batch, length, rotary_dim] in the rotate-half layout: angles are [freqs, freqs]."""
    inv_freq = theta ** (-jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def rotate_half_matrix(head_dim: int, rotary_dim: int, dtype) -> jax.Array:
    """M with x @ M = rotate_half(x[:rotary_dim]) = [-x2, x1] on the rotary dims, 0 on the others."""
    half = rotary_dim // 2
    m = np.zeros((head_dim, head_dim), np.float32)
    m[np.arange(half) + half, np.arange(half)] = -1.0
    m[np.arange(half), np.arange(half) + half] = 1.0
    return jnp.asarray(m, dtype)


def _rotate(x, cos, sin, sign: float):
    """x * cos + sign * rotate_half(x) * sin in float32, cast back; the first cos.shape[-1] dims of each head
    rotate, the rest pass through (cos 1, sin 0 there).

    rotate_half is a matmul with a fixed +-1 permutation matrix, not a split and a concatenation: on TPU,
    slicing the head dimension (the vector lanes) made XLA write float32 halves of q and k to memory (2.4 GB
    of traffic for q alone at 4 x 4096 tokens, the 8B head shape, instead of 0.4 GB); a HIGHEST-precision
    matmul by +-1 is exact, so the values are the same bit for bit."""
    h, r = x.shape[-1], cos.shape[-1]
    if r < h:
        cos = jnp.pad(cos, ((0, 0), (0, 0), (0, h - r)), constant_values=1.0)
        sin = jnp.pad(sin, ((0, 0), (0, 0), (0, h - r)))
    rotated = jnp.einsum("btnh,hk->btnk", x, rotate_half_matrix(h, r, x.dtype),
                         preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST)
    return (x.astype(jnp.float32) * cos[:, :, None, :] + sign * rotated * sin[:, :, None, :]).astype(x.dtype)


@jax.custom_vjp
def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin; x is [batch, length, heads, dim], cos/sin [batch, length, rotary dims].

    A rotation, so its backward is the inverse rotation of the cotangent: a custom VJP keeps only the
    [B, T, dim] tables instead of autodiff's head-broadcast float32 copies of them per layer.
    """
    return _rotate(x, cos, sin, 1.0)


def _rope_fwd(x, cos, sin):
    return _rotate(x, cos, sin, 1.0), (cos, sin)


def _rope_bwd(res, dy):
    cos, sin = res
    return _rotate(dy, cos, sin, -1.0), None, None


apply_rope.defvjp(_rope_fwd, _rope_bwd)


def swiglu(y: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
    """down(silu(y @ gate) * (y @ up)): the LLaMA MLP; y [B, T, d], gate/up [d, f], down [f, d].

    The projections carry checkpoint names, so the remat policies (models/transformer.py) can keep them."""
    g = checkpoint_name(jnp.einsum("btd,df->btf", y, gate), "mlp_gate")
    u = checkpoint_name(jnp.einsum("btd,df->btf", y, up), "mlp_up")
    hidden = sharding.constrain(jax.nn.silu(g) * u, ("batch", "length", "mlp"))
    return checkpoint_name(jnp.einsum("btf,fd->btd", hidden, down), "mlp_output")
