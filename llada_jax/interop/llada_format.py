"""The official LLaDA Hugging Face format (model_type "llada", LLaDAModelLM, loaded with trust_remote_code).

Names: `model.transformer.blocks.{i}.q_proj.weight`, ..., `model.transformer.ff_out.weight` (the untied head);
config.json carries the OLMo-style fields of the official configuration_llada.py.
"""
from __future__ import annotations

from llada_jax.config import ConfigError, ModelConfig

NAME = "llada"
MODEL_TYPE = "llada"
OPTIONS = ()  # none of formats.model_options: a plain LLaMA-style block

# our per-layer key -> its name inside a layer
LAYER_NAMES = {"attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
               "attn_out": "attn_out", "ff_norm": "ff_norm", "ff_proj": "ff_proj", "up_proj": "up_proj",
               "ff_out": "ff_out"}
LAYER_PREFIX = "model.transformer.blocks.{i}."
TOP_NAMES = {"wte": "model.transformer.wte.weight", "ln_f": "model.transformer.ln_f.weight",
             "ff_out": "model.transformer.ff_out.weight"}

# config.json values the llada_jax model cannot represent: (field, value it must have, default when absent)
REQUIRED = (("include_bias", False, False), ("include_qkv_bias", False, False), ("weight_tying", False, True),
            ("alibi", False, False), ("rope", True, False), ("block_type", "llama", "sequential"),
            ("activation_type", "silu", "swiglu"), ("layer_norm_type", "rms", "default"),
            ("layer_norm_with_affine", True, True), ("attention_layer_norm", False, False),
            ("input_emb_norm", False, False), ("scale_logits", False, False), ("clip_qkv", None, None))


def hf_config(m: ModelConfig, torch_dtype: str) -> dict:
    """config.json with the official LLaDA fields; one sentence for a shape the format cannot express."""
    if m.head_dim * m.n_heads != m.d_model:
        raise ConfigError(f"head_dim={m.head_dim} x n_heads={m.n_heads} != d_model={m.d_model}; the LLaDA format "
                          "derives head_dim from d_model / n_heads, so this model cannot be exported to it")
    return {
        "model_type": "llada", "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "d_model": m.d_model, "n_heads": m.n_heads, "n_kv_heads": m.n_kv_heads, "multi_query_attention": None,
        "n_layers": m.n_layers, "mlp_hidden_size": m.mlp_hidden, "mlp_ratio": max(1, round(m.mlp_hidden / m.d_model)),
        "vocab_size": m.vocab_size, "embedding_size": m.vocab_size, "max_sequence_length": m.max_seq_len,
        "rope": True, "rope_theta": m.rope_theta, "rope_full_precision": True, "alibi": False, "alibi_bias_max": 8.0,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "rms_norm_eps": m.rms_norm_eps,
        "activation_type": "silu", "block_type": "llama", "block_group_size": 1, "include_bias": False,
        "include_qkv_bias": False, "bias_for_layer_norm": False, "weight_tying": False, "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True, "input_emb_norm": False, "scale_logits": False,
        "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0, "flash_attention": False,
        "init_fn": "normal", "init_std": m.init_std, "mask_token_id": m.mask_token_id, "eos_token_id": m.eos_token_id,
        "pad_token_id": m.pad_token_id, "torch_dtype": torch_dtype, "use_cache": False,
    }


def model_fields(hf: dict) -> dict:
    """Our config.model fields from an official config.json; absent fields take the official code's defaults."""
    for field, want, default in REQUIRED:
        if hf.get(field, default) != want:
            shown = f"{field}={hf.get(field, default)!r}" + ("" if field in hf else " (the default when absent)")
            raise ConfigError(f"config.json has {shown}; llada_jax's model needs {field}={want!r} "
                              "(a LLaMA-style block), so this checkpoint cannot be imported")
    n_kv = hf.get("n_kv_heads") or (1 if hf.get("multi_query_attention") else hf["n_heads"])
    vocab, rows = hf["vocab_size"], hf.get("embedding_size") or hf["vocab_size"]
    if rows < vocab:
        raise ConfigError(f"config.json has embedding_size={rows} < vocab_size={vocab}; the embedding must have a "
                          "row for every token id, fix config.json")
    if hf["d_model"] % hf["n_heads"]:
        raise ConfigError(f"config.json has d_model={hf['d_model']} not divisible by n_heads={hf['n_heads']}")
    return {"d_model": hf["d_model"], "n_layers": hf["n_layers"], "n_heads": hf["n_heads"], "n_kv_heads": n_kv,
            "head_dim": hf["d_model"] // hf["n_heads"], "mlp_hidden": hf.get("mlp_hidden_size")
            or hf.get("mlp_ratio", 4) * hf["d_model"], "vocab_size": rows,
            "max_seq_len": hf.get("max_sequence_length", 4096), "rope_theta": float(hf.get("rope_theta", 10000.0)),
            "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-5)), "causal": False,
            "mask_token_id": hf.get("mask_token_id", 126336), "eos_token_id": first_id(hf.get("eos_token_id"), 126081),
            "pad_token_id": first_id(hf.get("pad_token_id"), 126081)}


def first_id(value, default):
    """Llama 3 configs list several EOS ids; the first is the one our config keeps."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value
