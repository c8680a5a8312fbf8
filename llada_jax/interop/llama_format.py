"""The standard Llama Hugging Face format (LlamaForCausalLM): the autoregressive baseline's export, and
Llama checkpoints as a starting point. Names: `model.layers.{i}.self_attn.q_proj.weight`, ..., `lm_head.weight`
(absent when the head is tied to the embedding, as in Llama 3.2 1B/3B).

The helpers here (`ar_hf_config`, `ar_model_fields`) serve every decoder-only architecture with these names
(qwen2_format.py, qwen3_format.py): they differ only in their optional attention tensors.
"""
from __future__ import annotations

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.interop.llada_format import first_id

NAME = "llama"
MODEL_TYPE = "llama"
ARCHITECTURE = "LlamaForCausalLM"
AUTOREGRESSIVE = True  # an AR checkpoint: imported as the init of a diffusion run (model.causal=False) by default
OPTIONS = ("tie_embeddings",)  # of formats.model_options
REQUIRES = ()  # options a model must have to be written in this format

LAYER_NAMES = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
               "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
               "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
LAYER_PREFIX = "model.layers.{i}."
TOP_NAMES = {"wte": "model.embed_tokens.weight", "ln_f": "model.norm.weight", "ff_out": "lm_head.weight"}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some Llama exports carry; no weight of ours


def ar_hf_config(m: ModelConfig, torch_dtype: str, model_type: str, architecture: str) -> dict:
    """The config.json fields Llama, Qwen2 and Qwen3 share (both transformers 4.x and 5.x spellings of RoPE)."""
    return {
        "model_type": model_type, "architectures": [architecture], "hidden_size": m.d_model,
        "intermediate_size": m.mlp_hidden, "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
        "num_key_value_heads": m.n_kv_heads, "head_dim": m.head_dim, "hidden_act": "silu",
        "max_position_embeddings": m.max_seq_len, "rms_norm_eps": m.rms_norm_eps, "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},  # transformers >= 5 spelling
        "rope_scaling": None, "vocab_size": m.vocab_size, "tie_word_embeddings": m.tie_embeddings,
        "attention_dropout": 0.0, "initializer_range": m.init_std, "bos_token_id": None,
        "eos_token_id": m.eos_token_id, "pad_token_id": m.pad_token_id, "mask_token_id": m.mask_token_id,
        "torch_dtype": torch_dtype, "use_cache": True,
    }


def hf_config(m: ModelConfig, torch_dtype: str) -> dict:
    """LlamaConfig's fields."""
    return dict(ar_hf_config(m, torch_dtype, MODEL_TYPE, ARCHITECTURE), attention_bias=False, mlp_bias=False)


def check_plain_rope(hf: dict) -> None:
    """One sentence for RoPE scaling, which the model does not implement."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ConfigError(f"config.json uses {kind!r} RoPE scaling; llada_jax's model implements plain RoPE only, "
                          "so this checkpoint cannot be imported")
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ConfigError("config.json sets partial_rotary_factor, which this architecture's own code ignores; "
                          "remove it or import the checkpoint in a format that rotates part of each head")


def ar_model_fields(hf: dict) -> dict:
    """Our config.model fields from a Llama-style config.json, as the checkpoint is: a causal model.
    hf_import decides whether the import stays causal (our own AR baseline coming back) or becomes the
    bidirectional init of a diffusion run. A checkpoint without a mask token gets the last id of its
    vocabulary (unused padding rows in Qwen, a reserved token in Llama 3); --config.model.mask_token_id
    chooses another."""
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias"):
        raise ConfigError("config.json describes a variant with MLP biases or a non-SiLU MLP; llada_jax's model "
                          "has neither, so this checkpoint cannot be imported")
    if hf.get("use_sliding_window"):
        raise ConfigError("config.json turns on sliding-window attention (use_sliding_window=true); llada_jax's "
                          "model attends to the whole sequence, so this checkpoint cannot be imported")
    check_plain_rope(hf)
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    heads, vocab = hf["num_attention_heads"], hf["vocab_size"]
    return {"d_model": hf["hidden_size"], "n_layers": hf["num_hidden_layers"], "n_heads": heads,
            "n_kv_heads": hf.get("num_key_value_heads") or heads,
            "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads, "mlp_hidden": hf["intermediate_size"],
            "vocab_size": vocab, "max_seq_len": hf.get("max_position_embeddings", 4096),
            "rope_theta": float(hf.get("rope_theta", rope.get("rope_theta", 10000.0))),
            "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-6)), "causal": True,
            "tie_embeddings": bool(hf.get("tie_word_embeddings", False)), "qkv_bias": False, "qk_norm": False,
            "eos_token_id": first_id(hf.get("eos_token_id"), 0), "pad_token_id": first_id(hf.get("pad_token_id"), 0),
            "mask_token_id": hf.get("mask_token_id", vocab - 1)}


def refuse_output_bias(hf: dict) -> None:
    """One sentence for attention_bias=true (Llama's and Qwen3's flag also biases the output projection)."""
    if hf.get("attention_bias"):
        raise ConfigError("config.json has attention_bias=true (a bias on the output projection too); llada_jax's "
                          "model has q/k/v biases only, so this checkpoint cannot be imported")


def model_fields(hf: dict) -> dict:
    """Our config.model fields from a Llama config.json."""
    refuse_output_bias(hf)
    return ar_model_fields(hf)
