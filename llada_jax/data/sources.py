"""Where documents come from: text files, JSONL, Parquet, seqio Tasks/Mixtures and the CPython-docs corpus.

Each reader yields one item per document (a str, or for SFT sources a dict with "prompt"/"response" or
"messages") and counts what it had to skip in a `Skipped` tally, so bad input is reported, never silently
dropped. Input that cannot be a dataset at all (no files, every file empty, a field that never appears)
raises ConfigError. Readers are deterministic: the same input gives the same documents in the same order.
"""
from __future__ import annotations

import collections
import glob
import importlib
import json
import os
import sys
from typing import Iterator

from llada_jax.config import ConfigError

SOURCES = ("pydoc", "text", "jsonl", "parquet", "seqio", "sft_jsonl")


class Skipped(collections.Counter):
    """Reason -> count of documents left out, reported by `llada-jax prepare` and kept in the manifest.

    With strict=True the first bad document raises instead (data.strict / `prepare --strict`).
    """

    def __init__(self, strict: bool = False):
        super().__init__()
        self.strict = strict

    def skip(self, reason: str, where: str) -> None:
        if self.strict:
            raise ConfigError(f"{where}; fix the input or drop --strict (data.strict=False) to skip and count "
                              "such documents")
        self[reason] += 1

    def summary(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.items())) or "none"


def expand_paths(pattern: str, what: str = "data.path") -> list[str]:
    """Comma-separated files or globs, sorted within each glob; a pattern matching nothing is an error."""
    paths: list[str] = []
    for part in [p.strip() for p in pattern.split(",") if p.strip()]:
        matched = sorted(glob.glob(os.path.expanduser(part), recursive=True))
        matched = [p for p in matched if os.path.isfile(p)]
        if not matched:
            raise ConfigError(f"{what}={part!r} matches no files; give existing files or a glob such as 'corpus/*.txt'")
        paths.extend(matched)
    if not paths:
        raise ConfigError(f"{what} is empty; give files or a glob of the input")
    return paths


def pydoc_documents(include_stdlib_source: bool = False) -> Iterator[str]:
    from llada_jax.data import text_corpus

    yield from text_corpus.pydoc_documents(include_stdlib_source)


def text_documents(pattern: str, skipped: Skipped) -> Iterator[str]:
    """One document per file; empty and non-UTF-8 files are skipped and counted."""
    for path in expand_paths(pattern):
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            skipped.skip("non-UTF-8 files", f"{path} is not valid UTF-8 (byte {e.start})")
            continue
        if not text.strip():
            skipped.skip("empty files", f"{path} is empty")
            continue
        yield text


def _jsonl_records(pattern: str, skipped: Skipped) -> Iterator[tuple[str, int, dict]]:
    for path in expand_paths(pattern):
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    skipped.skip("non-UTF-8 lines", f"{path}:{lineno} is not valid UTF-8")
                    continue
                except json.JSONDecodeError:
                    skipped.skip("lines that are not JSON", f"{path}:{lineno} is not JSON")
                    continue
                if not isinstance(record, dict):
                    skipped.skip("lines that are not JSON objects", f"{path}:{lineno} is not a JSON object")
                    continue
                yield path, lineno, record


def jsonl_documents(pattern: str, field: str, skipped: Skipped) -> Iterator[str]:
    """The string `field` of each JSON line; lines without it (or with an empty one) are skipped and counted."""
    seen = 0
    for path, lineno, record in _jsonl_records(pattern, skipped):
        value = record.get(field)
        if not isinstance(value, str):
            skipped.skip(f"lines without a string {field!r} field", f"{path}:{lineno} has no string field {field!r}")
            continue
        seen += 1
        if not value.strip():
            skipped.skip("empty documents", f"{path}:{lineno} has an empty {field!r}")
            continue
        yield value
    if not seen:
        raise ConfigError(f"no line of {pattern!r} has a string field {field!r}; set the field name with "
                          "--field (or data.text_field) to the one holding the text")


def sft_examples(pattern: str, skipped: Skipped) -> Iterator[dict]:
    """Conversations: {"prompt", "response"} pairs or {"messages": [{"role", "content"}, ...]} per line."""
    seen = 0
    for path, lineno, record in _jsonl_records(pattern, skipped):
        if isinstance(record.get("prompt"), str) and isinstance(record.get("response"), str):
            example = {"messages": [{"role": "user", "content": record["prompt"]},
                                    {"role": "assistant", "content": record["response"]}]}
            if record.get("system"):
                example["messages"].insert(0, {"role": "system", "content": str(record["system"])})
        elif isinstance(record.get("messages"), list):
            msgs = record["messages"]
            if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in msgs):
                skipped.skip("conversations with malformed messages", f"{path}:{lineno} has malformed messages")
                continue
            example = {"messages": msgs}
        else:
            skipped.skip("lines without prompt/response or messages", f"{path}:{lineno} has no prompt/response or messages")
            continue
        msgs = example["messages"]
        if not any(m["role"] == "assistant" for m in msgs) or not any(m["role"] == "user" for m in msgs):
            skipped.skip("conversations without a user and an assistant turn",
                         f"{path}:{lineno} lacks a user or an assistant turn")
            continue
        seen += 1
        yield example
    if not seen:
        raise ConfigError(f"no line of {pattern!r} is a conversation; write JSON lines with \"prompt\" and "
                          "\"response\" strings or a \"messages\" list of {\"role\", \"content\"}")


def parquet_documents(pattern: str, field: str, skipped: Skipped) -> Iterator[str]:
    """The string column `field` of Parquet files, read a row group at a time."""
    import pyarrow.parquet as pq

    for path in expand_paths(pattern):
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:
            raise ConfigError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0]}); check or drop it") from None
        if field not in pf.schema_arrow.names:
            raise ConfigError(f"{path} has no column {field!r} (it has {pf.schema_arrow.names}); set --field "
                              "(or data.text_field) to the text column")
        for group in range(pf.num_row_groups):
            for value in pf.read_row_group(group, columns=[field]).column(0).to_pylist():
                if value is None:
                    skipped.skip("null rows", f"{path} has a null {field!r}")
                elif isinstance(value, bytes):
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError:
                        skipped.skip("non-UTF-8 rows", f"{path} has a non-UTF-8 {field!r}")
                        continue
                if isinstance(value, str):
                    if value.strip():
                        yield value
                    else:
                        skipped.skip("empty documents", f"{path} has an empty {field!r}")


def import_modules(names: str) -> None:
    """Imports the comma-separated modules that register seqio Tasks (e.g. --import-module=mytasks)."""
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"cannot import module {name!r} ({e}); put it on PYTHONPATH or in the current folder") from None


def seqio_task(name: str):
    """The registered seqio Task or Mixture `name`."""
    import seqio  # lazy: imports TensorFlow

    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        raise ConfigError(f"no seqio Task or Mixture named {name!r} is registered; register it in a module and pass "
                          "--import-module=MODULE (data.import_module)") from None


def seqio_documents(name: str, split: str, feature: str, vocab, skipped: Skipped) -> Iterator[list[int]]:
    """Token lists of `feature` from a registered seqio Task or Mixture, whose vocabulary must be `vocab`'s."""
    task = seqio_task(name)
    features = task.output_features
    if feature not in features:
        raise ConfigError(f"seqio task {name!r} has no output feature {feature!r} (it has {sorted(features)}); "
                          "set --seqio-feature")
    theirs = features[feature].vocabulary
    if not _same_vocabulary(theirs, vocab):
        raise ConfigError(f"seqio task {name!r} tokenizes {feature!r} with {type(theirs).__name__} "
                          f"(vocab_size {theirs.vocab_size}) but data.tokenizer is {vocab.name!r}; use the same "
                          "vocabulary in the task and the config")
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False, num_epochs=1)
    for example in ds.as_numpy_iterator():
        ids = [int(i) for i in example[feature].reshape(-1)]
        while ids and ids[-1] == vocab.eos_id:  # the pipeline adds its own EOS between documents
            ids.pop()
        if not ids:
            skipped.skip("empty documents", f"seqio task {name!r} gave an empty {feature!r}")
            continue
        yield ids


def _same_vocabulary(theirs, vocab) -> bool:
    import seqio

    if vocab.name == "byte":
        return isinstance(theirs, seqio.ByteVocabulary) and theirs.vocab_size == 259
    if vocab.name == "sentencepiece":
        return (isinstance(theirs, seqio.SentencePieceVocabulary)
                and os.path.abspath(theirs.sentencepiece_model_file) == os.path.abspath(vocab.path)
                or getattr(theirs, "sp_model", None) == vocab.seqio_vocabulary().sp_model)
    return False


def describe(source: str, **kw) -> dict:
    """What identifies a source in a manifest (so a folder is never reused for different input)."""
    out = {"source": source}
    if source in ("text", "jsonl", "parquet", "sft_jsonl"):
        out["path"] = kw["path"]
        out["files"] = [os.path.abspath(p) for p in expand_paths(kw["path"])]
    if source in ("jsonl", "parquet"):
        out["field"] = kw["field"]
    if source == "seqio":
        out.update(task=kw["task"], split=kw["split"], feature=kw["feature"])
    if source == "pydoc":
        out["include_stdlib_source"] = bool(kw.get("include_stdlib_source", False))
        out["python"] = sys.version.split()[0]
    return out


def documents(source: str, skipped: Skipped, vocab=None, **kw) -> Iterator:
    """The documents of one source: str (text), list[int] (seqio, already tokenized) or dict (SFT)."""
    if source == "pydoc":
        return pydoc_documents(kw.get("include_stdlib_source", False))
    if source == "text":
        return text_documents(kw["path"], skipped)
    if source == "jsonl":
        return jsonl_documents(kw["path"], kw["field"], skipped)
    if source == "parquet":
        return parquet_documents(kw["path"], kw["field"], skipped)
    if source == "sft_jsonl":
        return sft_examples(kw["path"], skipped)
    if source == "seqio":
        return seqio_documents(kw["task"], kw["split"], kw["feature"], vocab, skipped)
    raise ConfigError(f"data source {source!r} is unknown; use one of {SOURCES}")
