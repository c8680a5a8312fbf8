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


def read_config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)


def read_weights(folder: str) -> dict:
    """Every tensor of the folder's safetensors files as a float32 torch tensor."""
    import numpy as np
    import torch

    w = {}
    for file in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        for name, array in safetensors_io.iterate(os.path.join(folder, file)):
            w[name] = torch.from_numpy(np.asarray(array, np.float32).copy())
    return w


class ReferenceModel:
    """logits = ReferenceModel(folder)(token_ids) in float32; bidirectional for LLaDA, causal for Llama unless
    `causal` says otherwise. Grouped-query attention (fewer key/value heads) is supported in both formats. A
    mixture-of-experts folder (LLaDA2.0 or LLaDA-MoE) gets MoEReferenceModel."""

    def __new__(cls, folder: str, causal: bool | None = None):
        hf = read_config(folder)
        moe = hf.get("model_type") in ("llada2_moe", "llada2_moe_veomni", "lladamoe") or "num_experts" in hf
        return MoEReferenceModel(folder) if cls is ReferenceModel and moe else super().__new__(cls)

    def __init__(self, folder: str, causal: bool | None = None):
        hf = read_config(folder)
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
        self.w = read_weights(folder)

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


class MoEReferenceModel:
    """LLaDA2.0 (fused query_key_value, sigmoid router with the expert bias for selection and group-limited
    top-k, shared experts) or LLaDA-MoE (separate q/k/v/o, softmax router) in plain PyTorch: each token's experts
    are found by sorting its scores, and every expert runs on the tokens that chose it, one expert at a time.
    Expert weights may be one tensor per expert or a layer's experts stacked in one (dFactory)."""

    def __init__(self, folder: str):
        hf = read_config(folder)
        self.hf, self.w = hf, read_weights(folder)
        self.llada2 = hf["model_type"] in ("llada2_moe", "llada2_moe_veomni")
        self.n_heads = hf["num_attention_heads"]
        self.n_kv = hf.get("num_key_value_heads") or self.n_heads
        self.head_dim = hf.get("head_dim") or hf["hidden_size"] // self.n_heads
        factor = hf.get("partial_rotary_factor") or 1.0
        self.rotary = int(self.head_dim * factor) if factor > 0 else self.head_dim
        self.eps, self.theta = float(hf["rms_norm_eps"]), float(hf["rope_theta"])
        if self.llada2:
            self.dense = set(range(hf.get("first_k_dense_replace", 0)))
        else:
            self.dense = {i for i, f in enumerate(hf["moe_layer_freq"]) if f == 0}

    def _norm(self, x, weight):
        import torch

        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def _rope(self, x):
        """Rotate-half RoPE over the first `rotary` dimensions of each head ([b, heads, t, hd])."""
        import torch

        r, t = self.rotary, x.shape[2]
        inv_freq = self.theta ** (-torch.arange(0, r, 2, dtype=torch.float32) / r)
        angles = torch.arange(t, dtype=torch.float32)[:, None] * inv_freq[None, :]
        cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
        rot, rest = x[..., :r], x[..., r:]
        half = torch.cat([-rot[..., r // 2:], rot[..., :r // 2]], -1)
        return torch.cat([rot * cos + half * sin, rest], -1)

    def _attention(self, p, h):
        import torch

        b, t, _ = h.shape
        n, kv, hd = self.n_heads, self.n_kv, self.head_dim
        if self.llada2:
            qkv = (h @ self.w[p + "attention.query_key_value.weight"].T).view(b, t, n + 2 * kv, hd)
            q, k, v = qkv.split([n, kv, kv], dim=2)
            qn, kn, out = "attention.query_layernorm", "attention.key_layernorm", "attention.dense"
        else:
            q, k, v = ((h @ self.w[p + f"self_attn.{x}_proj.weight"].T).view(b, t, -1, hd) for x in "qkv")
            qn, kn, out = "self_attn.q_norm", "self_attn.k_norm", "self_attn.o_proj"
        if p + qn + ".weight" in self.w:
            q, k = self._norm(q, self.w[p + qn + ".weight"]), self._norm(k, self.w[p + kn + ".weight"])
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        q, k = self._rope(q), self._rope(k)
        k, v = k.repeat_interleave(n // kv, dim=1), v.repeat_interleave(n // kv, dim=1)
        att = ((q @ k.transpose(-1, -2)) / hd ** 0.5).softmax(-1) @ v
        return att.transpose(1, 2).reshape(b, t, n * hd) @ self.w[p + out + ".weight"].T

    def _mlp(self, prefix, h):
        import torch

        g, u, d = (self.w[prefix + f"{x}_proj.weight"] for x in ("gate", "up", "down"))
        return (torch.nn.functional.silu(h @ g.T) * (h @ u.T)) @ d.T

    def _expert(self, p, e, h):
        import torch

        def weight(proj):
            one = p + f"mlp.experts.{e}.{proj}.weight"
            return self.w[one] if one in self.w else self.w[p + f"mlp.experts.{proj}"][e]

        return (torch.nn.functional.silu(h @ weight("gate_proj").T) * (h @ weight("up_proj").T)) @ weight("down_proj").T

    def _choose(self, p, h):
        """(experts [N, K], weights [N, K]) of every token, by the format's routing rule."""
        import torch

        hf, k = self.hf, self.hf["num_experts_per_tok"]
        logits = h @ self.w[p + "mlp.gate.weight"].T
        if not self.llada2:
            top = logits.softmax(-1).topk(k, dim=-1)
            return top.indices, top.values
        scores = logits.sigmoid()
        select = scores + self.w[p + "mlp.gate.expert_bias"]
        groups, keep = hf.get("n_group") or 1, hf.get("topk_group") or 1
        per_group = select.view(select.shape[0], groups, -1)
        group_score = per_group.sort(-1, descending=True).values[..., :2].sum(-1)
        dropped = group_score.argsort(-1, descending=True)[:, keep:]  # the groups a token may not use
        per_group = per_group.clone()
        per_group[torch.arange(select.shape[0])[:, None], dropped] = float("-inf")
        experts = per_group.view(select.shape[0], -1).argsort(-1, descending=True)[:, :k]
        weights = scores.gather(1, experts)
        if k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return experts, weights * float(hf.get("routed_scaling_factor", 1.0))

    def _moe(self, p, h):
        import torch

        flat = h.reshape(-1, h.shape[-1])
        experts, weights = self._choose(p, flat)
        out = torch.zeros_like(flat)
        for e in range(self.hf["num_experts"]):
            token, slot = (experts == e).nonzero(as_tuple=True)
            if len(token):
                out.index_add_(0, token, weights[token, slot, None] * self._expert(p, e, flat[token]))
        shared = "mlp.shared_experts." if self.llada2 else "shared_expert."
        if p + shared + "gate_proj.weight" in self.w:
            out = out + self._mlp(p + shared, flat)
        return out.view(h.shape)

    def __call__(self, tokens):
        import torch

        tokens = torch.as_tensor(tokens, dtype=torch.long)
        embed = "model.word_embeddings.weight" if self.llada2 else "model.embed_tokens.weight"
        x = self.w[embed][tokens]
        for i in range(self.hf["num_hidden_layers"]):
            p = f"model.layers.{i}."
            x = x + self._attention(p, self._norm(x, self.w[p + "input_layernorm.weight"]))
            h = self._norm(x, self.w[p + "post_attention_layernorm.weight"])
            x = x + (self._mlp(p + "mlp.", h) if i in self.dense else self._moe(p, h))
        return self._norm(x, self.w["model.norm.weight"]) @ self.w["lm_head.weight"].T
