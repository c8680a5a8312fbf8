"""`convert to-hf`: a llada_jax checkpoint as a Hugging Face folder (config.json + safetensors) in the model's
format (formats.py: the architecture it was imported from, else the official LLaDA one for mask predictors and
Llama for the AR baseline). A block-diffusion model's config.json also carries its "block_size".

Streams so an 8B model converts on a 64 GB host: one stacked parameter is restored at a time and written layer
by layer. Files are written under temporary names and renamed when all are complete.
"""
from __future__ import annotations

import json
import math

import numpy as np
from etils import epath

from llada_jax.checkpoints import locate
from llada_jax.config import ConfigError, ModelConfig, decode_block_size
from llada_jax.interop import formats, safetensors_io
from llada_jax.interop.tensor_layout import param_shapes, planned_tensors, to_torch
from llada_jax.utils import output_dirs

DTYPES = {"bfloat16": "BF16", "float32": "F32"}  # --dtype -> safetensors dtype
# files of a tokenizer (or official release) folder that are never copied: they would clash with ours
_NOT_COPIED = ("config.json", "llada_jax_config.json", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_EXPORT_FILES = ("config.json", "llada_jax_config.json", "model.safetensors.index.json")


def to_hf(checkpoint, out, *, dtype: str = "bfloat16", tokenizer=None, max_shard_bytes: int = 5 * 10**9,
          overwrite: bool = False, expert_layout: str = "per-expert") -> list[str]:
    """Writes config.json and safetensors (sharded with an index above `max_shard_bytes`); returns the files.

    The host needs about one parameter's memory, not the model's. A non-empty `out` needs `overwrite`, and then
    only the files an export writes are replaced (stale shards of an earlier export removed); other files in
    it are kept. `expert_layout` (a mixture of experts): per-expert tensors as released, or LLaDA2.0's stacked
    training layout.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype={dtype!r} is not supported; use bfloat16 or float32")
    source = locate.resolve(checkpoint)
    config = locate.read_config(source)
    cfg = ModelConfig.from_config(config.model)
    fmt = formats.for_model(cfg, expert_layout)
    formats.check_representable(fmt, cfg)
    hf = fmt.hf_config(cfg, dtype)  # refuses unrepresentable shapes before anything is written
    block_size = decode_block_size(config)
    if block_size is not None:
        hf["block_size"] = block_size  # decoded block by block: from-hf reads it back as the objective
    if cfg.logit_shift:
        hf["logit_shift"] = True  # position i is predicted at i - 1 (models/logit_shift.py): from-hf reads it back
    np_dtype = np.dtype(safetensors_io.DTYPES[DTYPES[dtype]])
    plan = planned_tensors(cfg, param_shapes(cfg), fmt)
    out = output_dirs.check_folder(out, flag="--out", overwrite=overwrite)
    tok_dir = _tokenizer_folder(tokenizer, cfg.vocab_size)
    shards = _shards(plan, np_dtype.itemsize, max_shard_bytes)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]

    out.mkdir(parents=True, exist_ok=True)
    _remove_earlier_export(out)
    _write_shards(out, names, shards, np_dtype, _Leaves(source / locate.PARAMS_ITEM))
    written = list(names)
    if len(shards) > 1:
        written.append(_write_index(out, names, shards, np_dtype))
    (out / "llada_jax_config.json").write_text(config.to_json(indent=2))  # the full run config, for the way back
    written.append("llada_jax_config.json")
    written += _copy_tokenizer(tok_dir, out)
    (out / "config.json").write_text(json.dumps(hf, indent=2))  # last: a folder with config.json is complete
    written.append("config.json")
    return written


def _tokenizer_folder(tokenizer, vocab_size: int) -> epath.Path | None:
    """The --tokenizer folder, refused when it is not one or its ids exceed the model's vocabulary."""
    if not tokenizer:
        return None
    tok_dir = epath.Path(tokenizer)
    if not tok_dir.is_dir():
        raise ConfigError(f"--tokenizer={tokenizer} is not a folder; give the folder holding tokenizer.json")
    size = _tokenizer_size(tok_dir)
    if size is not None and size > vocab_size:
        raise ConfigError(f"the tokenizer in {tokenizer} has ids up to {size - 1} but the model's vocab_size is "
                          f"{vocab_size}; pass the tokenizer the model was trained with")
    return tok_dir


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


def _shards(plan, itemsize: int, max_shard_bytes: int) -> list[list]:
    """The plan cut into files of at most `max_shard_bytes` (a tensor larger than that gets a file of its own)."""
    shards, current, size = [], [], 0
    for entry in plan:
        nbytes = math.prod(entry.shape) * itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    shards.append(current)
    return shards


class _Leaves:
    """Torch-layout tensors read from a params checkpoint holding only the stacked [layers, ...] parameters the
    current tensor is made of (one; three for LLaDA2.0's fused query_key_value), never the model."""

    def __init__(self, params_dir: epath.Path):
        self.params_dir, self.held = params_dir, {}

    def tensor(self, entry) -> np.ndarray:
        if entry.kind == "zeros":  # a tensor the format always has and this model does not use (e.g. a zero bias)
            return np.zeros(entry.shape, np.float32)
        needed = [path for path, _ in entry.sources]
        self.held = {p: a for p, a in self.held.items() if p in needed}  # release the others before reading
        for path in needed:
            if path not in self.held:
                self.held[path] = _restore_leaf(self.params_dir, path)
        return to_torch(entry.kind, [self.held[path][index] for path, index in entry.sources])

    def release(self) -> None:
        self.held = {}


def _restore_leaf(params_dir: epath.Path, path: tuple[str, ...]) -> np.ndarray:
    """One entry of a params checkpoint (("wte",) or a stacked ("blocks", "q_proj")) as a host float32 array,
    so export holds a few parameters in memory, never the model."""
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


def _write_shards(out: epath.Path, names, shards, np_dtype, leaves: _Leaves) -> None:
    """Every shard under a temporary name, then all renamed; a failure leaves no partial file behind."""
    by_name = {e.name: e for shard in shards for e in shard}
    partial = []
    try:
        for file_name, shard in zip(names, shards):
            partial.append(out / f"{file_name}.incomplete")
            safetensors_io.write(str(partial[-1]), [(e.name, e.shape, np_dtype) for e in shard],
                                 lambda name: leaves.tensor(by_name[name]))
        leaves.release()
        for file_name, tmp in zip(names, partial):
            tmp.rename(out / file_name)
    finally:
        for tmp in partial:
            if tmp.exists():
                tmp.unlink()


def _write_index(out: epath.Path, names, shards, np_dtype) -> str:
    """model.safetensors.index.json for a sharded export; returns its file name."""
    index = {"metadata": {"total_size": int(sum(math.prod(e.shape) for s in shards for e in s) * np_dtype.itemsize)},
             "weight_map": {e.name: f for f, shard in zip(names, shards) for e in shard}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return "model.safetensors.index.json"


def _copy_tokenizer(tok_dir: epath.Path | None, out: epath.Path) -> list[str]:
    """Tokenizer files (and an official release's modeling code, when that folder is given) copied beside the
    weights; weights and configs of that folder are not."""
    import shutil

    copied = []
    for f in sorted(tok_dir.iterdir()) if tok_dir is not None else []:
        if f.is_file() and f.name not in _NOT_COPIED and not f.name.endswith((".safetensors", ".bin", ".pt")):
            shutil.copyfile(str(f), str(out / f.name))
            copied.append(f.name)
    return copied


def _remove_earlier_export(out: epath.Path) -> None:
    """With --overwrite: an earlier export's weights and configs go (its shards would otherwise mix with the new
    ones); every other file in the folder stays."""
    for f in out.iterdir():
        if f.is_file() and (f.name.endswith(".safetensors") or f.name in _EXPORT_FILES):
            f.unlink()
