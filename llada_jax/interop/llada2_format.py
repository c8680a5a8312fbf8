"""The LLaDA2.0 Hugging Face format (model_type "llada2_moe", LLaDA2MoeModelLM, loaded with trust_remote_code).

Names (inclusionAI's modeling_llada2_moe.py): `model.word_embeddings.weight`, per layer `input_layernorm`,
`attention.query_key_value` (q, k and v fused: [(heads + 2 kv_heads) * head_dim, hidden]), `attention.query_layernorm`
/ `key_layernorm` (QK-norm), `attention.dense`, `post_attention_layernorm`; a dense layer's `mlp.gate_proj` /
`up_proj` / `down_proj`; an MoE layer's `mlp.gate.weight` (router, [experts, hidden]), `mlp.gate.expert_bias`,
`mlp.experts.{e}.gate_proj.weight` ... one tensor per expert (the released checkpoints), and
`mlp.shared_experts.*`; `model.norm.weight`, `lm_head.weight`. dFactory trains from a "stacked" copy
(model_type "llada2_moe_veomni") that holds a layer's experts in one tensor each, `mlp.experts.gate_proj`
[experts, expert_hidden, hidden] (no `.weight`): STACKED below reads and writes that one.

The released modeling code fixes what our model makes optional: sigmoid router scores, QK-norm, top-k weights
renormalised whenever top_k > 1, an expert bias buffer in every MoE layer; a model without those is refused.
"""
from __future__ import annotations

import types

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.interop.llada_format import first_id
from llada_jax.interop.tensor_layout import Planned, planned

NAME = "llada2"
MODEL_TYPE = "llada2_moe"
OPTIONS = ("qk_norm", "partial_rotary", "experts")
MASK_TOKEN_ID = 156895  # LLaDA2.0's <|mask|>; its config.json does not say
EOS_TOKEN_ID = 156892  # <|endoftext|>

ATTENTION = (("attn_norm", "input_layernorm.weight", "copy"), ("q_norm", "attention.query_layernorm.weight", "copy"),
             ("k_norm", "attention.key_layernorm.weight", "copy"), ("attn_out", "attention.dense.weight", "heads_out"),
             ("ff_norm", "post_attention_layernorm.weight", "copy"))
DENSE_MLP = (("ff_proj", "mlp.gate_proj.weight"), ("up_proj", "mlp.up_proj.weight"), ("ff_out", "mlp.down_proj.weight"))
EXPERTS = (("expert_gate", "gate_proj"), ("expert_up", "up_proj"), ("expert_down", "down_proj"))
SHARED = (("shared_gate", "mlp.shared_experts.gate_proj.weight"), ("shared_up", "mlp.shared_experts.up_proj.weight"),
          ("shared_down", "mlp.shared_experts.down_proj.weight"))


def layer_source(cfg: ModelConfig, i: int, key: str):
    """Our (path, index) of layer i's `key`: the dense stack for the first layers, the MoE stack after."""
    k = cfg.moe.first_dense_layers
    return (("dense_blocks", key), (i,)) if i < k else (("moe_blocks", key), (i - k,))


def planned_tensors(cfg: ModelConfig, shapes: dict, stacked: bool = False) -> list[Planned]:
    """Every tensor in file order, key by key over the layers (so export holds one stacked leaf at a time)."""
    p = "model.layers.{i}."
    layers, moe_layers = range(cfg.n_layers), range(cfg.moe.first_dense_layers, cfg.n_layers)
    out = [planned("model.word_embeddings.weight", "copy", shapes, (("wte",), ())),
           planned("model.norm.weight", "copy", shapes, (("ln_f",), ())),
           planned("lm_head.weight", "transpose", shapes, (("ff_out",), ()))]
    out += [planned(p.format(i=i) + "attention.query_key_value.weight", "fused_qkv", shapes,
                    *(layer_source(cfg, i, key) for key in ("q_proj", "k_proj", "v_proj"))) for i in layers]
    for key, name, kind in ATTENTION:
        out += [planned(p.format(i=i) + name, kind, shapes, layer_source(cfg, i, key)) for i in layers]
    for key, name in DENSE_MLP:
        out += [planned(p.format(i=i) + name, "transpose", shapes, layer_source(cfg, i, key))
                for i in range(cfg.moe.first_dense_layers)]
    out += [planned(p.format(i=i) + "mlp.gate.weight", "transpose", shapes, layer_source(cfg, i, "router"))
            for i in moe_layers]
    out += [_expert_bias(cfg, shapes, p.format(i=i) + "mlp.gate.expert_bias", i) for i in moe_layers]
    for key, name in EXPERTS:
        out += _experts(cfg, shapes, key, name, stacked)
    for key, name in SHARED if cfg.moe.shared_experts else ():
        out += [planned(p.format(i=i) + name, "transpose", shapes, layer_source(cfg, i, key)) for i in moe_layers]
    return out


def _expert_bias(cfg: ModelConfig, shapes: dict, name: str, i: int) -> Planned:
    """The buffer every MoE layer of the released code has: ours, or zeros (no bias) for a model without one."""
    if cfg.moe.expert_bias:
        return planned(name, "copy", shapes, layer_source(cfg, i, "expert_bias"))
    return Planned(name, (cfg.moe.experts,), (), "zeros")


def _experts(cfg: ModelConfig, shapes: dict, key: str, name: str, stacked: bool) -> list[Planned]:
    p = "model.layers.{i}.mlp.experts."
    layers = range(cfg.moe.first_dense_layers, cfg.n_layers)
    if stacked:
        return [planned(p.format(i=i) + name, "experts_transpose", shapes, layer_source(cfg, i, key)) for i in layers]
    out = []
    for i in layers:
        (path, (j,)) = layer_source(cfg, i, key)
        out += [planned(p.format(i=i) + f"{e}.{name}.weight", "transpose", shapes, (path, (j, e)))
                for e in range(cfg.moe.experts)]
    return out


def check_exportable(m: ModelConfig) -> None:
    """One sentence for a model the released modeling code would compute differently."""
    moe = m.moe
    if moe.router != "sigmoid" or not m.qk_norm or (moe.top_k > 1 and not moe.norm_topk):
        raise ConfigError("the LLaDA2.0 format's model always has sigmoid router scores, QK-norm and renormalised "
                          f"top-k weights; this one has router={moe.router!r}, qk_norm={m.qk_norm}, norm_topk="
                          f"{moe.norm_topk}, so it cannot be exported to it")


def hf_config(m: ModelConfig, torch_dtype: str, stacked: bool = False) -> dict:
    """config.json with the fields of LLaDA2.0's released configuration (dFactory's configs/model_configs)."""
    check_exportable(m)
    moe = m.moe
    return {
        "model_type": "llada2_moe_veomni" if stacked else MODEL_TYPE, "architectures": ["LLaDA2MoeModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                     "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                     "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
        "vocab_size": m.vocab_size, "hidden_size": m.d_model, "num_hidden_layers": m.n_layers,
        "num_attention_heads": m.n_heads, "num_key_value_heads": m.n_kv_heads, "head_dim": m.head_dim,
        "intermediate_size": m.mlp_hidden, "hidden_act": "silu", "max_position_embeddings": m.max_seq_len,
        "rope_theta": m.rope_theta, "rope_scaling": None, "rotary_dim": m.rotary_dim,
        "partial_rotary_factor": m.rotary_dim / m.head_dim, "rms_norm_eps": m.rms_norm_eps, "use_rmsnorm": True,
        "use_qkv_bias": False, "use_bias": False, "norm_head": False, "tie_word_embeddings": False,
        "num_experts": moe.experts, "num_experts_per_tok": moe.top_k, "moe_intermediate_size": moe.expert_hidden,
        "num_shared_experts": moe.shared_experts or None, "first_k_dense_replace": moe.first_dense_layers,
        "norm_topk_prob": moe.norm_topk, "routed_scaling_factor": moe.routed_scaling, "n_group": moe.n_groups,
        "topk_group": moe.topk_groups, "score_function": "sigmoid", "router_dtype": "fp32",
        "moe_router_enable_expert_bias": moe.expert_bias, "initializer_range": m.init_std,
        "attention_dropout": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0, "use_cache": False,
        "output_router_logits": False, "using_split_qkv_in_self_attention": False, "use_sliding_window": False,
        "mask_token_id": m.mask_token_id, "eos_token_id": m.eos_token_id, "pad_token_id": m.pad_token_id,
        "torch_dtype": torch_dtype,
    }


# config.json values the released code cannot run as our model does: (field, value it must have, default)
REQUIRED = (("use_qkv_bias", False, False), ("use_bias", False, False), ("tie_word_embeddings", False, False),
            ("norm_head", False, False), ("hidden_act", "silu", "silu"), ("rope_scaling", None, None),
            ("score_function", "sigmoid", "sigmoid"))


def model_fields(hf: dict) -> dict:
    """Our config.model fields (with the `moe` section) from a LLaDA2.0 config.json."""
    for field, want, default in REQUIRED:
        if hf.get(field, default) != want:
            raise ConfigError(f"config.json has {field}={hf.get(field)!r}; llada_jax's LLaDA2.0 model needs "
                              f"{field}={want!r}, so this checkpoint cannot be imported")
    if not hf.get("num_experts"):
        raise ConfigError("config.json has no num_experts; a LLaDA2.0 checkpoint is a mixture of experts")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    rotary = hf.get("rotary_dim") or int(head_dim * hf.get("partial_rotary_factor", 1.0))
    top_k = hf["num_experts_per_tok"]
    moe = {"experts": hf["num_experts"], "top_k": top_k, "expert_hidden": hf["moe_intermediate_size"],
           "shared_experts": hf.get("num_shared_experts") or 0, "first_dense_layers": hf.get("first_k_dense_replace", 0),
           "router": "sigmoid", "norm_topk": top_k > 1, "routed_scaling": float(hf.get("routed_scaling_factor", 1.0)),
           "n_groups": hf.get("n_group") or 1, "topk_groups": hf.get("topk_group") or 1, "expert_bias": True}
    if not hf.get("moe_router_enable_expert_bias", True):
        moe["bias_update_rate"] = 0.0  # the buffer exists (and is used) but was not trained: keep it still
    return {"family": "llada2_moe", "d_model": hf["hidden_size"], "n_layers": hf["num_hidden_layers"],
            "n_heads": heads, "n_kv_heads": hf.get("num_key_value_heads") or heads, "head_dim": head_dim,
            "mlp_hidden": hf.get("intermediate_size") or 4 * hf["hidden_size"], "vocab_size": hf["vocab_size"],
            "max_seq_len": hf.get("max_position_embeddings", 4096), "rope_theta": float(hf.get("rope_theta", 600000.0)),
            "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)), "qk_norm": True, "rotary_dim": rotary,
            "causal": False, "mask_token_id": hf.get("mask_token_id", MASK_TOKEN_ID),
            "eos_token_id": first_id(hf.get("eos_token_id"), EOS_TOKEN_ID),
            "pad_token_id": first_id(hf.get("pad_token_id"), EOS_TOKEN_ID), "moe": moe}


def _stacked_plan(cfg: ModelConfig, shapes: dict) -> list[Planned]:
    return planned_tensors(cfg, shapes, stacked=True)


def _stacked_config(m: ModelConfig, torch_dtype: str) -> dict:
    return hf_config(m, torch_dtype, stacked=True)


# dFactory's training copy of the format: the same model, each layer's experts in one tensor per projection
STACKED = types.SimpleNamespace(NAME="llada2_stacked", MODEL_TYPE="llada2_moe_veomni", OPTIONS=OPTIONS,
                                planned_tensors=_stacked_plan, hf_config=_stacked_config, model_fields=model_fields)
