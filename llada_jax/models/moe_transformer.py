"""The mixture-of-experts mask predictor (families llada_moe and llada2_moe), built from the dense model's parts.

Every layer has the shared attention sublayer (self_attention.py: QK-norm, partial RoPE, GQA as configured);
the first model.moe.first_dense_layers layers keep the dense SwiGLU (transformer.Block), the others replace it
with routed experts (moe_dispatch.py) plus optional shared experts, which every token goes through. Params:
`dense_blocks` and `moe_blocks`, each stacked on a leading layers axis; a MoE layer holds `router` [d, E]
(float32 in use), `expert_bias` [E] when aux-loss-free balancing is on, `expert_gate` / `expert_up` [E, d, f],
`expert_down` [E, f, d] and `shared_gate` / `shared_up` / `shared_down`. The two families differ only in their
Hugging Face formats (interop/).

Each forward pass reports its per-layer router statistics to router_stats (for the losses and metrics).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llada_jax import sharding
from llada_jax.config import ModelConfig
from llada_jax.models import router_stats
from llada_jax.models.grouped_matmul import resolve_kernel
from llada_jax.models.layers import param, rms_norm, swiglu
from llada_jax.models.moe_dispatch import moe_layer
from llada_jax.models.self_attention import attention_sublayer, init_attention
from llada_jax.models.transformer import Block, Transformer, run_stack, stacked_layers


class MoEBlock(nnx.Module):
    """One pre-norm layer: attention, then routed experts (+ shared experts) in place of the dense MLP."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        moe = cfg.moe
        d, e, f = cfg.d_model, moe.experts, moe.expert_hidden
        pdt = jnp.dtype(cfg.param_dtype)
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5
        init_attention(self, cfg, rngs, out_std)
        self.ff_norm = nnx.Param(jnp.ones((d,), pdt), sharding_names=("norm",))
        # std 1/sqrt(3 d), as the released LLaDA2.0 code's kaiming-uniform router init: scores that differ between
        # tokens from the start, so balancing by bias shifts some tokens at a time rather than all of them
        self.router = param(rngs, (d, e), (3 * d) ** -0.5, pdt, ("embed", "routes"))
        if moe.expert_bias:  # moved by load after each step (models/moe_state.py), never by gradients
            self.expert_bias = nnx.Param(jnp.zeros((e,), pdt), sharding_names=("routes",))
        self.expert_gate = param(rngs, (e, d, f), cfg.init_std, pdt, ("experts", "embed", "mlp"))
        self.expert_up = param(rngs, (e, d, f), cfg.init_std, pdt, ("experts", "embed", "mlp"))
        self.expert_down = param(rngs, (e, f, d), out_std, pdt, ("experts", "mlp", "embed"))
        if moe.shared_experts:  # one SwiGLU as wide as all shared experts together (LLaDA2's layout)
            fs = moe.shared_experts * f
            self.shared_gate = param(rngs, (d, fs), cfg.init_std, pdt, ("embed", "mlp"))
            self.shared_up = param(rngs, (d, fs), cfg.init_std, pdt, ("embed", "mlp"))
            self.shared_down = param(rngs, (fs, d), out_std, pdt, ("mlp", "embed"))

    def __call__(self, x, cos, sin, segments, cache_kv=None, window_start=None):
        """x [B, T, d] -> (x, ((k, v), router statistics)); padding tokens (segment 0) go to no expert."""
        cfg, moe = self.cfg, self.cfg.moe
        x, kv = attention_sublayer(self, cfg, x, cos, sin, segments, cache_kv, window_start)
        w = lambda p: p[...].astype(x.dtype)  # noqa: E731  (a no-op after the model-level cast)
        y = rms_norm(x, w(self.ff_norm), cfg.rms_norm_eps)
        kernel = resolve_kernel(moe.kernel, jax.default_backend()) if moe.kernel == "auto" else moe.kernel
        bias = self.expert_bias[...] if moe.expert_bias else None
        out, stats = moe_layer(y, self.router[...], bias, w(self.expert_gate), w(self.expert_up),
                               w(self.expert_down), segments[0] > 0, moe, kernel)
        if moe.shared_experts:
            out = out + swiglu(y, w(self.shared_gate), w(self.shared_up), w(self.shared_down))
        return sharding.constrain(x + out, ("batch", "length", "act_embed")), (kv, stats)


class MoETransformer(Transformer):
    """tokens [batch, length] -> float32 logits, like Transformer, with mixture-of-experts layers."""

    def make_layers(self, rngs: nnx.Rngs) -> None:
        cfg, k = self.cfg, self.cfg.moe.first_dense_layers
        if k:
            self.dense_blocks = stacked_layers(Block, cfg, k, rngs)
        self.moe_blocks = stacked_layers(MoEBlock, cfg, cfg.n_layers - k, rngs)

    def run_layers(self, x, rope_and_segments, cache_kv, window_start):
        """The dense layers, then the MoE layers (each stack scanned); reports the MoE layers' statistics."""
        k = self.cfg.moe.first_dense_layers
        part = lambda lo, hi: None if cache_kv is None else jax.tree.map(lambda a: a[lo:hi], cache_kv)  # noqa: E731
        kvs = []
        if k:
            x, kv = run_stack(self.dense_blocks, self.cfg, x, rope_and_segments, part(0, k), window_start)
            kvs.append(kv)
        x, (kv, stats) = run_stack(self.moe_blocks, self.cfg, x, rope_and_segments, part(k, None), window_start)
        router_stats.report(stats)
        kvs.append(kv)
        return x, jax.tree.map(lambda *a: jnp.concatenate(a), *kvs)
