"""Convert checkpoints: `llada-jax convert to-hf --checkpoint=CKPT --out=DIR` / `from-hf --hf-dir=DIR --out=CKPT`."""
from __future__ import annotations

import argparse
import os

TO_HF = """Write a checkpoint in the Hugging Face format (official LLaDA names, or Llama for the AR baseline).

config.json with the official LLaDA fields and safetensors shards (with model.safetensors.index.json above
--max-shard-size); load it with transformers (trust_remote_code and the official modeling_llada.py)."""
FROM_HF = """Import an official LLaDA (or Llama) Hugging Face folder into a params export.

Every tensor's name and shape is checked against config.json; the export is read by train --init_from,
sample, score and eval."""
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
    from llada_jax.cli import _HelpFormatter  # the same help layout as every command

    directions = parser.add_subparsers(dest="direction", metavar="DIRECTION", title="directions",
                                       help="to-hf or from-hf; `llada-jax convert DIRECTION --help` lists its flags")
    directions.required = True
    to_hf = directions.add_parser("to-hf", formatter_class=_HelpFormatter, help=TO_HF.split("\n")[0],
                                  description=TO_HF)
    to_hf.add_argument("--checkpoint", required=True, help="params export, run workdir or checkpoint step")
    to_hf.add_argument("--out", required=True, help="new or empty folder for config.json and the safetensors")
    to_hf.add_argument("--dtype", default="bfloat16", help="dtype of the weights: bfloat16 or float32")
    to_hf.add_argument("--tokenizer", default=None, help="tokenizer folder to copy alongside")
    to_hf.add_argument("--max-shard-size", default="5GB", help="largest safetensors file, e.g. 5GB, 500MB, 2GiB")
    to_hf.add_argument("--expert-layout", default="per-expert", choices=["per-expert", "stacked"],
                       help="mixture of experts: one tensor per expert (the released checkpoints) or, for "
                            "LLaDA2.0, each layer's experts stacked in one tensor (dFactory's training layout)")
    from_hf = directions.add_parser("from-hf", formatter_class=_HelpFormatter, help=FROM_HF.split("\n")[0],
                                    description=FROM_HF)
    from_hf.add_argument("--hf-dir", required=True, help="folder with config.json and *.safetensors")
    from_hf.add_argument("--out", required=True, help="new or empty folder for the params export")
    from_hf.add_argument("--config", default=None,
                         help="config whose non-model fields the imported checkpoint carries (default: the "
                              "llada_jax_config.json an export left in the folder, else configs/base.py); "
                              "--config.a.b=value overrides apply on top")
    for sub in (to_hf, from_hf):
        sub.add_argument("--overwrite", action="store_true",
                         help="write into a non-empty --out, replacing only the files the conversion writes")


def run(args, overrides) -> int:
    from llada_jax.config import load_config

    if args.direction == "to-hf":
        from llada_jax.checkpoints import locate

        max_shard_bytes = parse_size(args.max_shard_size)
        locate.resolve(args.checkpoint)  # a wrong path is said before the converters load
        from llada_jax.interop import hf_export

        files = hf_export.to_hf(args.checkpoint, args.out, dtype=args.dtype, tokenizer=args.tokenizer,
                                max_shard_bytes=max_shard_bytes, overwrite=args.overwrite,
                                expert_layout=args.expert_layout)
        print(f"wrote {len(files)} files to {args.out}: {', '.join(files[:4])}{' ...' if len(files) > 4 else ''}")
    else:
        from llada_jax.interop import hf_import

        config_path = args.config or default_import_config(args.hf_dir)
        config = hf_import.from_hf(args.hf_dir, args.out, load_config(config_path, overrides), overrides,
                                   overwrite=args.overwrite)
        m = config.model
        experts = f", {m.moe.experts} experts" if m.get("moe", {}).get("experts") else ""
        print(f"imported {m.n_layers} x {m.d_model}{experts} ({'causal' if m.causal else 'bidirectional'}) into {args.out}")
    return 0
