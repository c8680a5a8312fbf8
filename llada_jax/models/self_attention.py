"""The attention sublayer every model family shares: pre-norm, q/k/v projections (optionally with biases and
QK-norm), rotary embeddings on all or the first `rotary_dim` dimensions of each head, the sampler's KV-cache
window, the kernel call (attention.py) and the output projection with its residual.

The parameters are attributes of the calling layer, under the official LLaDA names (attn_norm, q_proj, k_proj,
v_proj, attn_out; q_bias/k_bias/v_bias and q_norm/k_norm when the config asks for them), so a dense block and
a mixture-of-experts block store attention alike and converters map one set of names.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from llada_jax import sharding
from llada_jax.config import ModelConfig
from llada_jax.models.attention import attention
from llada_jax.models.layers import apply_rope, param, rms_norm


def init_attention(layer: nnx.Module, cfg: ModelConfig, rngs: nnx.Rngs, out_std: float) -> None:
    """Creates the sublayer's params on `layer` (their names are checkpoint names)."""
    d, n, k, h = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pdt = jnp.dtype(cfg.param_dtype)
    std = cfg.init_std
    layer.attn_norm = nnx.Param(jnp.ones((d,), pdt), sharding_names=("norm",))
    layer.q_proj = param(rngs, (d, n, h), std, pdt, ("embed", "heads", "head_dim"))
    layer.k_proj = param(rngs, (d, k, h), std, pdt, ("embed", "kv_heads", "head_dim"))
    layer.v_proj = param(rngs, (d, k, h), std, pdt, ("embed", "kv_heads", "head_dim"))
    layer.attn_out = param(rngs, (n, h, d), out_std, pdt, ("heads", "head_dim", "embed"))
    if cfg.qkv_bias:  # Qwen2's q/k/v biases
        layer.q_bias = nnx.Param(jnp.zeros((n, h), pdt), sharding_names=("heads", "head_dim"))
        layer.k_bias = nnx.Param(jnp.zeros((k, h), pdt), sharding_names=("kv_heads", "head_dim"))
        layer.v_bias = nnx.Param(jnp.zeros((k, h), pdt), sharding_names=("kv_heads", "head_dim"))
    if cfg.qk_norm:  # RMSNorm over each head's dimensions on q and k, before RoPE (Qwen3, LLaDA-MoE, LLaDA2)
        layer.q_norm = nnx.Param(jnp.ones((h,), pdt), sharding_names=("head_dim",))
        layer.k_norm = nnx.Param(jnp.ones((h,), pdt), sharding_names=("head_dim",))


def project_qkv(layer, cfg: ModelConfig, y: jax.Array):
    """(q [B, T, N, H], k, v [B, T, K, H]) before RoPE, with the optional biases and QK-norm applied."""
    dt = y.dtype
    w = lambda p: p[...].astype(dt)  # noqa: E731  (a no-op after the model-level cast)
    q = checkpoint_name(jnp.einsum("btd,dnh->btnh", y, w(layer.q_proj)), "query")
    k = checkpoint_name(jnp.einsum("btd,dkh->btkh", y, w(layer.k_proj)), "key")
    v = checkpoint_name(jnp.einsum("btd,dkh->btkh", y, w(layer.v_proj)), "value")
    if cfg.qkv_bias:
        q, k, v = q + w(layer.q_bias), k + w(layer.k_bias), v + w(layer.v_bias)
    if cfg.qk_norm:
        q, k = rms_norm(q, w(layer.q_norm), cfg.rms_norm_eps), rms_norm(k, w(layer.k_norm), cfg.rms_norm_eps)
    return q, k, v


def attention_sublayer(layer, cfg: ModelConfig, x, cos, sin, segments, cache_kv=None, window_start=None):
    """x + attention(norm(x)) and this layer's (k, v). `segments` is (query ids, key ids, kv_lengths or None), and
    optionally a fourth entry, a block_mask.BlockPattern restricting attention as block diffusion does.
    With `cache_kv` (keys/values of a whole sequence, RoPE applied) x is a window of that sequence starting at
    column `window_start`: its fresh keys/values overwrite the cache's there and it attends to the result."""
    dt = x.dtype
    y = rms_norm(x, layer.attn_norm[...].astype(dt), cfg.rms_norm_eps)
    q, k, v = project_qkv(layer, cfg, y)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # on the first rotary_dim dims of each head
    q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))
    keys, values = k, v
    if cache_kv is not None:
        keys = jax.lax.dynamic_update_slice_in_dim(cache_kv[0].astype(dt), k, window_start, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(cache_kv[1].astype(dt), v, window_start, axis=1)
    q_ids, kv_ids, kv_lengths, *pattern = segments
    mixed = attention(q, keys, values, q_segment_ids=q_ids, kv_segment_ids=kv_ids,
                      causal=cfg.causal, implementation=cfg.attention, scale=cfg.head_dim ** -0.5,
                      kv_lengths=kv_lengths if cache_kv is None else None, block_size=cfg.attention_block,
                      pattern=pattern[0] if pattern else None)
    mixed = checkpoint_name(mixed, "attn_mixed")
    attn = checkpoint_name(jnp.einsum("btnh,nhd->btd", mixed, layer.attn_out[...].astype(dt)), "attn_output")
    return sharding.constrain(x + attn, ("batch", "length", "act_embed")), (k, v)
