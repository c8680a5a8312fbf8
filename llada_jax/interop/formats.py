"""The checkpoint-format registry: which Hugging Face format a model exports to and a config.json imports from.

A format is a module with NAME, MODEL_TYPE, LAYER_NAMES / LAYER_PREFIX / TOP_NAMES (our param keys -> its
tensor names), OPTIONS (the optional model features it can carry, of `model_options`), optionally REQUIRES
(options every model in it has, e.g. Qwen2's q/k/v biases) and AUTOREGRESSIVE (an AR architecture: imported
as the init of a diffusion run), `hf_config(model_config, torch_dtype)` and `model_fields(hf_config_dict)`.
A new format (a new model family's official release) is one module and one entry here; config.HF_FORMATS
lists the dense ones a model.hf_format may name.
"""
from __future__ import annotations

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.interop import llada2_format, llada_format, llada_moe_format, llama_format, qwen2_format, qwen3_format

# the mixture-of-experts formats first: LLaDA-MoE's official config.json says model_type "llada" too (its
# `matches` tells it apart by its architecture)
FORMATS = {f.NAME: f for f in (llada_moe_format, llada2_format, llada2_format.STACKED, llada_format, llama_format,
                               qwen2_format, qwen3_format)}
EXPERT_LAYOUTS = ("per-expert", "stacked")  # how a mixture of experts' file holds the experts (convert to-hf)


def for_model(cfg: ModelConfig, expert_layout: str = "per-expert"):
    """The format a model exports to: a mixture of experts to its family's (LLaDA2.0's files hold one tensor per
    expert, or all of a layer's in one with expert_layout="stacked", as dFactory trains them); a dense model to
    the architecture it was imported from (model.hf_format), else the official LLaDA one for a mask predictor and
    Llama for the AR baseline."""
    if expert_layout not in EXPERT_LAYOUTS:
        raise ConfigError(f"--expert-layout={expert_layout} is unknown; use one of {', '.join(EXPERT_LAYOUTS)}")
    if cfg.family == "llada2_moe":
        return llada2_format.STACKED if expert_layout == "stacked" else llada2_format
    if expert_layout == "stacked":
        raise ConfigError(f"--expert-layout=stacked is LLaDA2.0's (dFactory's) layout; a {cfg.family} model is written "
                          "with one tensor per expert, as its release stores it")
    if cfg.family == "llada_moe":
        return llada_moe_format
    if cfg.hf_format:
        return FORMATS[cfg.hf_format]
    return llama_format if cfg.causal else llada_format


def for_hf_config(hf: dict):
    """The format whose model_type a config.json declares; one sentence when none reads it."""
    kind = hf.get("model_type")
    for fmt in FORMATS.values():
        if fmt.matches(hf) if hasattr(fmt, "matches") else fmt.MODEL_TYPE == kind:
            return fmt
    known = " or ".join(sorted({repr(f.MODEL_TYPE) for f in FORMATS.values()}))
    raise ConfigError(f"config.json has model_type={kind!r}; llada_jax imports {known} checkpoints")


def model_options(cfg: ModelConfig) -> set[str]:
    """The optional architecture features a model uses (a format must carry each of them to export it)."""
    used = {"qk_norm": cfg.qk_norm, "qkv_bias": cfg.qkv_bias, "tie_embeddings": cfg.tie_embeddings,
            "partial_rotary": cfg.rotary_dim != cfg.head_dim, "experts": cfg.is_moe}
    return {name for name, on in used.items() if on}


def check_representable(fmt, cfg: ModelConfig) -> None:
    """One sentence when the model uses a feature the format has no field or tensor for."""
    missing = sorted(model_options(cfg) - set(fmt.OPTIONS))
    if missing:
        raise ConfigError(f"the {fmt.NAME} format cannot hold a model with {', '.join(missing)}; this model "
                          f"cannot be exported to it")
    lacking = sorted(set(getattr(fmt, "REQUIRES", ())) - model_options(cfg))
    if lacking:
        raise ConfigError(f"the {fmt.NAME} format needs a model with {', '.join(lacking)}; this model has none, so "
                          "it cannot be exported to it (set model.hf_format='' for the LLaDA format)")
