"""`convert from-hf`: a Hugging Face folder (official LLaDA, or a Llama, Qwen2 or Qwen3 AR model) as a params
checkpoint for `train --init_from` and `sample`.

An AR architecture is imported as the init of a diffusion run: model.causal=False (bidirectional; block
diffusion makes it block-causal) and model.hf_format naming the architecture, so `convert to-hf` writes its
names back. Only our own AR baseline coming back (its export's llada_jax_config.json says causal) stays
causal; --config.model.causal=true keeps any AR checkpoint autoregressive. A config.json with "block_size"
(a block-diffusion export) gives train.objective=block_diffusion with that block size.

Every tensor's name, shape and dtype is checked against config.json before any data is read. The float32
params are assembled in memory-mapped scratch files beside the output (about the model's size in free disk,
removed afterwards) that JAX wraps without copying, so RAM holds only Orbax's one write buffer.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import jax
import ml_collections
import numpy as np
from etils import epath

from llada_jax.config import ConfigError, ModelConfig, apply_override, require_block_decoding
from llada_jax.interop import formats, safetensors_io
from llada_jax.interop.tensor_layout import from_torch, leaf_shape, param_shapes, planned_tensors
from llada_jax.utils import output_dirs

# model fields that config.json decides (the weights' shapes and meaning); a --config override may not contradict
# them. The others it gives (max_seq_len, token ids) a user may change.
DECIDED_BY_CHECKPOINT = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_hidden",
                         "rope_theta", "rms_norm_eps", "family", "qk_norm", "rotary_dim", "qkv_bias",
                         "tie_embeddings", "hf_format", "moe.experts", "moe.top_k", "moe.expert_hidden",
                         "moe.shared_experts", "moe.first_dense_layers", "moe.router", "moe.norm_topk",
                         "moe.routed_scaling", "moe.n_groups", "moe.topk_groups", "moe.expert_bias", "logit_shift")
WEIGHT_DTYPES = ("F32", "BF16", "F16")


def from_hf(hf_dir, out, base_config: ml_collections.ConfigDict, overrides=(), *,
            overwrite: bool = False) -> ml_collections.ConfigDict:
    """Imports an HF folder into a params checkpoint; returns the run config written with it."""
    from llada_jax.checkpoints import params_export

    hf_dir = epath.Path(hf_dir)
    if not (hf_dir / "config.json").exists():
        raise ConfigError(f"{hf_dir} has no config.json; pass the folder of a Hugging Face checkpoint")
    output_dirs.check_folder(out, flag="--out", overwrite=overwrite)  # before any work: never a late refusal
    hf = read_hf_config(hf_dir)
    config = import_config(hf, base_config, overrides, exported_run=_exported_run(hf_dir))
    cfg = ModelConfig.from_config(config.model)
    fmt = formats.for_hf_config(hf)  # its model_type also says how the file lays out experts
    shapes = param_shapes(cfg)
    plan = {e.name: e for e in planned_tensors(cfg, shapes, fmt)}
    files = read_hf_tensors(hf_dir)
    check_tensor_names(hf_dir, plan, files, fmt)
    check_tensor_headers(plan, files)
    scratch = _scratch_dir(epath.Path(out))
    try:
        params = _assemble(scratch, fmt, shapes, plan, files)
        params_export.save_params(out, _wrap_on_host(params), config, overwrite=overwrite, flag="--out")
        del params
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return config


def read_hf_config(hf_dir: epath.Path) -> dict:
    try:
        hf = json.loads((hf_dir / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{hf_dir / 'config.json'} is not valid JSON ({e.__class__.__name__}); "
                          "re-download the checkpoint's config.json") from None
    if not isinstance(hf, dict):
        raise ConfigError(f"{hf_dir / 'config.json'} is not a JSON object; re-download the checkpoint's config.json")
    return hf


def _exported_run(hf_dir: epath.Path) -> dict | None:
    """The run config our own `to-hf` left beside the weights (llada_jax_config.json), or None."""
    path = hf_dir / "llada_jax_config.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def model_config_from_hf(hf: dict, exported_run: dict | None = None) -> dict:
    """Our config.model fields from an HF config.json, by its model_type's format; one sentence for anything
    our architecture cannot represent. An AR architecture becomes a bidirectional model recording where it came
    from, unless `exported_run` (our own export's run config) says it was trained causal."""
    fmt = formats.for_hf_config(hf)
    fields = fmt.model_fields(hf)
    if getattr(fmt, "AUTOREGRESSIVE", False):
        fields["causal"] = bool(((exported_run or {}).get("model") or {}).get("causal", False))
        fields["hf_format"] = fmt.NAME
    if hf.get("logit_shift") is True:  # our block-diffusion export of a shifted model
        fields["logit_shift"] = True
    return fields


def _block_diffusion_fields(hf: dict, config, overrides) -> None:
    """config.json's "block_size" (a block-diffusion export) as train.objective / train.block_size, unless the
    command line sets them."""
    block = hf.get("block_size")
    if not isinstance(block, int) or isinstance(block, bool) or block <= 0:
        return
    given = {item.split("=", 1)[0].removeprefix("--").removeprefix("config.") for item in overrides}
    if "train.objective" not in given:
        config.train.objective = "block_diffusion"
    if "train.block_size" not in given and "block_size" in config.train:
        config.train.block_size = block
    if "train.block_schedule" not in given and "block_schedule" in config.train:
        config.train.block_schedule = ""


def import_config(hf: dict, base_config: ml_collections.ConfigDict, overrides=(), *,
                  exported_run: dict | None = None) -> ml_collections.ConfigDict:
    """The run config of an imported checkpoint: `base_config` (with the user's overrides) whose model is
    config.json's. An override of a field config.json decides must agree with it, and the token ids must fit."""
    config = ml_collections.ConfigDict(base_config.to_dict())
    fields = _flat(model_config_from_hf(hf, exported_run))  # "moe.experts" for the mixture-of-experts section's fields
    for field, value in fields.items():
        _set(config.model, field, value)
    for item in overrides:
        dotted = item.split("=", 1)[0].removeprefix("--").removeprefix("config.")
        if dotted.startswith("model.") and dotted[len("model."):] in fields:
            name = dotted[len("model."):]
            probe = ml_collections.ConfigDict(config.to_dict())
            apply_override(probe, item)
            value = _get(probe.model, name)
            if value != fields[name] and name in DECIDED_BY_CHECKPOINT:
                raise ConfigError(f"--config.model.{name}={value} disagrees with config.json, which gives "
                                  f"{fields[name]}; the weights only fit the model config.json describes, so drop the override")
            _set(config.model, name, value)  # max_seq_len, token ids: the user's choice wins
    if config.model.causal:
        config.train.objective = "ar"
    elif config.train.objective == "ar":
        config.train.objective = "mdm"
    if not config.model.causal:
        _block_diffusion_fields(hf, config, overrides)
    require_block_decoding(config, "add --config.train.objective=block_diffusion --config.train.block_size=N")
    _check_imported_model(config.model)
    return config


def _flat(fields: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in fields.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _get(node, dotted: str):
    for part in dotted.split("."):
        node = node[part]
    return node


def _set(node, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if part not in node:  # a saved run config from before the section existed
            node[part] = ml_collections.ConfigDict()
        node = node[part]
    node[leaf] = value


def _check_imported_model(m) -> None:
    for name in ("mask_token_id", "eos_token_id", "pad_token_id"):
        if not 0 <= m[name] < m.vocab_size:
            raise ConfigError(f"{name}={m[name]} is outside the checkpoint's vocabulary [0, {m.vocab_size}); "
                              f"set --config.model.{name} to an id of its tokenizer")
    cfg = ModelConfig.from_config(m)
    if cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
        raise ConfigError(f"config.json gives n_heads={cfg.n_heads}, n_kv_heads={cfg.n_kv_heads}, head_dim="
                          f"{cfg.head_dim}; llada_jax needs n_heads divisible by n_kv_heads and an even head_dim")


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


def check_tensor_names(hf_dir, plan: dict, files: dict, fmt) -> None:
    """Every tensor the model needs is present and nothing unknown is (besides buffers the format ignores)."""
    missing, unexpected = sorted(set(plan) - set(files)), sorted(set(files) - set(plan))
    ignored = getattr(fmt, "IGNORED_SUFFIXES", ())
    head = getattr(fmt, "TOP_NAMES", {}).get("ff_out")
    tied_head = None if head in plan else head  # some tied checkpoints still carry a copy of the table
    unexpected = [n for n in unexpected if not n.endswith(ignored) and n != tied_head]
    if missing:
        raise ConfigError(f"{hf_dir} is missing {len(missing)} tensor(s), e.g. {missing[0]}; it does not match its config.json")
    if unexpected:
        raise ConfigError(f"{hf_dir} has {len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}; "
                          "llada_jax's model has no such parameter")


def check_tensor_headers(plan: dict, files: dict) -> None:
    """Shapes and dtypes from every file's header, before any data is read."""
    for path in sorted(set(files.values())):
        header, _ = safetensors_io.read_header(path)
        for name, info in header.items():
            if name not in plan:
                continue
            want = tuple(plan[name].shape)
            if tuple(info["shape"]) != want:
                raise ConfigError(f"tensor {name} has shape {tuple(info['shape'])} but config.json implies {want}")
            if info["dtype"] not in WEIGHT_DTYPES:
                raise ConfigError(f"tensor {name} has dtype {info['dtype']}; weights must be F32, BF16 or F16")


def _assemble(scratch: str, fmt, shapes: dict, plan: dict, files: dict) -> dict:
    """Our float32 params in disk-backed arrays (one per leaf of `shapes`), filled tensor by tensor from the
    safetensors files."""
    def disk_arrays(node, prefix):
        if isinstance(node, dict):
            return {k: disk_arrays(v, f"{prefix}{k}.") for k, v in node.items()}
        return np.memmap(os.path.join(scratch, prefix.rstrip(".")), dtype=np.float32, mode="w+", shape=node)

    params = disk_arrays(shapes, "")
    for path in sorted(set(files.values())):
        for name, array in safetensors_io.iterate(path):
            if name not in plan:
                continue
            entry = plan[name]
            ours = [leaf_shape(shapes, p, index) for p, index in entry.sources]
            for (p, index), value in zip(entry.sources, from_torch(entry.kind, np.asarray(array, np.float32), ours)):
                leaf = params
                for part in p:
                    leaf = leaf[part]
                leaf[index] = value
    return params


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
