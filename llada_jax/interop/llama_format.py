"""The standard Llama Hugging Face format (LlamaForCausalLM): the autoregressive baseline's export, and
Llama checkpoints as a starting point. Names: `model.layers.{i}.self_attn.q_proj.weight`, ..., `lm_head.weight`."""
from __future__ import annotations

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.interop.llada_format import first_id

NAME = "llama"
MODEL_TYPE = "llama"
OPTIONS = ()  # none of formats.model_options

LAYER_NAMES = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
               "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
               "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
LAYER_PREFIX = "model.layers.{i}."
TOP_NAMES = {"wte": "model.embed_tokens.weight", "ln_f": "model.norm.weight", "ff_out": "lm_head.weight"}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some Llama exports carry; no weight of ours


def hf_config(m: ModelConfig, torch_dtype: str) -> dict:
    """LlamaConfig's fields (both transformers 4.x and 5.x spellings of the RoPE settings)."""
    return {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": m.d_model,
        "intermediate_size": m.mlp_hidden, "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads, "head_dim": m.head_dim, "hidden_act": "silu",
        "max_position_embeddings": m.max_seq_len, "rms_norm_eps": m.rms_norm_eps, "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},  # transformers >= 5 spelling
        "rope_scaling": None, "vocab_size": m.vocab_size, "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "attention_dropout": 0.0, "initializer_range": m.init_std, "bos_token_id": None,
        "eos_token_id": m.eos_token_id, "pad_token_id": m.pad_token_id, "mask_token_id": m.mask_token_id,
        "torch_dtype": torch_dtype, "use_cache": True,
    }


def model_fields(hf: dict) -> dict:
    """Our config.model fields from a Llama config.json (a causal model: the AR baseline's architecture)."""
    if hf.get("tie_word_embeddings", False):
        raise ConfigError("config.json has tie_word_embeddings=true; llada_jax's model has an untied output head")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ConfigError("config.json describes a Llama variant with biases or a non-SiLU MLP; llada_jax's model "
                          "has neither, so this checkpoint cannot be imported")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConfigError(f"config.json uses {rope.get('rope_type', rope.get('type'))!r} RoPE scaling; llada_jax's "
                          "model implements plain RoPE only, so this checkpoint cannot be imported")
    heads = hf["num_attention_heads"]
    return {"d_model": hf["hidden_size"], "n_layers": hf["num_hidden_layers"], "n_heads": heads,
            "n_kv_heads": hf.get("num_key_value_heads") or heads,
            "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads, "mlp_hidden": hf["intermediate_size"],
            "vocab_size": hf["vocab_size"], "max_seq_len": hf.get("max_position_embeddings", 4096),
            "rope_theta": float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
            "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)), "causal": True,
            "eos_token_id": first_id(hf.get("eos_token_id"), 0), "pad_token_id": first_id(hf.get("pad_token_id"), 0),
            "mask_token_id": hf.get("mask_token_id", 0)}  # unused by an AR model; kept for the round trip
