"""The Qwen2 / Qwen2.5 Hugging Face format (Qwen2ForCausalLM): Llama's names plus biases on the q/k/v
projections (`model.layers.{i}.self_attn.q_proj.bias`; the output projection has none), often a head tied to
the embedding (the 0.5B-3B models). An AR checkpoint to start a diffusion run from."""
from __future__ import annotations

from llada_jax.config import ModelConfig
from llada_jax.interop import llama_format

NAME = "qwen2"
MODEL_TYPE = "qwen2"
ARCHITECTURE = "Qwen2ForCausalLM"
AUTOREGRESSIVE = True
OPTIONS = ("qkv_bias", "tie_embeddings")
REQUIRES = ("qkv_bias",)  # Qwen2's attention always has them

LAYER_NAMES = dict(llama_format.LAYER_NAMES, q_bias="self_attn.q_proj.bias", k_bias="self_attn.k_proj.bias",
                   v_bias="self_attn.v_proj.bias")
LAYER_PREFIX = llama_format.LAYER_PREFIX
TOP_NAMES = llama_format.TOP_NAMES
IGNORED_SUFFIXES = llama_format.IGNORED_SUFFIXES


def hf_config(m: ModelConfig, torch_dtype: str) -> dict:
    """Qwen2Config's fields (full attention in every layer)."""
    return dict(llama_format.ar_hf_config(m, torch_dtype, MODEL_TYPE, ARCHITECTURE), use_sliding_window=False,
                sliding_window=None, max_window_layers=m.n_layers)


def model_fields(hf: dict) -> dict:
    """Our config.model fields from a Qwen2 config.json."""
    return dict(llama_format.ar_model_fields(hf), qkv_bias=True)
