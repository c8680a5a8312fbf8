"""Tokenize a source into a prepared folder (records.py layout), resumably.

Documents are routed deterministically: a document goes to the eval split whenever the eval split holds
less than eval_fraction of the text seen so far (sizes in characters), so held-out documents are spread
evenly through the corpus and make up about that share of it. Each split is cut into shards of
`docs_per_shard` documents in source order, so shard k always holds the same documents; a re-run iterates
the source again but only tokenizes shards whose stats file is missing.
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import time

import numpy as np

from llada_jax.config import ConfigError
from llada_jax.data import chat, records, sources

LAYOUT_VERSION = 1  # bump when routing or record layout changes, so cached folders are not reused


def identity_for(source: str, vocab, source_kw: dict, docs_per_shard: int, eval_fraction: float,
                 chat_template: str = "auto") -> dict:
    ident = {"version": LAYOUT_VERSION, "source": sources.describe(source, **source_kw), "tokenizer": vocab.identity,
             "docs_per_shard": int(docs_per_shard), "eval_fraction": float(eval_fraction),
             "kind": "sft" if source == "sft_jsonl" else "pretrain"}
    if source == "sft_jsonl":
        ident["chat_template"] = chat.resolve(chat_template, vocab)
    return ident


def input_fingerprint(source: str, source_kw: dict) -> list[dict]:
    """Size and SHA-256 of every input file: a manifest remembers them, so input rewritten after (or during) a
    prepare is noticed instead of silently mixing old and new shards. A seqio source gives the SHA-256 of its
    Task's definition instead (task_fingerprint.py); the bundled pydoc corpus gives []."""
    if source == "seqio":
        from llada_jax.data import task_fingerprint

        name = source_kw["task"]
        return [{"file": f"seqio task {name!r} (its definition)", "definition_sha256": task_fingerprint.task_sha256(name)}]
    if source not in ("text", "jsonl", "parquet", "sft_jsonl"):
        return []
    out = []
    for path in sources.expand_paths(source_kw["path"], "--input"):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out.append({"file": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": digest.hexdigest()})
    return out


def _changed(before: list[dict], after: list[dict]) -> str:
    """The first input that differs between two fingerprints, for a one-sentence message."""
    old = {f["file"]: f for f in before}
    for f in after:
        if old.get(f["file"]) != f:
            return f["file"]
    return next((f["file"] for f in before if f["file"] not in {g["file"] for g in after}), "")


def _remove_own_files(output: str) -> None:
    """--overwrite: the manifest and shards an earlier prepare wrote go; any other file stays."""
    own = re.compile(r"^(manifest\.json|(train|eval)-\d{5}\.(array_record|json))(\.tmp-\d+)?$")
    for name in os.listdir(output):
        if own.match(name):
            os.remove(os.path.join(output, name))


def _size(doc) -> int:
    if isinstance(doc, dict):
        return sum(len(m["content"]) for m in doc["messages"])
    return len(doc)


def _entropy(counts: dict) -> float:
    c = np.asarray(list(counts.values()), dtype=np.float64)
    if not c.size or c.sum() == 0:
        return 0.0
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


class _Progress:
    """One line every few seconds: documents, tokens and tokens/s."""

    def __init__(self, log, every_s: float = 5.0):
        self.log, self.every_s = log, every_s
        self.start = self.last = time.perf_counter()
        self.docs = self.tokens = 0

    def add(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self.log(self.line())

    def line(self) -> str:
        rate = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        return f"prepare: {self.docs:,} documents, {self.tokens:,} tokens tokenized, {rate:,.0f} tokens/s"


def prepare(output: str, *, source: str, vocab, source_kw: dict, docs_per_shard: int = 10000,
            eval_fraction: float = 0.0, chat_template: str = "auto", strict: bool = False, overwrite: bool = False,
            log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Writes (or finishes) the prepared folder `output`; returns its manifest.

    The manifest records each input file's size and SHA-256: input changed since (or during) an earlier
    prepare is refused unless `overwrite`, which removes only the files a prepare writes and starts again.
    """
    if docs_per_shard <= 0:
        raise ConfigError(f"docs_per_shard={docs_per_shard} must be positive")
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction={eval_fraction} must be in [0, 1)")
    if source == "seqio":
        sources.import_modules(source_kw.get("import_module", ""))
    ident = identity_for(source, vocab, source_kw, docs_per_shard, eval_fraction, chat_template)
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output={output} is a file, not a folder; name a new or empty folder")
    inputs = input_fingerprint(source, source_kw)
    existing = records.read_manifest(output) if os.path.isdir(output) else None
    if existing is not None and overwrite:
        _remove_own_files(output)
    elif existing is not None:
        if existing["identity"] != ident:
            diff = sorted(k for k in set(ident) | set(existing["identity"]) if ident.get(k) != existing["identity"].get(k))
            raise ConfigError(f"{output} already holds a different dataset (its manifest differs in {', '.join(diff)}); "
                              "choose another output folder or pass --overwrite to prepare it again")
        if existing.get("inputs", inputs) != inputs:
            raise ConfigError(f"the input {_changed(existing['inputs'], inputs)} changed since {output} was prepared "
                              "from it; pass --overwrite to prepare it again, or choose another output folder")
        if existing.get("complete"):
            records.verify_shards(output, existing)
            log(f"prepare: {output} is already complete and verified "
                f"({existing['splits']['train']['documents']:,} train documents)")
            return existing
    elif os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise ConfigError(f"{output} is not empty and has no {records.MANIFEST}; choose an empty or new output folder, "
                          "or pass --overwrite to write beside the files it holds")
    os.makedirs(output, exist_ok=True)
    manifest = {"format": records.FORMAT, "identity": ident, "inputs": inputs, "complete": False, "kind": ident["kind"]}
    records.write_json_atomic(os.path.join(output, records.MANIFEST), manifest)

    template = ident.get("chat_template")
    skipped = sources.Skipped(strict=strict)
    docs = sources.documents(source, skipped, vocab=vocab, **source_kw)
    progress = _Progress(log)
    shards = {s: [] for s in records.SPLITS}
    pending = {s: [] for s in records.SPLITS}

    def encode(doc) -> tuple[bytes, int, dict, tuple | None]:
        if ident["kind"] == "sft":
            prompt, response = chat.encode_example(doc, vocab, template)
            ids = prompt + response
            return records.encode_record(ids, len(prompt)), len(ids), ids, (len(prompt), len(ids))
        ids = vocab.encode(doc) if isinstance(doc, str) else list(doc)
        return records.encode_record(ids), len(ids), ids + [vocab.eos_id], None

    def flush(split: str) -> None:
        index = len(shards[split])
        done = records.finished_shard(output, split, index)
        if done is None:
            recs, counts, lengths, n_tokens = [], np.zeros(0, np.int64), [], 0
            for doc in pending[split]:
                rec, n, counted, length = encode(doc)
                recs.append(rec)
                n_tokens += n
                c = np.bincount(np.asarray(counted, np.int64)) if counted else np.zeros(0, np.int64)
                counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
                counts[: len(c)] += c
                if length is not None:
                    lengths.append(length)
            stats = {"tokens": n_tokens, "counts": {str(i): int(v) for i, v in enumerate(counts) if v}}
            if ident["kind"] == "sft":
                stats["lengths"] = lengths
            done = records.write_shard(output, split, index, recs, stats)
            progress.add(len(recs), n_tokens)
        shards[split].append(done)
        pending[split] = []

    seen_size = eval_size = 0
    for doc in docs:
        size = _size(doc)
        split = "eval" if eval_size < eval_fraction * seen_size else "train"
        seen_size += size
        eval_size += size if split == "eval" else 0
        pending[split].append(doc)
        if len(pending[split]) == docs_per_shard:
            flush(split)
    for split in records.SPLITS:
        if pending[split]:
            flush(split)

    splits = {}
    for split in records.SPLITS:
        counts: dict[str, int] = {}
        for s in shards[split]:
            for k, v in s["counts"].items():
                counts[k] = counts.get(k, 0) + v
        splits[split] = {
            "documents": sum(s["documents"] for s in shards[split]),
            "tokens": sum(s["tokens"] for s in shards[split]),
            "unigram_entropy": _entropy(counts),
            "unigram_counts": counts,
            "shards": [{k: s[k] for k in ("file", "bytes", "documents", "tokens", "sha256", "mtime_ns") if k in s}
                       for s in shards[split]],
        }
    if not splits["train"]["documents"]:
        raise ConfigError(f"the {source} source gave no usable training documents (skipped: {skipped.summary()}); "
                          "check the input path, field name and encoding")
    if input_fingerprint(source, source_kw) != inputs:
        raise ConfigError(f"the input {_changed(inputs, input_fingerprint(source, source_kw))} changed while {output} "
                          "was being prepared, so its shards may mix old and new text; run the command again with "
                          "--overwrite once the input is final")
    manifest.update(complete=True, splits=splits, skipped=dict(skipped))
    records.write_json_atomic(os.path.join(output, records.MANIFEST), manifest)
    log(progress.line() + f" | done: {splits['train']['documents']:,} train / {splits['eval']['documents']:,} eval "
        f"documents, {splits['train']['tokens']:,} / {splits['eval']['tokens']:,} tokens; skipped: {skipped.summary()}")
    return manifest


def read_sft_lengths(folder: str, manifest: dict, split: str) -> np.ndarray:
    """[n, 2] (prompt length, prompt + response length) of every SFT example, in record order."""
    rows = []
    for index, _ in enumerate(manifest["splits"][split]["shards"]):
        stats = records.finished_shard(folder, split, index)
        if stats is None:
            raise ConfigError(f"{folder} lost the stats of {split} shard {index}; prepare the folder again")
        rows.extend(stats["lengths"])
    return np.asarray(rows, np.int64).reshape(-1, 2)
