"""The LLaDA-MoE Hugging Face format (LLaDAMoEModelLM; the release's config.json says model_type "llada", dllm's
loader registers "lladamoe", which is what an export writes; both are read).

Names (dllm's modeling_lladamoe.py, an OLMoE-style layout): `model.embed_tokens.weight`, per layer
`input_layernorm`, `self_attn.q_proj` / `k_proj` / `v_proj` / `o_proj`, `self_attn.q_norm` / `k_norm` (QK-norm
over each head), `post_attention_layernorm`; a dense layer's `mlp.gate_proj` / `up_proj` / `down_proj`, an MoE
layer's `mlp.gate.weight` (router, [experts, hidden]) and `mlp.experts.{e}.gate_proj.weight` ... one tensor per
expert, with an optional `shared_expert.*` beside `mlp`; `model.norm.weight`, `lm_head.weight`. Which layers are
dense is `moe_layer_freq` (0 dense, 1 MoE), which must list the dense ones first for our model.

The released code routes with softmax scores taken as they are (no renormalisation, no scaling, no groups) and
adds an enabled expert bias to the weights themselves, unlike LLaDA2.0's selection-only bias: a model with other
routing is refused in one sentence either way.
"""
from __future__ import annotations

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.interop.llada2_format import layer_source
from llada_jax.interop.llada_format import first_id
from llada_jax.interop.tensor_layout import Planned, planned

NAME = "llada_moe"
MODEL_TYPE = "lladamoe"
OPTIONS = ("qk_norm", "partial_rotary", "experts")
MASK_TOKEN_ID = 156895
EOS_TOKEN_ID = 156892

ATTENTION = (("attn_norm", "input_layernorm.weight", "copy"), ("q_proj", "self_attn.q_proj.weight", "heads_in"),
             ("k_proj", "self_attn.k_proj.weight", "heads_in"), ("v_proj", "self_attn.v_proj.weight", "heads_in"),
             ("attn_out", "self_attn.o_proj.weight", "heads_out"), ("ff_norm", "post_attention_layernorm.weight", "copy"))
QK_NORM = (("q_norm", "self_attn.q_norm.weight", "copy"), ("k_norm", "self_attn.k_norm.weight", "copy"))
DENSE_MLP = (("ff_proj", "mlp.gate_proj.weight"), ("up_proj", "mlp.up_proj.weight"), ("ff_out", "mlp.down_proj.weight"))
EXPERTS = (("expert_gate", "gate_proj"), ("expert_up", "up_proj"), ("expert_down", "down_proj"))
SHARED = (("shared_gate", "shared_expert.gate_proj.weight"), ("shared_up", "shared_expert.up_proj.weight"),
          ("shared_down", "shared_expert.down_proj.weight"))


def matches(hf: dict) -> bool:
    """A LLaDA-MoE config.json: model_type "lladamoe", or the release's "llada" with the MoE architecture."""
    if hf.get("model_type") == MODEL_TYPE:
        return True
    return hf.get("model_type") == "llada" and ("LLaDAMoEModelLM" in (hf.get("architectures") or [])
                                                 or "num_experts" in hf)


def planned_tensors(cfg: ModelConfig, shapes: dict) -> list[Planned]:
    """Every tensor in file order, key by key over the layers (so export holds one stacked leaf at a time)."""
    p = "model.layers.{i}."
    layers, k = range(cfg.n_layers), cfg.moe.first_dense_layers
    moe_layers = range(k, cfg.n_layers)
    out = [planned("model.embed_tokens.weight", "copy", shapes, (("wte",), ())),
           planned("model.norm.weight", "copy", shapes, (("ln_f",), ())),
           planned("lm_head.weight", "transpose", shapes, (("ff_out",), ()))]
    for key, name, kind in ATTENTION + (QK_NORM if cfg.qk_norm else ()):
        out += [planned(p.format(i=i) + name, kind, shapes, layer_source(cfg, i, key)) for i in layers]
    for key, name in DENSE_MLP:
        out += [planned(p.format(i=i) + name, "transpose", shapes, layer_source(cfg, i, key)) for i in range(k)]
    out += [planned(p.format(i=i) + "mlp.gate.weight", "transpose", shapes, layer_source(cfg, i, "router"))
            for i in moe_layers]
    for key, name in EXPERTS:
        for i in moe_layers:
            path, (j,) = layer_source(cfg, i, key)
            out += [planned(p.format(i=i) + f"mlp.experts.{e}.{name}.weight", "transpose", shapes, (path, (j, e)))
                    for e in range(cfg.moe.experts)]
    for key, name in SHARED if cfg.moe.shared_experts else ():
        out += [planned(p.format(i=i) + name, "transpose", shapes, layer_source(cfg, i, key)) for i in moe_layers]
    return out


def check_exportable(m: ModelConfig) -> None:
    """One sentence for a model the released modeling code would compute differently."""
    moe = m.moe
    plain = (moe.router == "softmax" and not moe.expert_bias and not (moe.norm_topk and moe.top_k > 1)
             and moe.routed_scaling == 1.0 and moe.topk_groups == moe.n_groups)
    if not plain:
        raise ConfigError("the LLaDA-MoE format's router is softmax with the top-k scores used as they are (no expert "
                          "bias, renormalisation, scaling or groups); this model routes otherwise, so it cannot be "
                          "exported to it (LLaDA2.0's format, model.family=llada2_moe, holds those)")
    if m.head_dim * m.n_heads != m.d_model:
        raise ConfigError(f"head_dim={m.head_dim} x n_heads={m.n_heads} != d_model={m.d_model}; the LLaDA-MoE format "
                          "derives head_dim from hidden_size / num_attention_heads")


def hf_config(m: ModelConfig, torch_dtype: str) -> dict:
    """config.json with the fields of LLaDA-MoE's configuration (dllm's LLaDAMoEConfig)."""
    check_exportable(m)
    moe, k = m.moe, m.moe.first_dense_layers
    return {
        "model_type": MODEL_TYPE, "architectures": ["LLaDAMoEModelLM"], "vocab_size": m.vocab_size,
        "hidden_size": m.d_model, "dense_intermediate_size": m.mlp_hidden,
        "expert_intermediate_size": moe.expert_hidden,
        "shared_expert_intermediate_size": moe.shared_experts * moe.expert_hidden or None,
        "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads, "num_key_value_heads": m.n_kv_heads,
        "hidden_act": "silu", "max_position_embeddings": m.max_seq_len, "initializer_range": m.init_std,
        "rms_norm_eps": m.rms_norm_eps, "rope_theta": m.rope_theta, "partial_rotary_factor": m.rotary_dim / m.head_dim,
        "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0, "clip_qkv": None,
        "num_experts_per_tok": moe.top_k, "num_experts": moe.experts, "router_aux_loss_coef": moe.load_balance_coef,
        "norm_topk_prob": False, "qk_layernorm": m.qk_norm, "moe_layer_freq": [0] * k + [1] * (m.n_layers - k),
        "moe_router_enable_expert_bias": False, "moe_router_score_function": "softmax", "routed_scaling_factor": 1,
        "tie_word_embeddings": False, "use_cache": False, "output_router_logits": False,
        "mask_token_id": m.mask_token_id, "eos_token_id": m.eos_token_id, "pad_token_id": m.pad_token_id,
        "torch_dtype": torch_dtype,
    }


REQUIRED = (("attention_bias", False, False), ("clip_qkv", None, None), ("tie_word_embeddings", False, False),
            ("hidden_act", "silu", "silu"), ("rope_scaling", None, None), ("moe_router_enable_expert_bias", False, False))


def model_fields(hf: dict) -> dict:
    """Our config.model fields (with the `moe` section) from a LLaDA-MoE config.json."""
    for field, want, default in REQUIRED:
        if (hf.get(field, default) or default) != want:
            raise ConfigError(f"config.json has {field}={hf.get(field)!r}; llada_jax's LLaDA-MoE model needs "
                              f"{field}={want!r}, so this checkpoint cannot be imported")
    n, heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    freq = list(hf.get("moe_layer_freq") or [1] * n)
    dense = freq.index(1) if 1 in freq else n
    if freq != [0] * dense + [1] * (n - dense) or dense == n:
        raise ConfigError(f"config.json has moe_layer_freq={freq}; llada_jax's model needs its dense layers first and "
                          "at least one MoE layer")
    expert, shared = hf["expert_intermediate_size"], hf.get("shared_expert_intermediate_size") or 0
    if shared % expert:
        raise ConfigError(f"config.json has shared_expert_intermediate_size={shared}, not a multiple of "
                          f"expert_intermediate_size={expert}; llada_jax's shared experts are expert-sized")
    factor = hf.get("partial_rotary_factor") or 1.0
    head_dim = hf["hidden_size"] // heads
    moe = {"experts": hf["num_experts"], "top_k": hf["num_experts_per_tok"], "expert_hidden": expert,
           "shared_experts": shared // expert, "first_dense_layers": dense, "router": "softmax", "norm_topk": False,
           "routed_scaling": 1.0, "n_groups": 1, "topk_groups": 1, "expert_bias": False,
           "load_balance_coef": float(hf.get("router_aux_loss_coef", 0.0))}
    return {"family": "llada_moe", "d_model": hf["hidden_size"], "n_layers": n, "n_heads": heads,
            "n_kv_heads": hf.get("num_key_value_heads") or heads, "head_dim": head_dim,
            "mlp_hidden": hf.get("dense_intermediate_size") or 4 * hf["hidden_size"], "vocab_size": hf["vocab_size"],
            "max_seq_len": hf.get("max_position_embeddings", 4096), "rope_theta": float(hf.get("rope_theta", 50000.0)),
            "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-5)), "qk_norm": bool(hf.get("qk_layernorm")),
            "rotary_dim": int(head_dim * factor) if factor > 0 else head_dim, "causal": False,
            "mask_token_id": hf.get("mask_token_id", MASK_TOKEN_ID),
            "eos_token_id": first_id(hf.get("eos_token_id"), EOS_TOKEN_ID),
            "pad_token_id": first_id(hf.get("pad_token_id"), EOS_TOKEN_ID), "moe": moe}
