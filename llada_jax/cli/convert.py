"""Convert checkpoints: `llada-jax convert to-hf --checkpoint=CKPT --out=DIR` / `from-hf --hf-dir=DIR --out=CKPT`."""
from __future__ import annotations

import argparse
import os

# decimal units as transformers' save_pretrained reads them, binary ones spelled out
SIZE_UNITS = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}


def parse_size(text: str) -> int:
    from llada_jax.config import ConfigError

    clean = text.strip().upper()
    for unit, factor in SIZE_UNITS.items():
        number = clean[:-len(unit)].strip()
        if clean.endswith(unit) and number.replace(".", "", 1).isdigit():
            return int(float(number) * factor)
    if clean.isdigit():
        return int(clean)
    raise ConfigError(f"--max-shard-size={text!r} is not a size; write e.g. 5GB, 500MB, 2GiB or a byte count")


def default_import_config(hf_dir: str) -> str:
    """The run config an export wrote beside its weights (a faithful round trip), else configs/base.py."""
    saved = os.path.join(hf_dir, "llada_jax_config.json")
    if os.path.isfile(saved):
        return saved
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above llada_jax/cli/
    return os.path.join(package_root, "configs", "base.py")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("direction", choices=["to-hf", "from-hf"])
    parser.add_argument("--checkpoint", help="to-hf: params export, run workdir or checkpoint step")
    parser.add_argument("--hf-dir", help="from-hf: folder with config.json and *.safetensors")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="bfloat16", help="to-hf: bfloat16 or float32")
    parser.add_argument("--tokenizer", default=None, help="to-hf: tokenizer folder to copy alongside")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--expert-layout", default="per-expert", choices=["per-expert", "stacked"],
                        help="to-hf, mixture of experts: one tensor per expert (the released checkpoints) or, for "
                             "LLaDA2.0, each layer's experts stacked in one tensor (dFactory's training layout)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing only the files the conversion writes")
    parser.add_argument("--config", default=None,
                        help="from-hf: config whose non-model fields the imported checkpoint carries (default: the "
                             "llada_jax_config.json an export left in the folder, else configs/base.py); "
                             "--config.a.b=value overrides apply on top")


def run(args, overrides) -> int:
    from llada_jax.interop import hf_export, hf_import
    from llada_jax.config import ConfigError, load_config

    if args.direction == "to-hf":
        if not args.checkpoint:
            raise ConfigError("convert to-hf needs --checkpoint=CKPT (a params export or a run workdir)")
        files = hf_export.to_hf(args.checkpoint, args.out, dtype=args.dtype, tokenizer=args.tokenizer,
                              max_shard_bytes=parse_size(args.max_shard_size), overwrite=args.overwrite,
                              expert_layout=args.expert_layout)
        print(f"wrote {len(files)} files to {args.out}: {', '.join(files[:4])}{' ...' if len(files) > 4 else ''}")
    else:
        if not args.hf_dir:
            raise ConfigError("convert from-hf needs --hf-dir=DIR (a folder with config.json and safetensors)")
        config_path = args.config or default_import_config(args.hf_dir)
        config = hf_import.from_hf(args.hf_dir, args.out, load_config(config_path, overrides), overrides,
                                 overwrite=args.overwrite)
        m = config.model
        experts = f", {m.moe.experts} experts" if m.get("moe", {}).get("experts") else ""
        print(f"imported {m.n_layers} x {m.d_model}{experts} ({'causal' if m.causal else 'bidirectional'}) into {args.out}")
    return 0
