"""The LLaDA mask predictor: a LLaMA-style Transformer with bidirectional attention (Flax NNX).

Pre-norm blocks of RMSNorm -> multi-head (or grouped-query) attention with rotate-half RoPE -> RMSNorm ->
SwiGLU, no biases, untied output head. `causal=True` gives the autoregressive baseline of the scaling
sweeps from the same code. Parameter names follow the official Hugging Face checkpoint (wte, blocks.*.q_proj,
ff_proj, up_proj, ff_out, ln_f, ...) so conversion is a rename and a transpose.

Layer parameters are always stored stacked along a leading "layers" axis; `scan_layers` only chooses
whether the forward pass runs them with lax.scan (one compiled body) or an unrolled loop. Checkpoints are
therefore independent of that choice.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llada_jax import sharding
from llada_jax.config import ModelConfig

_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(rngs: nnx.Rngs, shape, std: float, dtype, names) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype), sharding_names=names)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x * rsqrt(mean(x^2) + eps) computed in float32, cast back to x's dtype, then scaled by the weight."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return y.astype(x.dtype) * weight.astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin of shape [batch, length, head_dim] in the rotate-half layout: angles are [freqs, freqs]."""
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin with rotate_half([x1, x2]) = [-x2, x1]; x is [batch, length, heads, dim]."""
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


class Block(nnx.Module):
    """One pre-norm Transformer layer; attribute names are the official checkpoint's."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d, n, k, h, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden
        pdt = jnp.dtype(cfg.param_dtype)
        std = cfg.init_std
        out_std = std / (2 * cfg.n_layers) ** 0.5  # residual-branch outputs scaled down with depth
        self.attn_norm = nnx.Param(jnp.ones((d,), pdt), sharding_names=("norm",))
        self.q_proj = _param(rngs, (d, n, h), std, pdt, ("embed", "heads", "head_dim"))
        self.k_proj = _param(rngs, (d, k, h), std, pdt, ("embed", "kv_heads", "head_dim"))
        self.v_proj = _param(rngs, (d, k, h), std, pdt, ("embed", "kv_heads", "head_dim"))
        self.attn_out = _param(rngs, (n, h, d), out_std, pdt, ("heads", "head_dim", "embed"))
        self.ff_norm = nnx.Param(jnp.ones((d,), pdt), sharding_names=("norm",))
        self.ff_proj = _param(rngs, (d, f), std, pdt, ("embed", "mlp"))
        self.up_proj = _param(rngs, (d, f), std, pdt, ("embed", "mlp"))
        self.ff_out = _param(rngs, (f, d), out_std, pdt, ("mlp", "embed"))

    def __call__(self, x, cos, sin, attn_mask, cache_kv=None, window_start=None):
        """x [B, T, d] -> (x, (k, v)). With `cache_kv` (keys/values of a whole sequence, RoPE applied) x is a
        window of that sequence starting at column `window_start`: its fresh keys/values overwrite the cache's
        there and it attends to the result (the sampler's prefix and dual caches)."""
        cfg = self.cfg
        dt = x.dtype
        w = lambda p: p[...].astype(dt)  # noqa: E731  (params live in f32, compute in cfg.dtype)

        y = rms_norm(x, self.attn_norm[...], cfg.rms_norm_eps)
        q = apply_rope(jnp.einsum("btd,dnh->btnh", y, w(self.q_proj)), cos, sin)
        k = apply_rope(jnp.einsum("btd,dkh->btkh", y, w(self.k_proj)), cos, sin)
        v = jnp.einsum("btd,dkh->btkh", y, w(self.v_proj))
        q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))
        keys, values = k, v
        if cache_kv is not None:
            keys = jax.lax.dynamic_update_slice_in_dim(cache_kv[0].astype(dt), k, window_start, axis=1)
            values = jax.lax.dynamic_update_slice_in_dim(cache_kv[1].astype(dt), v, window_start, axis=1)
        attn = jax.nn.dot_product_attention(
            q, keys, values,
            mask=attn_mask,
            scale=cfg.head_dim ** -0.5,
            is_causal=cfg.causal and cache_kv is None,
            implementation=None if cfg.attention == "auto" else cfg.attention,
        )
        x = x + jnp.einsum("btnh,nhd->btd", attn, w(self.attn_out))
        x = sharding.constrain(x, ("batch", "length", "act_embed"))

        y = rms_norm(x, self.ff_norm[...], cfg.rms_norm_eps)
        gate = jnp.einsum("btd,df->btf", y, w(self.ff_proj))
        up = jnp.einsum("btd,df->btf", y, w(self.up_proj))
        hidden = sharding.constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        x = x + jnp.einsum("btf,fd->btd", hidden, w(self.ff_out))
        return sharding.constrain(x, ("batch", "length", "act_embed")), (k, v)


class Transformer(nnx.Module):
    """tokens [batch, length] -> float32 logits [batch, length, vocab]."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        # Logical names are metadata only; sharding.py places the arrays (no eager device placement here).
        with nnx.use_eager_sharding(False):
            self.wte = _param(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, pdt, ("vocab", "embed"))

            @nnx.split_rngs(splits=cfg.n_layers)
            @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_blocks(rngs):
                return Block(cfg, rngs)

            self.blocks = make_blocks(rngs)
            self.ln_f = nnx.Param(jnp.ones((cfg.d_model,), pdt), sharding_names=("norm",))
            self.ff_out = _param(rngs, (cfg.d_model, cfg.vocab_size), cfg.init_std, pdt, ("embed", "vocab"))

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, *, cache_kv=None, cache_segment_ids=None,
                 window_start=None, return_kv: bool = False):
        """tokens [B, T] -> float32 logits [B, T, V].

        `segment_ids` (packed documents or padding) restrict attention to equal ids; positions default to
        0..T-1. Sampler extras: `return_kv` also returns every layer's keys/values ([layers, B, T, K, H] each);
        `cache_kv` (such a pair for a whole sequence, with its `cache_segment_ids`) makes `tokens` the window of
        that sequence starting at column `window_start` (traced): only the window is recomputed, its keys and
        values replace the cached ones there, and it attends to the whole sequence.
        """
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        attn_mask = None
        if segment_ids is not None:
            key_ids = segment_ids if cache_kv is None else cache_segment_ids
            attn_mask = (segment_ids[:, :, None] == key_ids[:, None, :])[:, None, :, :]

        x = jnp.take(self.wte[...], tokens, axis=0).astype(dt)
        x = sharding.constrain(x, ("batch", "length", "act_embed"))

        graphdef, stacked = nnx.split(self.blocks)

        def layer(x, xs):
            layer_state, layer_cache = xs
            return nnx.merge(graphdef, layer_state)(x, cos, sin, attn_mask, layer_cache, window_start)

        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            x, kv = jax.lax.scan(layer, x, (stacked, cache_kv))
        else:
            per_layer = []
            for i in range(cfg.n_layers):
                x, layer_kv = layer(x, jax.tree.map(lambda a, i=i: a[i], (stacked, cache_kv)))
                per_layer.append(layer_kv)
            kv = jax.tree.map(lambda *a: jnp.stack(a), *per_layer)

        x = rms_norm(x, self.ln_f[...], cfg.rms_norm_eps)
        logits = jnp.einsum("btd,dv->btv", x, self.ff_out[...].astype(dt))
        logits = sharding.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
        return (logits, kv) if return_kv else logits


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStruct leaves: shapes and logical names without allocating anything."""
    return nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))


def split_model(model: Transformer):
    """(graphdef, pure-dict params, pure-dict of logical-name tuples) for functional use under jit."""
    graphdef, state = nnx.split(model)
    names = nnx.get_partition_spec(state).to_pure_dict()
    names = jax.tree.map(tuple, names, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return graphdef, state.to_pure_dict(), names


def apply(graphdef, params, tokens, positions=None, segment_ids=None, **cache_args):
    """Pure forward pass: params (a pure dict, f32) and tokens in, float32 logits out (see Transformer.__call__
    for the sampler's KV-cache arguments)."""
    return nnx.merge(graphdef, params)(tokens, positions, segment_ids, **cache_args)


def init_params(cfg: ModelConfig, seed: int):
    """Unsharded params as a pure dict (tests and small models; train.py creates them sharded instead)."""
    return split_model(Transformer(cfg, nnx.Rngs(params=seed)))[1]
