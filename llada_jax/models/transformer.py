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
from jax.ad_checkpoint import checkpoint_name

from llada_jax import sharding
from llada_jax.config import ModelConfig
from llada_jax.models.layers import param, rms_norm, rope_tables, swiglu
from llada_jax.models.output_head import HeadOutput, project
from llada_jax.models.self_attention import attention_sublayer, init_attention

# Names of the per-layer tensors remat policies can keep (jax.ad_checkpoint.checkpoint_name tags below).
PROJECTIONS = ("query", "key", "value", "attn_mixed", "attn_output", "mlp_gate", "mlp_up", "mlp_output",
               "expert_gate", "expert_up", "expert_output")


def remat_policy(name: str):
    """Named rematerialisation policies: what each layer keeps for the backward pass (the rest is recomputed).

    full: nothing (the layer input only); save_dots: every matmul output without batch dims; save_proj: the
    projections' outputs (q, k, v, attention output, MLP gate/up/out), so attention and elementwise work is
    recomputed but no matmul is; offload_proj: the same tensors moved to host memory (TPU/GPU pinned host).
    """
    policies = jax.checkpoint_policies
    if name == "full":
        return policies.nothing_saveable
    if name == "save_dots":
        return policies.dots_with_no_batch_dims_saveable
    if name == "save_proj":
        return policies.save_only_these_names(*PROJECTIONS)
    if name == "offload_proj":
        return policies.save_and_offload_only_these_names(
            names_which_can_be_saved=[], names_which_can_be_offloaded=list(PROJECTIONS),
            offload_src="device", offload_dst="pinned_host")
    raise ValueError(f"unknown remat policy {name!r}")


class Block(nnx.Module):
    """One pre-norm Transformer layer (attention, then the SwiGLU MLP); attribute names are the official
    checkpoint's."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        d, f = cfg.d_model, cfg.mlp_hidden
        pdt = jnp.dtype(cfg.param_dtype)
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5  # residual-branch outputs scaled down with depth
        init_attention(self, cfg, rngs, out_std)
        self.ff_norm = nnx.Param(jnp.ones((d,), pdt), sharding_names=("norm",))
        self.ff_proj = param(rngs, (d, f), cfg.init_std, pdt, ("embed", "mlp"))
        self.up_proj = param(rngs, (d, f), cfg.init_std, pdt, ("embed", "mlp"))
        self.ff_out = param(rngs, (f, d), out_std, pdt, ("mlp", "embed"))

    def __call__(self, x, cos, sin, segments, cache_kv=None, window_start=None):
        """x [B, T, d] -> (x, (k, v)); see self_attention.attention_sublayer for the cache arguments. Params
        arrive already cast to the compute dtype (Transformer casts once)."""
        cfg = self.cfg
        x, kv = attention_sublayer(self, cfg, x, cos, sin, segments, cache_kv, window_start)
        w = lambda p: p[...].astype(x.dtype)  # noqa: E731  (a no-op after the model-level cast)
        y = rms_norm(x, w(self.ff_norm), cfg.rms_norm_eps)
        out = swiglu(y, w(self.ff_proj), w(self.up_proj), w(self.ff_out))
        return sharding.constrain(x + out, ("batch", "length", "act_embed")), kv


def stacked_layers(layer_cls, cfg: ModelConfig, n: int, rngs: nnx.Rngs):
    """n layers of `layer_cls` with their params stacked on a leading "layers" axis (one init per layer)."""
    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return layer_cls(cfg, rngs)

    return make(rngs)


class Transformer(nnx.Module):
    """tokens [batch, length] -> float32 logits [batch, length, vocab]."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        # Logical names are metadata only; sharding.py places the arrays (no eager device placement here).
        with nnx.use_eager_sharding(False):
            self.wte = param(rngs, (cfg.vocab_size, cfg.d_model), cfg.init_std, pdt, ("vocab", "embed"))
            self.make_layers(rngs)
            self.ln_f = nnx.Param(jnp.ones((cfg.d_model,), pdt), sharding_names=("norm",))
            if not cfg.tie_embeddings:  # tied: the head is the embedding table's transpose (Qwen2's small models)
                self.ff_out = param(rngs, (cfg.d_model, cfg.vocab_size), cfg.init_std, pdt, ("embed", "vocab"))

    def make_layers(self, rngs: nnx.Rngs) -> None:
        """The layer params, stacked: `blocks` (a family with other layers overrides this and run_layers)."""
        self.blocks = stacked_layers(Block, self.cfg, self.cfg.n_layers, rngs)

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None, *, cache_kv=None, cache_segment_ids=None,
                 window_start=None, return_kv: bool = False, lengths: jax.Array | None = None, visibility=None,
                 attention_pattern=None):
        """tokens [B, T] -> float32 logits [B, T, V].

        `segment_ids` (packed documents or padding) restrict attention to equal ids; positions default to
        0..T-1. `lengths` [B] may promise that segment_ids are just "1 before lengths, 0 after" (lets cuDNN use
        sequence lengths). Sampler extras: `return_kv` also returns every layer's keys/values ([layers, B, T,
        K, H] each); `cache_kv` (such a pair for a whole sequence, with its `cache_segment_ids`) makes `tokens`
        the window of that sequence starting at column `window_start` (traced): only the window is recomputed,
        its keys and values replace the cached ones there, and it attends to the whole sequence.
        Block diffusion restricts attention further in one of two ways (attention.py's module docstring says
        which is for what): `attention_pattern` (a static block_mask.BlockPattern: training's two-stream layout,
        whose empty tiles the kernels skip) or `visibility` (ranks from block_mask.visibility_ranks: query rank
        [B, T], key from / to [B, S]; the decoder's and scorer's windows against a cache).
        """
        x, kv = self.hidden_states(tokens, positions, segment_ids, cache_kv=cache_kv,
                                   cache_segment_ids=cache_segment_ids, window_start=window_start, lengths=lengths,
                                   visibility=visibility, attention_pattern=attention_pattern)
        logits = project(x, self.head_weight())
        return (logits, kv) if return_kv else logits

    def head_weight(self) -> jax.Array:
        """The output projection [d, V] (float32 master weights; cast per use)."""
        return self.wte[...].T if self.cfg.tie_embeddings else self.ff_out[...]

    def head(self, tokens: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None,
             lengths: jax.Array | None = None, **window) -> HeadOutput:
        """The training output: final hidden states plus head weight; losses compute logits chunk by chunk.
        `window` takes __call__'s cache, visibility and attention_pattern arguments (block diffusion)."""
        x, _ = self.hidden_states(tokens, positions, segment_ids, lengths=lengths, **window)
        # the f32 weight goes in (cast per chunk), so its gradient is summed over chunks in f32
        return HeadOutput(x, self.head_weight(), self.cfg.loss_chunk_tokens)

    def hidden_states(self, tokens, positions=None, segment_ids=None, *, cache_kv=None, cache_segment_ids=None,
                      window_start=None, lengths=None, visibility=None, attention_pattern=None, mask_noise=None):
        """tokens [B, T] -> (final RMS-normed hidden states [B, T, d] in the compute dtype, per-layer (k, v)).

        `mask_noise` (training only): (key, std [B]) adds Gaussian noise of that standard deviation per row to the
        embedding of every mask-token input (`embed`)."""
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        cos, sin = rope_tables(positions, cfg.rotary_dim, cfg.rope_theta)
        if segment_ids is None:
            segment_ids = jnp.ones(tokens.shape, jnp.int32)
            lengths = jnp.full(tokens.shape[:1], tokens.shape[1]) if lengths is None else lengths
        if cache_kv is not None and cache_segment_ids is None:
            cache_segment_ids = jnp.ones(cache_kv[0].shape[1:3], segment_ids.dtype)
        key_ids = segment_ids if cache_kv is None else cache_segment_ids
        segments = (segment_ids, key_ids, lengths)
        if visibility is not None:  # ids travel with ranks: (ids, rank) for queries, (ids, from, to) for keys
            q_rank, kv_from, kv_to = visibility
            segments = ((segment_ids, q_rank), (key_ids, kv_from, kv_to), None)
        if attention_pattern is not None:  # a static layout rides along as a fourth entry
            segments += (attention_pattern,)
        # Params are cast to the compute dtype once, outside the layer loop (and before FSDP gathers them).
        x = sharding.constrain(self.embed(tokens, mask_noise), ("batch", "length", "act_embed"))
        x, kv = self.run_layers(x, (cos, sin, segments), cache_kv, window_start)
        return rms_norm(x, self.ln_f[...].astype(dt), cfg.rms_norm_eps), kv

    def embed(self, tokens, mask_noise=None):
        """tokens [B, T] -> their embeddings [B, T, d] in the compute dtype; with `mask_noise` = (key, std [B]),
        plus N(0, std^2) noise, drawn independently per position and dimension, where a token is the mask id."""
        x = jnp.take(self.wte[...], tokens, axis=0)  # gather first: the table's gradient stays f32
        if mask_noise is not None:
            key, std = mask_noise
            noise = jax.random.normal(key, x.shape, jnp.float32) * std.astype(jnp.float32)[:, None, None]
            x = x + jnp.where((tokens == self.cfg.mask_token_id)[..., None], noise, 0.0).astype(x.dtype)
        return x.astype(jnp.dtype(self.cfg.dtype))

    def run_layers(self, x, rope_and_segments, cache_kv, window_start):
        """x through every layer -> (x, per-layer (k, v) stacked on a leading layers axis)."""
        return run_stack(self.blocks, self.cfg, x, rope_and_segments, cache_kv, window_start)


FLOAT32_PARAMS = ("router", "expert_bias")  # layer params used in float32 whatever the compute dtype


def cast_layer_params(stacked, dtype):
    """Floating-point layer params in the compute dtype, except the routers' (FLOAT32_PARAMS)."""
    def cast(path, a):
        names = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
        if not jnp.issubdtype(a.dtype, jnp.floating) or (names and names[-1] in FLOAT32_PARAMS):
            return a
        return a.astype(dtype)
    return jax.tree_util.tree_map_with_path(cast, stacked)


def run_stack(blocks, cfg: ModelConfig, x, rope_and_segments, cache_kv, window_start):
    """x through a stack of layers (params stacked on a leading axis, run by lax.scan or unrolled, remat per
    cfg.remat) -> (x, every layer's second output stacked on a leading layers axis)."""
    cos, sin, segments = rope_and_segments
    graphdef, stacked = nnx.split(blocks)
    stacked = cast_layer_params(stacked, jnp.dtype(cfg.dtype))

    def layer(x, xs):
        layer_state, layer_cache = xs
        return nnx.merge(graphdef, layer_state)(x, cos, sin, segments, layer_cache, window_start)

    if cfg.remat != "none":
        layer = jax.checkpoint(layer, policy=remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        return jax.lax.scan(layer, x, (stacked, cache_kv))
    per_layer = []
    n = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(n):
        x, out = layer(x, jax.tree.map(lambda a, i=i: a[i], (stacked, cache_kv)))
        per_layer.append(out)
    return x, jax.tree.map(lambda *a: jnp.stack(a), *per_layer)
