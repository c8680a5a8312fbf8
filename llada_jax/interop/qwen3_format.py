"""The Qwen3 Hugging Face format (Qwen3ForCausalLM): Llama's names plus QK-norm, an RMSNorm over each head of
q and k before RoPE (`model.layers.{i}.self_attn.q_norm.weight`, `k_norm`), and a head_dim that need not be
hidden_size / heads. An AR checkpoint to start a diffusion run from."""
from __future__ import annotations

from llada_jax.config import ModelConfig
from llada_jax.interop import llama_format

NAME = "qwen3"
MODEL_TYPE = "qwen3"
ARCHITECTURE = "Qwen3ForCausalLM"
AUTOREGRESSIVE = True
OPTIONS = ("qk_norm", "tie_embeddings")
REQUIRES = ("qk_norm",)  # every Qwen3 attention layer normalises q and k

LAYER_NAMES = dict(llama_format.LAYER_NAMES, q_norm="self_attn.q_norm", k_norm="self_attn.k_norm")
LAYER_PREFIX = llama_format.LAYER_PREFIX
TOP_NAMES = llama_format.TOP_NAMES
IGNORED_SUFFIXES = llama_format.IGNORED_SUFFIXES


def hf_config(m: ModelConfig, torch_dtype: str) -> dict:
    """Qwen3Config's fields (no attention biases, full attention in every layer)."""
    return dict(llama_format.ar_hf_config(m, torch_dtype, MODEL_TYPE, ARCHITECTURE), attention_bias=False,
                use_sliding_window=False, sliding_window=None, max_window_layers=m.n_layers)


def model_fields(hf: dict) -> dict:
    """Our config.model fields from a Qwen3 config.json."""
    llama_format.refuse_output_bias(hf)
    return dict(llama_format.ar_model_fields(hf), qk_norm=True)
