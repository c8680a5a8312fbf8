"""The checkpoint-format registry: which Hugging Face format a model exports to and a config.json imports from.

A format is a module with NAME, MODEL_TYPE, LAYER_NAMES / LAYER_PREFIX / TOP_NAMES (our param keys -> its
tensor names), `hf_config(model_config, torch_dtype)` and `model_fields(hf_config_dict)`. A new format (a new
model family's official release) is one module and one entry here.
"""
from __future__ import annotations

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.interop import llada_format, llama_format

FORMATS = {f.NAME: f for f in (llada_format, llama_format)}


def for_model(cfg: ModelConfig):
    """The format a model exports to: a mask predictor to the official LLaDA one, the AR baseline to Llama."""
    return llama_format if cfg.causal else llada_format


def for_hf_config(hf: dict):
    """The format whose model_type a config.json declares; one sentence when none reads it."""
    kind = hf.get("model_type")
    for fmt in FORMATS.values():
        if fmt.MODEL_TYPE == kind:
            return fmt
    known = " or ".join(repr(f.MODEL_TYPE) for f in FORMATS.values())
    raise ConfigError(f"config.json has model_type={kind!r}; llada_jax imports {known} checkpoints")
