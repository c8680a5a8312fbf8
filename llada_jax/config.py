"""Config loading, command-line overrides and start-up validation.

Configs are ml_collections ConfigDicts from `configs/*.py` (each has `get_config()`), overridden on the
command line with `--config.train.steps=200`. Everything a user can get wrong is checked here, before any
array is allocated, so a mistake costs one clear sentence instead of a traceback from inside jit.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import math
import os
from typing import Mapping, Sequence

import ml_collections

REMAT_POLICIES = ("none", "full", "save_dots", "save_proj", "offload_proj")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash", "blockwise")
DTYPES = ("float32", "bfloat16", "float16")
# Names the registries answer to (llada_jax/models/registry.py, llada_jax/objectives/registry.py); listed here
# so a typo is caught before JAX loads. A test keeps them equal to the registries' keys.
MODEL_FAMILIES = ("llada", "llada_moe", "llada2_moe")
OBJECTIVES = ("mdm", "sft", "ar", "block_diffusion")
# Hugging Face architectures a model can be exported as (llada_jax/interop/formats.py); model.hf_format records
# the one it was imported from ("" : LLaDA for a mask predictor, Llama for the AR baseline).
HF_FORMATS = ("llada", "llama", "qwen2", "qwen3")
# Objectives that train on SFT conversations (data.source=sft_jsonl) and on plain documents; the data's kind picks
# pretraining or SFT for those that take both.
CONVERSATION_OBJECTIVES = ("sft", "block_diffusion")
DOCUMENT_OBJECTIVES = ("mdm", "ar", "block_diffusion")
BLOCK_NOISE = ("block", "sequence")  # train.block_noise: one noise level per block (BD3-LM) or per sequence
BLOCK_WEIGHTING = ("elbo", "mean")  # train.block_weighting: CE / p as LLaDA, or mean CE over masked tokens
SCHEDULES = ("wsd", "cosine", "constant")


MOE_ROUTERS = ("softmax", "sigmoid")
MOE_KERNELS = ("auto", "ragged_dot", "megablox", "tiled")


class ConfigError(ValueError):
    """A user-fixable problem with the config; the message names the value and the fix."""


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Typed view of `config.model.moe`: the mixture-of-experts knobs of the llada_moe / llada2_moe families
    (experts=0: a dense model). Every default keeps a checkpoint written before this section existed as it was."""

    experts: int = 0  # routed experts per MoE layer
    top_k: int = 2  # experts each token is sent to
    expert_hidden: int = 0  # SwiGLU hidden size of one routed expert
    shared_experts: int = 0  # always-on experts, fused into one SwiGLU of shared_experts * expert_hidden
    first_dense_layers: int = 0  # leading layers with a dense SwiGLU of model.mlp_hidden instead of experts
    router: str = "softmax"  # softmax | sigmoid scores (the router runs in float32)
    norm_topk: bool = False  # renormalise the chosen experts' scores to sum 1
    routed_scaling: float = 1.0  # the routed experts' weights times this
    n_groups: int = 1  # group-limited routing: experts in n_groups groups ...
    topk_groups: int = 1  # ... and each token picks experts from its topk_groups best groups only
    expert_bias: bool = False  # aux-loss-free balancing: a bias on the scores used for selection only ...
    bias_update_rate: float = 1e-3  # ... moved by this much per step towards the mean load (not by gradients)
    load_balance_coef: float = 0.0  # weight of the load-balancing loss
    z_loss_coef: float = 0.0  # weight of the router z-loss
    capacity_factor: float = 0.0  # 0: dropless; else an expert takes capacity_factor * fair share per device
    kernel: str = "auto"  # grouped matmul: auto | ragged_dot | megablox (TPU) | tiled (pure JAX, any backend)

    @classmethod
    def from_config(cls, moe_cfg) -> "MoEConfig":
        if isinstance(moe_cfg, MoEConfig):
            return moe_cfg
        d = dict(moe_cfg.to_dict() if hasattr(moe_cfg, "to_dict") else (moe_cfg or {}))
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown model.moe field(s) {sorted(unknown)}; see configs/base.py for the valid ones")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Typed, fully resolved view of `config.model` (no 0-means-default fields left)."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    mlp_hidden: int
    family: str = "llada"
    qk_norm: bool = False
    qkv_bias: bool = False
    rotary_dim: int = 0
    tie_embeddings: bool = False
    hf_format: str = ""
    max_seq_len: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    init_std: float = 0.02
    causal: bool = False
    logit_shift: bool = False
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"
    attention: str = "auto"
    attention_block: int = 512
    loss_chunk_tokens: int = 2048
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    moe: MoEConfig = MoEConfig()

    @property
    def is_moe(self) -> bool:
        return self.moe.experts > 0

    @property
    def moe_layers(self) -> int:
        """How many layers route to experts (the rest, first, are dense)."""
        return self.n_layers - self.moe.first_dense_layers if self.is_moe else 0

    @classmethod
    def from_config(cls, model_cfg) -> "ModelConfig":
        d = dict(model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown model config field(s) {sorted(unknown)}; see configs/base.py for the valid ones")
        if not d.get("n_kv_heads"):
            d["n_kv_heads"] = d["n_heads"]
        if not d.get("head_dim"):
            if d["n_heads"] <= 0 or d["d_model"] % d["n_heads"]:
                raise ConfigError(
                    f"model.d_model={d['d_model']} is not divisible by model.n_heads={d['n_heads']}; "
                    "change one of them or set model.head_dim explicitly"
                )
            d["head_dim"] = d["d_model"] // d["n_heads"]
        if not d.get("rotary_dim"):
            d["rotary_dim"] = d["head_dim"]
        d["moe"] = MoEConfig.from_config(d.get("moe"))
        return cls(**d)


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `get_config()` from a config file (or a saved config.json) and applies `--config.a.b=value` overrides."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; pass e.g. --config=configs/tiny.py")
    if path.endswith(".json"):  # a run's saved config: checkpoints and sweep plans store these
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
        for item in overrides:
            apply_override(config, item)
        return config
    spec = importlib.util.spec_from_file_location(f"_llada_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config() function; add one that returns a ConfigDict")
    config = module.get_config()
    for item in overrides:
        apply_override(config, item)
    return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Sets one `train.steps=200` (a leading `--config.` is accepted) with the field's own type."""
    item = item[len("--"):] if item.startswith("--") else item
    item = item[len("config."):] if item.startswith("config.") else item
    if "=" not in item:
        raise ConfigError(f"override {item!r} has no value; write it as --config.{item}=VALUE")
    dotted, raw = item.split("=", 1)
    *parents, leaf = dotted.split(".")
    node, where = config, []
    for i, name in enumerate(parents):
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            sections = [k for k in node.keys() if isinstance(node[k], ml_collections.ConfigDict)]
            hint = _did_you_mean(name, sections, where, [*parents[i + 1:], leaf])
            raise ConfigError(f"unknown config section {dotted!r}{hint}; "
                              "see configs/base.py for the valid fields")
        node, where = node[name], where + [name]
    if leaf not in node:
        raise ConfigError(f"unknown config field {dotted!r}{_did_you_mean(leaf, list(node.keys()), where)}; "
                          "see configs/base.py for the valid fields")
    old = node[leaf]
    try:
        value = _parse_like(raw, old)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ConfigError(
            f"--config.{dotted}={raw!r} is not a valid {type(old).__name__}; give a value like {old!r}"
        ) from None
    node[leaf] = value


def _did_you_mean(name: str, known: Sequence[str], parents: Sequence[str], rest: Sequence[str] = ()) -> str:
    """' (did you mean train.steps?)' for a near miss among the names at that level, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {'.'.join([*parents, close[0], *rest])}?)" if close else ""


def _parse_like(raw: str, old):
    if isinstance(old, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ValueError(raw)
    if isinstance(old, int):
        value = ast.literal_eval(raw)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(raw)
        return value
    if isinstance(old, float):
        return float(raw)
    if isinstance(old, str):
        return raw
    value = ast.literal_eval(raw)
    return value


# fields that count something and must not be negative (0 keeps its documented meaning, e.g. "never")
NON_NEGATIVE = {
    "train": ("eval_every", "eval_batches", "max_nonfinite_in_a_row"),
    "checkpoint": ("every_steps", "every_minutes", "keep_last", "keep_every"),
    "optimizer": ("eps", "warmup_steps", "final_ratio", "wsd_drop_ratio"),
}


def _numbers(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}", value


def check_finite_and_counts(config: ml_collections.ConfigDict) -> None:
    """NaN or infinite numbers anywhere, and negative counts, are refused before anything runs: a NaN learning
    rate would otherwise train to the end and export NaN weights, and -1 batches evaluate nothing."""
    for name, value in _numbers(config):
        if not math.isfinite(value):
            raise ConfigError(f"{name}={value} is not a finite number; give a real value (see configs/base.py)")
    for section, names in NON_NEGATIVE.items():
        node = config.get(section) or {}
        for name in names:
            if name in node and node[name] < 0:
                raise ConfigError(f"{section}.{name}={node[name]} must be >= 0 (0 means off / none)")
    if config.train.get("eval_draws", 1) < 1:
        raise ConfigError(f"train.eval_draws={config.train.eval_draws} must be at least 1")


def validate(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    """Raises ConfigError with one sentence for the first invalid value found, section by section.

    Without `device_count` only the fields are checked, not the mesh: that needs no JAX, so the CLI reports a
    bad value before the heavy imports (in well under a second).
    """
    check_finite_and_counts(config)
    model = validate_model(config.model)
    validate_train(config.train, model)
    validate_checkpoint(config.checkpoint)
    validate_distributed(config.get("distributed"))
    validate_optimizer(config.optimizer)
    validate_moe_mesh(model, config.mesh)
    if device_count is not None:
        validate_mesh(config, device_count)


def validate_model(m) -> ModelConfig:
    """The model section, resolved: shapes positive and consistent, known kernels, dtypes and families."""
    mc = ModelConfig.from_config(m)
    if mc.family not in MODEL_FAMILIES:
        raise ConfigError(f"model.family={mc.family!r} is unknown; use one of {MODEL_FAMILIES}")
    if mc.hf_format and mc.hf_format not in HF_FORMATS:
        raise ConfigError(f"model.hf_format={mc.hf_format!r} is unknown; use '' or one of {HF_FORMATS}")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "max_seq_len"):
        if getattr(mc, name) <= 0:
            raise ConfigError(f"model.{name}={getattr(mc, name)} must be positive")
    if mc.n_heads % mc.n_kv_heads:
        raise ConfigError(
            f"model.n_heads={mc.n_heads} is not a multiple of model.n_kv_heads={mc.n_kv_heads}; "
            "grouped-query attention needs n_heads divisible by n_kv_heads"
        )
    if mc.head_dim % 2:
        raise ConfigError(f"head_dim={mc.head_dim} is odd; rotary embeddings need an even head dimension")
    if mc.rotary_dim % 2 or not 0 < mc.rotary_dim <= mc.head_dim:
        raise ConfigError(f"model.rotary_dim={mc.rotary_dim} must be even and in (0, head_dim={mc.head_dim}] "
                          "(0 rotates the whole head)")
    if mc.remat not in REMAT_POLICIES:
        raise ConfigError(f"model.remat={mc.remat!r} is not a known remat policy; use one of {REMAT_POLICIES}")
    if mc.attention not in ATTENTION_IMPLS:
        raise ConfigError(f"model.attention={mc.attention!r} is unknown; use one of {ATTENTION_IMPLS}")
    for name in ("attention_block", "loss_chunk_tokens"):
        if getattr(mc, name) <= 0:
            raise ConfigError(f"model.{name}={getattr(mc, name)} must be positive")
    for name in ("dtype", "param_dtype"):
        if getattr(mc, name) not in DTYPES:
            raise ConfigError(f"model.{name}={getattr(mc, name)!r} is not a supported dtype; use one of {DTYPES}")
    for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
        if not 0 <= getattr(mc, name) < mc.vocab_size:
            raise ConfigError(
                f"model.{name}={getattr(mc, name)} is outside the vocabulary [0, {mc.vocab_size}); "
                "set it to an id of your tokenizer or grow model.vocab_size"
            )
    validate_moe(mc)
    return mc


def validate_moe(mc: ModelConfig) -> None:
    """The model.moe section: a mixture-of-experts family needs experts, a dense one none; sizes that fit."""
    moe, dense = mc.moe, mc.family == "llada"
    if dense and moe.experts:
        raise ConfigError(f"model.moe.experts={moe.experts} needs a mixture-of-experts family; set "
                          "model.family='llada_moe' or 'llada2_moe' (or model.moe.experts=0 for a dense model)")
    if dense:
        return
    if moe.experts <= 0 or moe.expert_hidden <= 0:
        raise ConfigError(f"model.family={mc.family!r} needs model.moe.experts > 0 and model.moe.expert_hidden > 0 "
                          f"(got {moe.experts} and {moe.expert_hidden})")
    if not 1 <= moe.top_k <= moe.experts:
        raise ConfigError(f"model.moe.top_k={moe.top_k} must be in [1, model.moe.experts={moe.experts}]")
    if not 0 <= moe.first_dense_layers < mc.n_layers:
        raise ConfigError(f"model.moe.first_dense_layers={moe.first_dense_layers} must be in [0, model.n_layers="
                          f"{mc.n_layers}): at least one layer must route to experts")
    if moe.router not in MOE_ROUTERS:
        raise ConfigError(f"model.moe.router={moe.router!r} is unknown; use one of {MOE_ROUTERS}")
    if moe.kernel not in MOE_KERNELS:
        raise ConfigError(f"model.moe.kernel={moe.kernel!r} is unknown; use one of {MOE_KERNELS}")
    _validate_moe_groups(moe)
    for name in ("shared_experts", "bias_update_rate", "load_balance_coef", "z_loss_coef", "capacity_factor"):
        if getattr(moe, name) < 0:
            raise ConfigError(f"model.moe.{name}={getattr(moe, name)} must be >= 0")
    if moe.routed_scaling <= 0:
        raise ConfigError(f"model.moe.routed_scaling={moe.routed_scaling} must be positive")


def _validate_moe_groups(moe: MoEConfig) -> None:
    """Group-limited routing: groups tile the experts and the chosen groups hold at least top_k experts."""
    if moe.n_groups < 1 or moe.experts % moe.n_groups:
        raise ConfigError(f"model.moe.n_groups={moe.n_groups} must divide model.moe.experts={moe.experts}")
    if not 1 <= moe.topk_groups <= moe.n_groups:
        raise ConfigError(f"model.moe.topk_groups={moe.topk_groups} must be in [1, model.moe.n_groups={moe.n_groups}]")
    if moe.topk_groups * (moe.experts // moe.n_groups) < moe.top_k:
        raise ConfigError(f"model.moe.topk_groups={moe.topk_groups} groups of {moe.experts // moe.n_groups} experts "
                          f"hold fewer than model.moe.top_k={moe.top_k}; raise topk_groups or lower top_k")


def validate_moe_mesh(mc: ModelConfig, mesh_cfg) -> None:
    """The expert mesh axis splits the experts evenly (and only a mixture-of-experts model has experts to split)."""
    expert = int(mesh_cfg.get("expert", 1)) * int(mesh_cfg.get("dcn_expert", 1))
    if expert < 1:
        return  # mesh_shapes says what is wrong with it
    if expert > 1 and not mc.is_moe:
        raise ConfigError(f"mesh.expert={expert} needs a mixture-of-experts model (model.family='llada_moe' or "
                          "'llada2_moe'); a dense model has no experts to split, so set mesh.expert=1")
    if mc.is_moe and mc.moe.experts % expert:
        raise ConfigError(f"mesh.expert={expert} does not divide model.moe.experts={mc.moe.experts}; each device "
                          "of the expert axis must hold the same number of experts")


def validate_train(t, mc: ModelConfig) -> None:
    """The train section: a known objective that suits the model, positive counts, a batch that splits."""
    if t.objective not in OBJECTIVES:
        raise ConfigError(f"train.objective={t.objective!r} is unknown; use one of {OBJECTIVES}")
    if t.objective == "ar" and not mc.causal:
        raise ConfigError("train.objective='ar' needs model.causal=True (the autoregressive baseline)")
    if t.objective != "ar" and mc.causal:
        raise ConfigError(f"train.objective={t.objective!r} needs model.causal=False; a mask predictor is bidirectional")
    for name in ("steps", "global_batch_size", "grad_accum_steps", "seq_len", "log_every"):
        if t[name] <= 0:
            raise ConfigError(f"train.{name}={t[name]} must be a positive integer")
    if t.seq_len > mc.max_seq_len:
        raise ConfigError(f"train.seq_len={t.seq_len} exceeds model.max_seq_len={mc.max_seq_len}; lower one or raise the other")
    if t.global_batch_size % t.grad_accum_steps:
        raise ConfigError(
            f"train.global_batch_size={t.global_batch_size} is not divisible by "
            f"train.grad_accum_steps={t.grad_accum_steps}; micro-batches must be equal"
        )
    if not 0.0 < t.mask_eps < 1.0:
        raise ConfigError(f"train.mask_eps={t.mask_eps} must be in (0, 1)")
    if not 0.0 <= t.random_length_fraction <= 1.0:
        raise ConfigError(f"train.random_length_fraction={t.random_length_fraction} must be in [0, 1]")
    validate_mask_embedding_noise(t)
    if t.objective == "block_diffusion":
        validate_block_diffusion(t)
    require_block_decoding({"model": {"logit_shift": mc.logit_shift}, "train": t},
                           "set train.objective, train.block_size or train.block_schedule's last entry")


def require_block_decoding(config, fix: str) -> None:
    """One sentence when a model.logit_shift model has no block size to decode with: only block diffusion's
    objective, ELBO and sampler read a prediction one position earlier (models/logit_shift.py). `fix` says what
    to change where the caller stands (a run's config, an import's flags, a checkpoint)."""
    if (config.get("model") or {}).get("logit_shift", False) and decode_block_size(config) is None:
        raise ConfigError("model.logit_shift=True needs block decoding: train.objective='block_diffusion' with a "
                          f"final block size below train.seq_len; {fix}")


def validate_mask_embedding_noise(t) -> None:
    """A non-negative noise level and length (the AR baseline, whose inputs hold no mask tokens, ignores both, as
    objectives other than block diffusion ignore the block fields: one set of overrides serves a whole comparison)."""
    std, steps = t.get("mask_embedding_noise", 0.0), t.get("mask_embedding_noise_steps", 0)
    if not (std >= 0.0 and math.isfinite(std)):
        raise ConfigError(f"train.mask_embedding_noise={std} must be a finite standard deviation >= 0 (0: no noise)")
    if steps < 0:
        raise ConfigError(f"train.mask_embedding_noise_steps={steps} must be >= 0 (0: the noise lasts the whole run)")


def validate_block_diffusion(t) -> None:
    """The block-diffusion fields: block sizes that tile the sequence, known noise and weighting, a noise range."""
    for size in [t.get("block_size", 32)] + [s for s, _ in parse_block_schedule(t.get("block_schedule", ""))]:
        if size <= 0 or (size < t.seq_len and t.seq_len % size):
            raise ConfigError(f"block size {size} must be positive and divide train.seq_len={t.seq_len} (or be >= "
                              "it: one block is LLaDA's full-sequence objective); set train.block_size / block_schedule")
    if t.get("block_noise", "block") not in BLOCK_NOISE:
        raise ConfigError(f"train.block_noise={t.block_noise!r} is unknown; use one of {BLOCK_NOISE}")
    if t.get("block_weighting", "elbo") not in BLOCK_WEIGHTING:
        raise ConfigError(f"train.block_weighting={t.block_weighting!r} is unknown; use one of {BLOCK_WEIGHTING}")
    low, high = t.get("noise_low", 0.0), t.get("noise_high", 1.0)
    if not 0.0 <= low <= high <= 1.0:
        raise ConfigError(f"train.noise_low={low} and train.noise_high={high} must satisfy 0 <= low <= high <= 1")


def parse_block_schedule(text: str) -> list[tuple[int, float]]:
    """'1:0.05,4:0.05,32:0.9' -> [(1, 0.05), (4, 0.05), (32, 0.9)]: block sizes in order, each for a fraction of
    train.steps (the fractions add up to 1). '' is no schedule (train.block_size throughout)."""
    if not text.strip():
        return []
    phases = []
    for item in text.split(","):
        size, _, share = item.partition(":")
        try:
            phases.append((int(size), float(share)))
        except ValueError:
            raise ConfigError(f"train.block_schedule item {item.strip()!r} is not SIZE:FRACTION; write e.g. "
                              "'1:0.05,4:0.05,32:0.1,4096:0.6,32:0.2'") from None
    if any(share <= 0 for _, share in phases) or abs(sum(share for _, share in phases) - 1.0) > 1e-6:
        raise ConfigError(f"train.block_schedule={text!r}: the fractions must be positive and add up to 1 "
                          f"(they add up to {sum(share for _, share in phases):g})")
    return phases


def decode_block_size(config) -> int | None:
    """The block size a model decodes and is scored with: None for a full-sequence model, and for one trained
    with train.objective='block_diffusion' the block size its training ended at (the last entry of
    train.block_schedule, else train.block_size). A final block of train.seq_len or more is the full-sequence
    objective (one block holds the whole sequence), so that model decodes as one: None. Reads a checkpoint's
    stored config as well as a live one."""
    train = config.get("train") or {}
    if train.get("objective") != "block_diffusion":
        return None
    entries = parse_block_schedule(train.get("block_schedule", "") or "")
    block = entries[-1][0] if entries else int(train.get("block_size", 32))
    return None if "seq_len" in train and block >= int(train["seq_len"]) else block


def validate_checkpoint(c) -> None:
    if c.get("timeout_s", 1.0) <= 0:
        raise ConfigError(f"checkpoint.timeout_s={c.timeout_s} must be positive (seconds a save may "
                          "take before the run gives up)")


def validate_distributed(d) -> None:
    if d is not None and d.get("heartbeat_timeout_s", 60) < 1:
        raise ConfigError(f"distributed.heartbeat_timeout_s={d.heartbeat_timeout_s} must be >= 1 "
                          "(seconds a silent process is given before the job counts it as lost)")


def validate_optimizer(o) -> None:
    if o.schedule not in SCHEDULES:
        raise ConfigError(f"optimizer.schedule={o.schedule!r} is unknown; use one of {SCHEDULES}")
    if o.lr <= 0:
        raise ConfigError(f"optimizer.lr={o.lr} must be positive")
    if o.warmup_steps < 0:
        raise ConfigError(f"optimizer.warmup_steps={o.warmup_steps} must be >= 0")
    if o.schedule == "wsd" and not 0.0 <= o.wsd_drop_at <= o.wsd_decay_from <= 1.0:
        raise ConfigError(
            f"optimizer.wsd_drop_at={o.wsd_drop_at} and wsd_decay_from={o.wsd_decay_from} must satisfy "
            "0 <= drop_at <= decay_from <= 1 (fractions of train.steps)"
        )
    for name in ("b1", "b2"):
        if not 0.0 <= o[name] < 1.0:
            raise ConfigError(f"optimizer.{name}={o[name]} must be in [0, 1)")
    if o.grad_clip < 0 or o.weight_decay < 0:
        raise ConfigError("optimizer.grad_clip and optimizer.weight_decay must be >= 0")


def validate_mesh(config, device_count: int) -> None:
    """The mesh fits the devices and the micro-batch splits over its batch axes."""
    shape = mesh_shape(config.mesh, device_count)
    batch_shards = shape["data"] * shape["fsdp"] * shape["expert"]
    axes = "data*fsdp*expert" if shape["expert"] > 1 else "data*fsdp"
    t = config.train
    micro = t.global_batch_size // t.grad_accum_steps
    if micro % batch_shards:
        raise ConfigError(
            f"the micro-batch of {micro} sequences (train.global_batch_size / train.grad_accum_steps) does not "
            f"split over mesh {axes}={batch_shards} devices; make it a multiple of {batch_shards}"
        )


# ---------------------------------------------------------------- the mesh section's arithmetic (no JAX needed)

# `expert` splits the experts of a mixture-of-experts model (and the batch, like data, everywhere else); configs
# and checkpoints written before it existed have no such field and read as expert=1.
MESH_AXES = ("data", "fsdp", "expert", "tensor")


def mesh_shapes(mesh_cfg: Mapping[str, int], device_count: int) -> tuple[dict[str, int], dict[str, int]]:
    """(within-slice ICI sizes, across-slice DCN factors) for the config's mesh, checked against the devices."""
    dcn = {axis: int(mesh_cfg.get(f"dcn_{axis}", 1)) for axis in MESH_AXES}
    if any(v < 1 for v in dcn.values()):
        raise ConfigError(f"mesh dcn factors {dcn} must all be >= 1")
    slices = math.prod(dcn.values())
    if device_count % slices:
        raise ConfigError(
            f"mesh dcn factors {dcn} ask for {slices} slices but {device_count} devices do not split into {slices} equal slices"
        )
    per_slice = device_count // slices
    sizes = {axis: int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES}
    fills = [axis for axis, size in sizes.items() if size == -1]
    bad = [axis for axis, size in sizes.items() if size == 0 or size < -1]
    if bad or len(fills) > 1:
        raise ConfigError(
            f"mesh {sizes} is invalid; give each of {MESH_AXES} a positive size, with at most one -1 to fill the rest"
        )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fills:
        if per_slice % fixed:
            raise ConfigError(
                f"mesh {sizes} cannot fill {per_slice} devices: {per_slice} is not divisible by {fixed}"
            )
        sizes[fills[0]] = per_slice // fixed
    if math.prod(sizes.values()) != per_slice:
        raise ConfigError(
            f"mesh {sizes} multiplies to {math.prod(sizes.values())} but there are {per_slice} devices"
            + (f" per slice ({device_count} in {slices} slices)" if slices > 1 else "")
            + "; make data*fsdp*expert*tensor equal the device count (or set one axis to -1)"
        )
    return sizes, dcn


def mesh_shape(mesh_cfg: Mapping[str, int], device_count: int) -> dict[str, int]:
    """Total size of each mesh axis (ICI size times DCN factor)."""
    ici, dcn = mesh_shapes(mesh_cfg, device_count)
    return {axis: ici[axis] * dcn[axis] for axis in MESH_AXES}
