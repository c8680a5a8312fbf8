"""Tokenize a corpus into ArrayRecord shards + manifest: `llada-jax prepare --source=jsonl --input='d/*.jsonl' --output=DIR`."""
from __future__ import annotations

import argparse
import os


def register(parser: argparse.ArgumentParser) -> None:
    from llada_jax.data.sources import SOURCES

    parser.add_argument("--output", default="", help="folder to write (re-running the same command resumes it)")
    parser.add_argument("--source", default=None, choices=SOURCES,
                        help="pydoc (CPython docs, no download), text files, jsonl, parquet, seqio, sft_jsonl; default: "
                             "from --input's extension (.txt/.md text, .jsonl jsonl, .parquet parquet), else pydoc")
    parser.add_argument("--input", default="", help="files or globs, comma-separated (text/jsonl/parquet/sft_jsonl)")
    parser.add_argument("--field", default="text", help="JSONL key or Parquet column holding the text")
    parser.add_argument("--seqio-task", default="", help="registered seqio Task or Mixture (source=seqio)")
    parser.add_argument("--seqio-split", default="train", help="the seqio split to read (source=seqio)")
    parser.add_argument("--seqio-feature", default="targets", help="the tokenized feature to keep")
    parser.add_argument("--import-module", default="", help="module(s) to import first, e.g. one registering seqio Tasks")
    parser.add_argument("--include-stdlib-source", action="store_true", help="pydoc: also the standard library's .py files")
    parser.add_argument("--tokenizer", default="byte", choices=("byte", "sentencepiece", "hf"),
                        help="byte ids, a SentencePiece model or a Hugging Face tokenizer.json (--tokenizer-path)")
    parser.add_argument("--tokenizer-path", default="", help=".model file (sentencepiece) or tokenizer.json / its folder (hf)")
    parser.add_argument("--train-tokenizer", action="store_true",
                        help="first train a SentencePiece model on the source into --tokenizer-path, then use it")
    parser.add_argument("--vocab-size", type=int, default=8000, help="with --train-tokenizer")
    parser.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"), help="with --train-tokenizer")
    parser.add_argument("--docs-per-shard", type=int, default=10000, help="documents per ArrayRecord shard")
    parser.add_argument("--eval-fraction", type=float, default=0.01, help="share of the text held out as the eval split")
    parser.add_argument("--chat-template", default="auto", help="sft_jsonl: auto | plain | llada")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad document instead of skipping it")
    parser.add_argument("--overwrite", action="store_true",
                        help="prepare again into a folder holding another or outdated dataset (only its files go)")


INPUT_EXTENSIONS = {".txt": "text", ".md": "text", ".rst": "text", ".text": "text", ".jsonl": "jsonl",
                    ".json": "jsonl", ".parquet": "parquet"}


def infer_source(source, input_paths: str) -> str:
    """--source when given, else what --input's extension says; an --input the source never reads is refused."""
    from llada_jax.config import ConfigError

    if source in ("pydoc", "seqio") and input_paths:
        raise ConfigError(f"--source={source} does not read --input={input_paths}; drop --input, or pass "
                          "--source=text, jsonl, parquet or sft_jsonl for files")
    if source or not input_paths:
        return source or "pydoc"
    first = input_paths.split(",")[0].strip()
    ext = os.path.splitext(first)[1].lower()
    if ext not in INPUT_EXTENSIONS:
        raise ConfigError(f"cannot tell how to read --input={first} from its extension; pass --source=text, jsonl, "
                          "parquet or sft_jsonl")
    return INPUT_EXTENSIONS[ext]


def run(args, overrides) -> int:
    from llada_jax.config import ConfigError
    from llada_jax.data import prepare, sources, vocab as vocab_lib

    if overrides:
        raise ConfigError(f"prepare takes no --config.* overrides (got {overrides[0]}); use its own flags")
    args.source = infer_source(args.source, args.input)
    kw = {"path": args.input, "field": args.field, "include_stdlib_source": args.include_stdlib_source,
          "task": args.seqio_task, "split": args.seqio_split, "feature": args.seqio_feature,
          "import_module": args.import_module}
    if args.source in ("text", "jsonl", "parquet", "sft_jsonl") and not args.input:
        raise ConfigError(f"--source={args.source} needs --input with the files to read")
    if args.source == "seqio" and not args.seqio_task:
        raise ConfigError("--source=seqio needs --seqio-task=NAME (and --import-module=MODULE that registers it)")
    tokenizer = args.tokenizer
    if args.train_tokenizer:
        if args.source in ("seqio",):
            raise ConfigError("--train-tokenizer needs raw text; seqio tasks are already tokenized")
        if not args.tokenizer_path:
            raise ConfigError("--train-tokenizer needs --tokenizer-path=FILE.model to write the model to")
        prefix = args.tokenizer_path[:-len(".model")] if args.tokenizer_path.endswith(".model") else args.tokenizer_path
        skipped = sources.Skipped(strict=args.strict)
        docs = sources.documents(args.source, skipped, **kw)
        if args.source == "sft_jsonl":
            docs = (m["content"] for ex in docs for m in ex["messages"])
        path = vocab_lib.train_sentencepiece(docs, prefix, args.vocab_size, args.model_type)
        print(f"prepare: trained a {args.model_type} SentencePiece model of {args.vocab_size} pieces into {path}; "
              f"use it with --config.data.tokenizer=sentencepiece --config.data.tokenizer_path={path}")
        args.tokenizer_path, tokenizer = path, "sentencepiece"
        if not args.output:
            return 0
    if not args.output:
        raise ConfigError("--output is required: the folder to write the prepared dataset into")
    vocab = vocab_lib.load_vocabulary(tokenizer, args.tokenizer_path)
    manifest = prepare.prepare(args.output, source=args.source, vocab=vocab, source_kw=kw,
                               docs_per_shard=args.docs_per_shard, eval_fraction=args.eval_fraction,
                               chat_template=args.chat_template, strict=args.strict, overwrite=args.overwrite)
    tok = manifest["identity"]["tokenizer"]
    print(f"prepare: {args.output}: {manifest['splits']['train']['tokens']:,} train tokens; tokenizer {tok['name']} "
          f"(size {tok['size']}, mask {tok['mask_id']}, EOS {tok['eos_id']}); train with "
          f"--config.data.source=prepared --config.data.path={args.output}")
    return 0
