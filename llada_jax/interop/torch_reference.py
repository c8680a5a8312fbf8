"""A PyTorch implementation of the LLaDA / Llama architecture that loads a Hugging Face folder.

Written independently of models/transformer.py (plain tensor ops, [out, in] weights, heads folded into the projection
matrices) so that agreement between the two is evidence that conversion and both implementations are
right. torch is imported only when this is used: `pip install 'llada-jax[torch]'`.
"""
from __future__ import annotations

import json
import os

from llada_jax.interop import safetensors_io

LLADA = {"embed": "model.transformer.wte.weight", "norm": "model.transformer.ln_f.weight",
         "head": "model.transformer.ff_out.weight", "layer": "model.transformer.blocks.{i}.",
         "attn_norm": "attn_norm", "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
         "ff_norm": "ff_norm", "gate": "ff_proj", "up": "up_proj", "down": "ff_out"}
LLAMA = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight", "head": "lm_head.weight",
         "layer": "model.layers.{i}.", "attn_norm": "input_layernorm", "q": "self_attn.q_proj",
         "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
         "ff_norm": "post_attention_layernorm", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


class ReferenceModel:
    """logits = ReferenceModel(folder)(token_ids) in float32; bidirectional for LLaDA, causal for Llama unless
    `causal` says otherwise. Grouped-query attention (fewer key/value heads) is supported in both formats."""

    def __init__(self, folder: str, causal: bool | None = None):
        import numpy as np
        import torch

        with open(os.path.join(folder, "config.json")) as f:
            hf = json.load(f)
        self.llama = hf["model_type"] == "llama"
        self.causal = self.llama if causal is None else causal
        self.names = LLAMA if self.llama else LLADA
        if self.llama:
            self.n_layers, self.n_heads = hf["num_hidden_layers"], hf["num_attention_heads"]
            self.n_kv = hf.get("num_key_value_heads") or self.n_heads
            self.head_dim = hf.get("head_dim") or hf["hidden_size"] // self.n_heads
        else:
            self.n_layers, self.n_heads = hf["n_layers"], hf["n_heads"]
            self.n_kv = hf.get("n_kv_heads") or self.n_heads
            self.head_dim = hf["d_model"] // self.n_heads
        rope = hf.get("rope_parameters") or {}  # transformers >= 5 keeps rope_theta here
        self.theta = float(hf.get("rope_theta") or rope.get("rope_theta") or 10000.0)
        self.eps = float(hf.get("rms_norm_eps", 1e-6 if self.llama else 1e-5))
        self.w = {}
        for file in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
            for name, array in safetensors_io.iterate(os.path.join(folder, file)):
                self.w[name] = torch.from_numpy(np.asarray(array, np.float32).copy())

    def _norm(self, x, weight):
        import torch

        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * weight

    def _rope(self, x, positions):
        import torch

        half = self.head_dim // 2
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        angles = positions[:, None].float() * inv_freq[None, :]
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    def __call__(self, tokens):
        import torch

        n = self.names
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        b, t = tokens.shape
        positions = torch.arange(t)
        x = self.w[n["embed"]][tokens]
        for i in range(self.n_layers):
            p = n["layer"].format(i=i)
            w = lambda key: self.w[p + n[key] + ".weight"]  # noqa: E731
            h = self._norm(x, w("attn_norm"))
            q = (h @ w("q").T).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k = (h @ w("k").T).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
            v = (h @ w("v").T).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rope(q, positions), self._rope(k, positions)
            group = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            scores = (q @ k.transpose(-1, -2)) / self.head_dim ** 0.5
            if self.causal:
                scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
            attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
            x = x + attn @ w("o").T
            h = self._norm(x, w("ff_norm"))
            x = x + (torch.nn.functional.silu(h @ w("gate").T) * (h @ w("up").T)) @ w("down").T
        x = self._norm(x, self.w[n["norm"]])
        return x @ self.w[n["head"]].T
