"""Checkpoint conversion between llada_jax params and Hugging Face folders (config.json + safetensors).

Two formats: the official LLaDA one (`model.transformer.blocks.{i}.q_proj.weight`, ..., loaded with
trust_remote_code) for mask predictors, and the standard Llama one (`model.layers.{i}.self_attn.q_proj.weight`,
..., `LlamaForCausalLM`) for the autoregressive baseline (`model.causal=True`). PyTorch linear weights are
[out, in]; ours are [in, ...] with heads split out and layers stacked, so each tensor is a reshape and a
transpose. Both formats use the rotate-half RoPE layout, so q/k need no permutation, and both carry grouped-query
attention (LLaDA's n_kv_heads, Llama's num_key_value_heads).

Both directions stream so an 8B model converts on a 64 GB host: export restores one stacked parameter at a time;
import assembles the float32 params in memory-mapped scratch files beside the output (about the model's size in
free disk, removed afterwards) so RAM holds only Orbax's one write buffer.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np
from etils import epath

from llada_jax import output_dirs, safetensors_io
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
    """[(hf name, our key, layer or None, torch shape)] in file order: the top-level tensors, then each layer
    parameter for every layer. Key-major order lets export restore one stacked [layers, ...] leaf at a time."""
    out = [(tensor_name(fmt, "wte", None), "wte", None, torch_shape("wte", shapes["wte"], True)),
           (tensor_name(fmt, "ln_f", None), "ln_f", None, shapes["ln_f"]),
           (tensor_name(fmt, "ff_out", None), "ff_out", None, torch_shape("ff_out", shapes["ff_out"], True))]
    for key in LAYER_NAMES[fmt]:
        for i in range(cfg.n_layers):
            out.append((tensor_name(fmt, key, i), key, i, torch_shape(key, shapes["blocks"][key][1:], False)))
    return out


def hf_config(config, fmt: str, dtype: str) -> dict:
    """config.json for the exported folder: the official LLaDA fields, or LlamaConfig's for the AR baseline."""
    m = ModelConfig.from_config(config.model)
    torch_dtype = {"bfloat16": "bfloat16", "float32": "float32"}[dtype]
    if fmt == "llama":
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


def _restore_leaf(params_dir: epath.Path, path: tuple[str, ...]) -> np.ndarray:
    """One entry of a params checkpoint (("wte",) or a stacked ("blocks", "q_proj")) as a host float32 array,
    so export holds one parameter in memory, never the model."""
    import orbax.checkpoint as ocp

    item, restore_args = 0, ocp.RestoreArgs(restore_type=np.ndarray)
    for part in reversed(path):
        item, restore_args = {part: item}, {part: restore_args}
    with ocp.PyTreeCheckpointer() as ckptr:
        tree = ckptr.restore(params_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                    partial_restore=True))
    for part in path:
        tree = tree[part]
    return np.asarray(tree, np.float32)


def _tokenizer_size(folder: epath.Path) -> int | None:
    """1 + the largest token id in a tokenizer.json (its vocabulary plus added tokens), or None if absent."""
    path = folder / "tokenizer.json"
    if not path.exists():
        return None
    try:
        tok = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{path} is not valid JSON; pass a folder with a working tokenizer.json") from None
    vocab = (tok.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t.get("id", 0) for t in tok.get("added_tokens") or []]
    return max(ids) + 1 if ids else None


# files of a tokenizer (or official release) folder that are never copied: they would clash with ours
_NOT_COPIED = ("config.json", "llada_jax_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")


def to_hf(checkpoint, out, *, dtype: str = "bfloat16", tokenizer=None, max_shard_bytes: int = 5 * 10**9,
          overwrite: bool = False) -> list[str]:
    """Writes config.json and safetensors (sharded with an index above `max_shard_bytes`); returns the files.

    Streams: one stacked parameter is restored from the checkpoint at a time and written layer by layer, so
    the host needs about one parameter's memory, not the model's. Files are written under temporary names and
    renamed when all are complete. A non-empty `out` needs `overwrite`, and then only the files an export
    writes are replaced (stale shards of an earlier export removed); other files in it are kept.
    """
    from llada_jax import checkpoint as ckpt_lib
    from llada_jax import model as model_lib

    if dtype not in ("bfloat16", "float32"):
        raise ConfigError(f"--dtype={dtype!r} is not supported; use bfloat16 or float32")
    source = ckpt_lib.resolve(checkpoint)
    config = ckpt_lib.read_config(source)
    cfg = ModelConfig.from_config(config.model)
    fmt = "llama" if cfg.causal else "llada"
    hf = hf_config(config, fmt, dtype)  # refuses unrepresentable shapes before anything is written
    _, abstract, _ = model_lib.split_model(model_lib.abstract_model(cfg))
    shapes = jax.tree.map(lambda a: tuple(a.shape), abstract)
    np_dtype = np.dtype(safetensors_io.DTYPES["BF16" if dtype == "bfloat16" else "F32"])
    plan = planned_tensors(cfg, shapes, fmt)

    out = output_dirs.check_folder(out, flag="--out", overwrite=overwrite)
    tok_dir = epath.Path(tokenizer) if tokenizer else None
    if tok_dir is not None:
        if not tok_dir.is_dir():
            raise ConfigError(f"--tokenizer={tokenizer} is not a folder; give the folder holding tokenizer.json")
        size = _tokenizer_size(tok_dir)
        if size is not None and size > cfg.vocab_size:
            raise ConfigError(f"the tokenizer in {tokenizer} has ids up to {size - 1} but the model's vocab_size is "
                              f"{cfg.vocab_size}; pass the tokenizer the model was trained with")

    shards, current, size = [], [], 0
    for entry in plan:
        nbytes = math.prod(entry[3]) * np_dtype.itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    shards.append(current)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]

    cache = {}  # the one (stacked) parameter being written, keyed by its path in the params tree

    def produce(name):
        _, key, layer, _ = by_name[name]
        path = (key,) if layer is None else ("blocks", key)
        if path not in cache:
            cache.clear()
            cache[path] = _restore_leaf(source / ckpt_lib.PARAMS_ITEM, path)
        array = cache[path] if layer is None else cache[path][layer]
        return to_torch(key, array, layer is None)

    out.mkdir(parents=True, exist_ok=True)
    _remove_earlier_export(out)
    by_name = {e[0]: e for e in plan}
    partial = []
    try:
        for file_name, shard in zip(names, shards):
            partial.append(out / f"{file_name}.incomplete")
            safetensors_io.write(str(partial[-1]), [(e[0], e[3], np_dtype) for e in shard], produce)
        cache.clear()
        for file_name, tmp in zip(names, partial):
            tmp.rename(out / file_name)
    finally:
        for tmp in partial:
            if tmp.exists():
                tmp.unlink()
    written = list(names)
    if len(shards) > 1:
        index = {"metadata": {"total_size": int(sum(math.prod(e[3]) for e in plan) * np_dtype.itemsize)},
                 "weight_map": {e[0]: f for f, shard in zip(names, shards) for e in shard}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        written.append("model.safetensors.index.json")
    (out / "llada_jax_config.json").write_text(config.to_json(indent=2))  # the full run config, for the way back
    written.append("llada_jax_config.json")
    if tok_dir is not None:  # tokenizer files (and an official release's modeling code, when that folder is given)
        for f in sorted(tok_dir.iterdir()):
            if f.is_file() and f.name not in _NOT_COPIED and not f.name.endswith((".safetensors", ".bin", ".pt")):
                shutil.copyfile(str(f), str(out / f.name))
                written.append(f.name)
    (out / "config.json").write_text(json.dumps(hf, indent=2))  # last: a folder with config.json is complete
    written.append("config.json")
    return written


_EXPORT_FILES = ("config.json", "llada_jax_config.json", "model.safetensors.index.json")


def _remove_earlier_export(out: epath.Path) -> None:
    """With --overwrite: an earlier export's weights and configs go (its shards would otherwise mix with the new
    ones); every other file in the folder stays."""
    for f in out.iterdir():
        if f.is_file() and (f.name.endswith(".safetensors") or f.name in _EXPORT_FILES):
            f.unlink()


# config.json values the llada_jax model cannot represent: (field, value it must have, default when absent)
_LLADA_REQUIRED = (("include_bias", False, False), ("include_qkv_bias", False, False), ("weight_tying", False, True),
                   ("alibi", False, False), ("rope", True, False), ("block_type", "llama", "sequential"),
                   ("activation_type", "silu", "swiglu"), ("layer_norm_type", "rms", "default"),
                   ("layer_norm_with_affine", True, True), ("attention_layer_norm", False, False),
                   ("input_emb_norm", False, False), ("scale_logits", False, False), ("clip_qkv", None, None))
# model fields that config.json decides (the weights' shapes and meaning); a --config override may not contradict
# them. The others it gives (max_seq_len, token ids) a user may change.
DECIDED_BY_CHECKPOINT = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden",
                         "causal", "rope_theta", "rms_norm_eps")


def model_config_from_hf(hf: dict) -> dict:
    """Our config.model fields from an HF config.json (official LLaDA or Llama); one sentence for anything
    our architecture cannot represent. Absent LLaDA fields take the official code's defaults."""
    kind = hf.get("model_type")
    if kind == "llada":
        for field, want, default in _LLADA_REQUIRED:
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
                "mask_token_id": hf.get("mask_token_id", 126336), "eos_token_id": _first(hf.get("eos_token_id"), 126081),
                "pad_token_id": _first(hf.get("pad_token_id"), 126081)}
    if kind == "llama":
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
                "eos_token_id": _first(hf.get("eos_token_id"), 0), "pad_token_id": _first(hf.get("pad_token_id"), 0),
                "mask_token_id": hf.get("mask_token_id", 0)}  # unused by an AR model; kept for the round trip
    raise ConfigError(f"config.json has model_type={kind!r}; llada_jax imports 'llada' or 'llama' checkpoints")


def _first(value, default):
    """Llama 3 configs list several EOS ids; the first is the one our config keeps."""
    if isinstance(value, (list, tuple)):
        return value[0] if value else default
    return default if value is None else value


def import_config(hf: dict, base_config: ml_collections.ConfigDict, overrides=()) -> ml_collections.ConfigDict:
    """The run config of an imported checkpoint: `base_config` (with the user's overrides) whose model is
    config.json's. An override of a field config.json decides must agree with it, and the token ids must fit."""
    from llada_jax.config import apply_override

    config = ml_collections.ConfigDict(base_config.to_dict())
    fields = model_config_from_hf(hf)
    for field, value in fields.items():
        config.model[field] = value
    for item in overrides:
        dotted = item.split("=", 1)[0].removeprefix("--").removeprefix("config.")
        if dotted.startswith("model.") and dotted[len("model."):] in fields:
            name = dotted[len("model."):]
            probe = ml_collections.ConfigDict(config.to_dict())
            apply_override(probe, item)
            if probe.model[name] != fields[name] and name in DECIDED_BY_CHECKPOINT:
                raise ConfigError(f"--config.model.{name}={probe.model[name]} disagrees with config.json, which gives "
                                  f"{fields[name]}; the weights only fit the model config.json describes, so drop the override")
            config.model[name] = probe.model[name]  # max_seq_len, token ids: the user's choice wins
    if config.model.causal:
        config.train.objective = "ar"
    elif config.train.objective == "ar":
        config.train.objective = "mdm"
    m = config.model
    for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
        if not 0 <= m[name] < m.vocab_size:
            raise ConfigError(f"{name}={m[name]} is outside the checkpoint's vocabulary [0, {m.vocab_size}); "
                              f"set --config.model.{name} to an id of its tokenizer")
    cfg = ModelConfig.from_config(m)
    if cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
        raise ConfigError(f"config.json gives n_heads={cfg.n_heads}, n_kv_heads={cfg.n_kv_heads}, head_dim="
                          f"{cfg.head_dim}; llada_jax needs n_heads divisible by n_kv_heads and an even head_dim")
    return config


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
    found = {}
    for f in files:
        for name in safetensors_io.read_header(str(f))[0]:
            if name in found:
                raise ConfigError(f"tensor {name} is in both {os.path.basename(found[name])} and {f.name}; remove the "
                                  "stale file or add a model.safetensors.index.json")
            found[name] = str(f)
    return found


def _scratch_dir(out: epath.Path) -> str:
    """Where the imported params are assembled: beside the output when it is local (so the disk-backed arrays
    never land on a RAM-backed /tmp), else the system temp folder."""
    if "://" in str(out):
        return tempfile.mkdtemp(prefix="llada-import-")
    parent = os.path.dirname(os.path.abspath(str(out)))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(str(out))}.import-", dir=parent)


def _wrap_on_host(params):
    """jax.Arrays on the CPU backend that share the memory-mapped buffers (no copy), so Orbax's save adds the
    only in-RAM copy. Without a CPU backend (JAX_PLATFORMS excludes it) the NumPy arrays go as they are."""
    try:
        cpu = jax.devices("cpu")[0]
    except RuntimeError:
        return params
    return jax.tree.map(lambda a: jax.device_put(a, cpu), params)


def from_hf(hf_dir, out, base_config: ml_collections.ConfigDict, overrides=(), *,
            overwrite: bool = False) -> ml_collections.ConfigDict:
    """Imports an HF folder into a params checkpoint usable by `train --init_from` and `sample`.

    Every tensor's name, shape and dtype is checked against config.json first. The float32 params are assembled
    in disk-backed (memory-mapped) arrays that JAX wraps without copying, so the host holds about one copy of
    the model in RAM (Orbax's own write buffer) instead of three.
    """
    from llada_jax import checkpoint as ckpt_lib
    from llada_jax import model as model_lib

    hf_dir = epath.Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise ConfigError(f"{hf_dir} has no config.json; pass the folder of a Hugging Face checkpoint")
    output_dirs.check_folder(out, flag="--out", overwrite=overwrite)  # before any work: never a late refusal
    try:
        hf = json.loads((hf_dir / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{hf_dir / 'config.json'} is not valid JSON ({e.__class__.__name__}); "
                          "re-download the checkpoint's config.json") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{hf_dir / 'config.json'} is not a JSON object; re-download the checkpoint's config.json")
    config = import_config(hf, base_config, overrides)
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
    plan_by_name = {e[0]: e for e in plan}
    for path in sorted(set(files.values())):  # check every header before reading any data
        header, _ = safetensors_io.read_header(path)
        for name, info in header.items():
            if name not in plan_by_name:
                continue
            want = tuple(plan_by_name[name][3])
            if tuple(info["shape"]) != want:
                raise ConfigError(f"tensor {name} has shape {tuple(info['shape'])} but config.json implies {want}")
            if info["dtype"] not in ("F32", "BF16", "F16"):
                raise ConfigError(f"tensor {name} has dtype {info['dtype']}; weights must be F32, BF16 or F16")

    scratch = _scratch_dir(epath.Path(out))
    try:
        def disk_array(name, shape):
            return np.memmap(os.path.join(scratch, name), dtype=np.float32, mode="w+", shape=shape)

        params = {"blocks": {k: disk_array(f"blocks.{k}", shapes["blocks"][k]) for k in LAYER_NAMES[fmt]}}
        for key in TOP_NAMES[fmt]:
            params[key] = disk_array(key, shapes[key])
        for path in sorted(set(files.values())):
            for name, array in safetensors_io.iterate(path):
                if name not in plan_by_name:
                    continue
                _, key, layer, _ = plan_by_name[name]
                ours = shapes[key] if layer is None else shapes["blocks"][key][1:]
                value = from_torch(key, np.asarray(array, np.float32), ours, layer is None)
                (params[key] if layer is None else params["blocks"][key][layer])[...] = value
        params = _wrap_on_host(params)
        ckpt_lib.save_params(out, params, config, overwrite=overwrite, flag="--out")
        del params
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return config
