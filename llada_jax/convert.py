"""Checkpoint conversion between llada_jax params and Hugging Face folders (config.json + safetensors).

Two formats: the official LLaDA one (`model.transformer.blocks.{i}.q_proj.weight`, ..., loaded with
trust_remote_code) for mask predictors, and the standard Llama one (`model.layers.{i}.self_attn.q_proj.weight`,
..., `LlamaForCausalLM`) for the autoregressive baseline (`model.causal=True`). PyTorch linear weights are
[out, in]; ours are [in, ...] with heads split out and layers stacked, so each tensor is a reshape and a
transpose. Both formats use the rotate-half RoPE layout, so q/k need no permutation.
"""
from __future__ import annotations

import json
import math
import shutil

import jax
import ml_collections
import numpy as np
from etils import epath

from llada_jax import safetensors_io
from llada_jax.config import ConfigError, ModelConfig

# our per-layer key -> name inside a layer, per format
LAYER_NAMES = {
    "llada": {"attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
              "attn_out": "attn_out", "ff_norm": "ff_norm", "ff_proj": "ff_proj", "up_proj": "up_proj",
              "ff_out": "ff_out"},
    "llama": {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj",
              "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
              "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"},
}
LAYER_PREFIX = {"llada": "model.transformer.blocks.{i}.", "llama": "model.layers.{i}."}
TOP_NAMES = {
    "llada": {"wte": "model.transformer.wte.weight", "ln_f": "model.transformer.ln_f.weight",
              "ff_out": "model.transformer.ff_out.weight"},
    "llama": {"wte": "model.embed_tokens.weight", "ln_f": "model.norm.weight", "ff_out": "lm_head.weight"},
}


def tensor_name(fmt: str, key: str, layer: int | None) -> str:
    if layer is None:
        return TOP_NAMES[fmt][key]
    return LAYER_PREFIX[fmt].format(i=layer) + LAYER_NAMES[fmt][key] + ".weight"


def torch_shape(key: str, ours: tuple[int, ...], top: bool) -> tuple[int, ...]:
    """Shape of our (per-layer) array in PyTorch's [out, in] layout."""
    if top:
        return (ours[1], ours[0]) if key == "ff_out" else ours  # head [d, V] -> [V, d]; wte and ln_f as they are
    if key in ("q_proj", "k_proj", "v_proj"):  # [d, heads, hd] -> [heads*hd, d]
        return (ours[1] * ours[2], ours[0])
    if key == "attn_out":  # [heads, hd, d] -> [d, heads*hd]
        return (ours[2], ours[0] * ours[1])
    if key in ("ff_proj", "up_proj", "ff_out"):
        return (ours[1], ours[0])
    return ours  # norms


def to_torch(key: str, array: np.ndarray, top: bool) -> np.ndarray:
    if top:
        return array.T if key == "ff_out" else array
    if key in ("q_proj", "k_proj", "v_proj"):
        return array.reshape(array.shape[0], -1).T
    if key == "attn_out":
        return array.reshape(-1, array.shape[-1]).T
    if key in ("ff_proj", "up_proj", "ff_out"):
        return array.T
    return array


def from_torch(key: str, array: np.ndarray, ours: tuple[int, ...], top: bool) -> np.ndarray:
    """Inverse of to_torch, into our per-layer shape `ours`."""
    if top:
        return array.T if key == "ff_out" else array
    if key in ("q_proj", "k_proj", "v_proj", "attn_out"):
        return array.T.reshape(ours)
    if key in ("ff_proj", "up_proj", "ff_out"):
        return array.T
    return array


def planned_tensors(cfg: ModelConfig, shapes: dict, fmt: str):
    """[(hf name, our key, layer or None, torch shape)] in file order: embedding, layers, final norm, head."""
    out = [(tensor_name(fmt, "wte", None), "wte", None, torch_shape("wte", shapes["wte"], True))]
    for i in range(cfg.n_layers):
        for key in LAYER_NAMES[fmt]:
            out.append((tensor_name(fmt, key, i), key, i, torch_shape(key, shapes["blocks"][key][1:], False)))
    out.append((tensor_name(fmt, "ln_f", None), "ln_f", None, shapes["ln_f"]))
    out.append((tensor_name(fmt, "ff_out", None), "ff_out", None, torch_shape("ff_out", shapes["ff_out"], True)))
    return out


def hf_config(config, fmt: str, dtype: str) -> dict:
    m = ModelConfig.from_config(config.model)
    torch_dtype = {"bfloat16": "bfloat16", "float32": "float32"}[dtype]
    if fmt == "llama":
        return {
            "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": m.d_model,
            "intermediate_size": m.mlp_hidden, "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
            "num_key_value_heads": m.n_kv_heads, "head_dim": m.head_dim, "hidden_act": "silu",
            "max_position_embeddings": m.max_seq_len, "rms_norm_eps": m.rms_norm_eps, "rope_theta": m.rope_theta,
            "vocab_size": m.vocab_size, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
            "bos_token_id": None, "eos_token_id": m.eos_token_id, "pad_token_id": m.pad_token_id,
            "torch_dtype": torch_dtype,
        }
    if m.head_dim * m.n_heads != m.d_model:
        raise ConfigError(f"head_dim={m.head_dim} x n_heads={m.n_heads} != d_model={m.d_model}; the LLaDA format "
                          "derives head_dim from d_model / n_heads, so this model cannot be exported to it")
    return {
        "model_type": "llada", "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "d_model": m.d_model, "n_heads": m.n_heads, "n_kv_heads": m.n_kv_heads, "n_layers": m.n_layers,
        "mlp_hidden_size": m.mlp_hidden, "mlp_ratio": round(m.mlp_hidden / m.d_model, 4), "vocab_size": m.vocab_size,
        "embedding_size": m.vocab_size, "max_sequence_length": m.max_seq_len, "rope": True, "rope_theta": m.rope_theta,
        "rope_full_precision": True, "alibi": False, "layer_norm_type": "rms", "rms_norm_eps": m.rms_norm_eps,
        "activation_type": "silu", "block_type": "llama", "include_bias": False, "include_qkv_bias": False,
        "bias_for_layer_norm": False, "weight_tying": False, "attention_layer_norm": False, "scale_logits": False,
        "init_std": m.init_std, "mask_token_id": m.mask_token_id, "eos_token_id": m.eos_token_id,
        "pad_token_id": m.pad_token_id, "torch_dtype": torch_dtype, "use_cache": False,
    }


def to_hf(checkpoint, out, *, dtype: str = "bfloat16", tokenizer=None, max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Writes config.json and safetensors (sharded with an index above `max_shard_bytes`); returns the files."""
    from llada_jax import checkpoint as ckpt_lib

    if dtype not in ("bfloat16", "float32"):
        raise ConfigError(f"--dtype={dtype!r} is not supported; use bfloat16 or float32")
    params, config = ckpt_lib.load_params(checkpoint)
    cfg = ModelConfig.from_config(config.model)
    fmt = "llama" if cfg.causal else "llada"
    shapes = jax.tree.map(lambda a: tuple(a.shape), params)
    np_dtype = np.dtype(safetensors_io.DTYPES["BF16" if dtype == "bfloat16" else "F32"])
    plan = planned_tensors(cfg, shapes, fmt)

    def produce(entry):
        _, key, layer, _ = entry
        array = params[key] if layer is None else params["blocks"][key][layer]
        return to_torch(key, np.asarray(jax.device_get(array), np.float32), layer is None)

    shards, current, size = [], [], 0
    for entry in plan:
        nbytes = math.prod(entry[3]) * np_dtype.itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    shards.append(current)

    out = epath.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    by_name = {e[0]: e for e in plan}
    for file_name, shard in zip(names, shards):
        safetensors_io.write(str(out / file_name), [(e[0], e[3], np_dtype) for e in shard],
                             lambda name: produce(by_name[name]))
    if len(shards) > 1:
        index = {"metadata": {"total_size": int(sum(math.prod(e[3]) for e in plan) * np_dtype.itemsize)},
                 "weight_map": {e[0]: f for f, shard in zip(names, shards) for e in shard}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(hf_config(config, fmt, dtype), indent=2))
    (out / "llada_jax_config.json").write_text(config.to_json(indent=2))  # the full run config, for the way back
    written = names + (["model.safetensors.index.json"] if len(shards) > 1 else []) + ["config.json"]
    if tokenizer:
        tokenizer = epath.Path(tokenizer)
        if not tokenizer.is_dir():
            raise ConfigError(f"--tokenizer={tokenizer} is not a folder; give the folder holding tokenizer.json")
        for f in tokenizer.iterdir():
            if f.is_file() and f.name not in ("config.json",) and not f.name.endswith(".safetensors"):
                shutil.copyfile(str(f), str(out / f.name))
                written.append(f.name)
    return written


def model_config_from_hf(hf: dict) -> dict:
    """Our config.model fields from an HF config.json (official LLaDA or Llama)."""
    kind = hf.get("model_type")
    if kind == "llada":
        for field, want in (("include_bias", False), ("weight_tying", False), ("alibi", False)):
            if hf.get(field, want) != want:
                raise ConfigError(f"config.json has {field}={hf[field]}; llada_jax's model needs {field}={want}")
        if hf.get("layer_norm_type", "rms") != "rms" or hf.get("activation_type", "silu") not in ("silu", "swiglu"):
            raise ConfigError("config.json describes a non-LLaMA block (layer_norm_type must be rms, activation silu)")
        return {"d_model": hf["d_model"], "n_layers": hf["n_layers"], "n_heads": hf["n_heads"],
                "n_kv_heads": hf.get("n_kv_heads") or hf["n_heads"], "head_dim": hf["d_model"] // hf["n_heads"],
                "mlp_hidden": hf["mlp_hidden_size"], "vocab_size": hf.get("embedding_size") or hf["vocab_size"],
                "max_seq_len": hf.get("max_sequence_length", 4096), "rope_theta": float(hf.get("rope_theta", 500000.0)),
                "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-5)), "causal": False,
                "mask_token_id": hf.get("mask_token_id", 126336), "eos_token_id": hf.get("eos_token_id", 126081),
                "pad_token_id": hf.get("pad_token_id", 126081)}
    if kind == "llama":
        if hf.get("tie_word_embeddings", False):
            raise ConfigError("config.json has tie_word_embeddings=true; llada_jax's model has an untied output head")
        heads = hf["num_attention_heads"]
        return {"d_model": hf["hidden_size"], "n_layers": hf["num_hidden_layers"], "n_heads": heads,
                "n_kv_heads": hf.get("num_key_value_heads") or heads,
                "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads, "mlp_hidden": hf["intermediate_size"],
                "vocab_size": hf["vocab_size"], "max_seq_len": hf.get("max_position_embeddings", 4096),
                "rope_theta": float(hf.get("rope_theta", 10000.0)), "rms_norm_eps": float(hf.get("rms_norm_eps", 1e-5)),
                "causal": True, "eos_token_id": hf.get("eos_token_id") or 0, "pad_token_id": hf.get("pad_token_id") or 0}
    raise ConfigError(f"config.json has model_type={kind!r}; llada_jax imports 'llada' or 'llama' checkpoints")


def read_hf_tensors(hf_dir: epath.Path) -> dict[str, str]:
    """tensor name -> file, from the index or from every *.safetensors file in the folder."""
    index = hf_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        missing = sorted({f for f in weight_map.values() if not (hf_dir / f).exists()})
        if missing:
            raise ConfigError(f"{hf_dir} lists {missing[0]} in its index but the file is missing; copy all shards")
        return {name: str(hf_dir / f) for name, f in weight_map.items()}
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{hf_dir} holds no .safetensors files; convert .bin checkpoints to safetensors first")
    return {name: str(f) for f in files for name in safetensors_io.read_header(str(f))[0]}


def from_hf(hf_dir, out, base_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Imports an HF folder into a params checkpoint usable by `train --init_from` and `sample`."""
    from llada_jax import checkpoint as ckpt_lib
    from llada_jax import model as model_lib

    hf_dir = epath.Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise ConfigError(f"{hf_dir} has no config.json; pass the folder of a Hugging Face checkpoint")
    hf = json.loads((hf_dir / "config.json").read_text())
    config = ml_collections.ConfigDict(base_config.to_dict())
    for field, value in model_config_from_hf(hf).items():
        config.model[field] = value
    if config.model.causal:
        config.train.objective = "ar"
    cfg = ModelConfig.from_config(config.model)
    fmt = "llama" if cfg.causal else "llada"
    _, abstract, _ = model_lib.split_model(model_lib.abstract_model(cfg))
    shapes = jax.tree.map(lambda a: tuple(a.shape), abstract)
    plan = planned_tensors(cfg, shapes, fmt)
    files = read_hf_tensors(hf_dir)
    expected = {e[0] for e in plan}
    missing, unexpected = sorted(expected - set(files)), sorted(set(files) - expected)
    if fmt == "llama":
        unexpected = [n for n in unexpected if not n.endswith("rotary_emb.inv_freq")]
    if missing:
        raise ConfigError(f"{hf_dir} is missing {len(missing)} tensor(s), e.g. {missing[0]}; it does not match its config.json")
    if unexpected:
        raise ConfigError(f"{hf_dir} has {len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}; "
                          "llada_jax's model has no such parameter")

    params = {"blocks": {k: np.empty(shapes["blocks"][k], np.float32) for k in LAYER_NAMES[fmt]}}
    plan_by_name = {e[0]: e for e in plan}
    for path in sorted(set(files.values())):
        for name, array in safetensors_io.iterate(path):
            if name not in plan_by_name:
                continue
            _, key, layer, want = plan_by_name[name]
            if tuple(array.shape) != tuple(want):
                raise ConfigError(f"tensor {name} has shape {tuple(array.shape)} but config.json implies {tuple(want)}")
            ours = shapes[key] if layer is None else shapes["blocks"][key][1:]
            value = from_torch(key, np.asarray(array, np.float32), ours, layer is None)
            if layer is None:
                params[key] = np.ascontiguousarray(value)
            else:
                params["blocks"][key][layer] = value
    ckpt_lib.save_params(out, params, config)
    return config
