"""Tokenize a source into a prepared folder (records.py layout), resumably.

Documents are routed deterministically: a document goes to the eval split whenever the eval split holds
less than eval_fraction of the text seen so far (sizes in characters), so held-out documents are spread
evenly through the corpus and make up about that share of it. Each split is cut into shards of
`docs_per_shard` documents in source order, so shard k always holds the same documents; a re-run iterates
the source again but only tokenizes shards whose stats file is missing.
"""
from __future__ import annotations

import functools
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


def _check_shard_settings(docs_per_shard: int, eval_fraction: float) -> None:
    if docs_per_shard <= 0:
        raise ConfigError(f"docs_per_shard={docs_per_shard} must be positive")
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction={eval_fraction} must be in [0, 1)")


def _refuse_mismatch(output: str, existing: dict, ident: dict, inputs: list[dict]) -> None:
    """An earlier prepare of another dataset or of other input must not be finished with this one's shards."""
    if existing["identity"] != ident:
        diff = sorted(k for k in set(ident) | set(existing["identity"]) if ident.get(k) != existing["identity"].get(k))
        raise ConfigError(f"{output} already holds a different dataset (its manifest differs in {', '.join(diff)}); "
                          "choose another output folder or pass --overwrite to prepare it again")
    if existing.get("inputs", inputs) != inputs:
        raise ConfigError(f"the input {_changed(existing['inputs'], inputs)} changed since {output} was prepared "
                          "from it; pass --overwrite to prepare it again, or choose another output folder")


def _resume_or_reset(output: str, ident: dict, inputs: list[dict], overwrite: bool, log) -> dict | None:
    """What an earlier prepare left in `output`: its manifest when it is complete and verified (nothing to do),
    else None, after --overwrite removed its files or after checking that it is the same dataset to finish."""
    existing = records.read_manifest(output) if os.path.isdir(output) else None
    if existing is not None and overwrite:
        _remove_own_files(output)
    elif existing is not None:
        _refuse_mismatch(output, existing, ident, inputs)
        if existing.get("complete"):
            records.verify_shards(output, existing)
            log(f"prepare: {output} is already complete and verified "
                f"({existing['splits']['train']['documents']:,} train documents)")
            return existing
    elif os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise ConfigError(f"{output} is not empty and has no {records.MANIFEST}; choose an empty or new output folder, "
                          "or pass --overwrite to write beside the files it holds")
    return None


def _start_manifest(output: str, ident: dict, inputs: list[dict]) -> dict:
    """An incomplete manifest written first, so a re-run knows which dataset the shards beside it belong to."""
    os.makedirs(output, exist_ok=True)
    manifest = {"format": records.FORMAT, "identity": ident, "inputs": inputs, "complete": False, "kind": ident["kind"]}
    records.write_json_atomic(os.path.join(output, records.MANIFEST), manifest)
    return manifest


def _encode(doc, kind: str, vocab, template: str | None) -> tuple[bytes, int, list[int], tuple | None]:
    """(record, token count, ids counted in the unigram stats, (prompt length, total length) for SFT else None).

    A pretraining document's counted ids include the EOS the pipeline appends after it; its record does not."""
    if kind == "sft":
        prompt, response = chat.encode_example(doc, vocab, template)
        ids = prompt + response
        return records.encode_record(ids, len(prompt)), len(ids), ids, (len(prompt), len(ids))
    ids = vocab.encode(doc) if isinstance(doc, str) else list(doc)
    return records.encode_record(ids), len(ids), ids + [vocab.eos_id], None


def _add_counts(counts: np.ndarray, ids: list[int]) -> np.ndarray:
    """counts (indexed by token id) plus the occurrences in ids, grown to the largest id seen."""
    c = np.bincount(np.asarray(ids, np.int64)) if ids else np.zeros(0, np.int64)
    counts = np.pad(counts, (0, max(0, len(c) - len(counts))))
    counts[: len(c)] += c
    return counts


def _tokenize_shard(docs: list, kind: str, vocab, template: str | None) -> tuple[list[bytes], dict]:
    """(records, stats) of one shard's documents: token total, unigram counts and, for SFT, the lengths."""
    recs, counts, lengths, n_tokens = [], np.zeros(0, np.int64), [], 0
    for doc in docs:
        rec, n, counted, length = _encode(doc, kind, vocab, template)
        recs.append(rec)
        n_tokens += n
        counts = _add_counts(counts, counted)
        if length is not None:
            lengths.append(length)
    stats = {"tokens": n_tokens, "counts": {str(i): int(v) for i, v in enumerate(counts) if v}}
    if kind == "sft":
        stats["lengths"] = lengths
    return recs, stats


def _finish_shard(output: str, split: str, index: int, docs: list, *, kind: str, vocab, template: str | None,
                  progress: _Progress) -> dict:
    """The stats of shard `index`: read back when an earlier run finished it, else tokenized and written now."""
    done = records.finished_shard(output, split, index)
    if done is None:
        recs, stats = _tokenize_shard(docs, kind, vocab, template)
        done = records.write_shard(output, split, index, recs, stats)
        progress.add(len(recs), stats["tokens"])
    return done


def _routed(docs, eval_fraction: float):
    """(split, document) in source order: a document goes to eval while eval holds less than eval_fraction of the
    characters seen before it, so the held-out share is spread evenly and the routing is the same every run."""
    seen_size = eval_size = 0
    for doc in docs:
        size = _size(doc)
        split = "eval" if eval_size < eval_fraction * seen_size else "train"
        seen_size += size
        eval_size += size if split == "eval" else 0
        yield split, doc


def _write_shards(docs, eval_fraction: float, docs_per_shard: int, finish_shard) -> dict[str, list[dict]]:
    """Split -> stats of its shards, each `docs_per_shard` routed documents (the last may hold fewer).

    finish_shard(split, index, documents) returns one shard's stats."""
    shards = {s: [] for s in records.SPLITS}
    pending = {s: [] for s in records.SPLITS}
    for split, doc in _routed(docs, eval_fraction):
        pending[split].append(doc)
        if len(pending[split]) == docs_per_shard:
            shards[split].append(finish_shard(split, len(shards[split]), pending[split]))
            pending[split] = []
    for split in records.SPLITS:
        if pending[split]:
            shards[split].append(finish_shard(split, len(shards[split]), pending[split]))
    return shards


def _split_summary(shards: list[dict]) -> dict:
    """A split's manifest entry: totals and unigram statistics over its shards, and each shard's file facts."""
    counts: dict[str, int] = {}
    for s in shards:
        for k, v in s["counts"].items():
            counts[k] = counts.get(k, 0) + v
    return {
        "documents": sum(s["documents"] for s in shards),
        "tokens": sum(s["tokens"] for s in shards),
        "unigram_entropy": _entropy(counts),
        "unigram_counts": counts,
        "shards": [{k: s[k] for k in ("file", "bytes", "documents", "tokens", "sha256", "mtime_ns") if k in s}
                   for s in shards],
    }


def _check_result(output: str, source: str, source_kw: dict, inputs: list[dict], splits: dict, skipped) -> None:
    """Refuses to mark complete a dataset with no training documents or one whose input changed meanwhile."""
    if not splits["train"]["documents"]:
        raise ConfigError(f"the {source} source gave no usable training documents (skipped: {skipped.summary()}); "
                          "check the input path, field name and encoding")
    if input_fingerprint(source, source_kw) != inputs:
        raise ConfigError(f"the input {_changed(inputs, input_fingerprint(source, source_kw))} changed while {output} "
                          "was being prepared, so its shards may mix old and new text; run the command again with "
                          "--overwrite once the input is final")


def _complete_manifest(output: str, manifest: dict, splits: dict, skipped, progress: _Progress, log) -> dict:
    manifest.update(complete=True, splits=splits, skipped=dict(skipped))
    records.write_json_atomic(os.path.join(output, records.MANIFEST), manifest)
    log(progress.line() + f" | done: {splits['train']['documents']:,} train / {splits['eval']['documents']:,} eval "
        f"documents, {splits['train']['tokens']:,} / {splits['eval']['tokens']:,} tokens; skipped: {skipped.summary()}")
    return manifest


def prepare(output: str, *, source: str, vocab, source_kw: dict, docs_per_shard: int = 10000,
            eval_fraction: float = 0.0, chat_template: str = "auto", strict: bool = False, overwrite: bool = False,
            log=lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Writes (or finishes) the prepared folder `output`; returns its manifest.

    The manifest records each input file's size and SHA-256: input changed since (or during) an earlier
    prepare is refused unless `overwrite`, which removes only the files a prepare writes and starts again.
    """
    _check_shard_settings(docs_per_shard, eval_fraction)
    if source == "seqio":
        sources.import_modules(source_kw.get("import_module", ""))
    ident = identity_for(source, vocab, source_kw, docs_per_shard, eval_fraction, chat_template)
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(f"--output={output} is a file, not a folder; name a new or empty folder")
    inputs = input_fingerprint(source, source_kw)
    finished = _resume_or_reset(output, ident, inputs, overwrite, log)
    if finished is not None:
        return finished
    manifest = _start_manifest(output, ident, inputs)

    skipped = sources.Skipped(strict=strict)
    docs = sources.documents(source, skipped, vocab=vocab, **source_kw)
    progress = _Progress(log)
    finish_shard = functools.partial(_finish_shard, output, kind=ident["kind"], vocab=vocab,
                                     template=ident.get("chat_template"), progress=progress)
    shards = _write_shards(docs, eval_fraction, docs_per_shard, finish_shard)
    splits = {split: _split_summary(shards[split]) for split in records.SPLITS}
    _check_result(output, source, source_kw, inputs, splits, skipped)
    return _complete_manifest(output, manifest, splits, skipped, progress, log)


def read_sft_lengths(folder: str, manifest: dict, split: str) -> np.ndarray:
    """[n, 2] (prompt length, prompt + response length) of every SFT example, in record order."""
    rows = []
    for index, _ in enumerate(manifest["splits"][split]["shards"]):
        stats = records.finished_shard(folder, split, index)
        if stats is None:
            raise ConfigError(f"{folder} lost the stats of {split} shard {index}; prepare the folder again")
        rows.extend(stats["lengths"])
    return np.asarray(rows, np.int64).reshape(-1, 2)
