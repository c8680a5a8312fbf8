"""The one entry point the training loop calls: `build(config, process_index, process_count)`.

Train path (grain): prepared ArrayRecord shards -> global shuffle by seed (reshuffled every epoch) -> EOS
after each document -> packing (packing.py) or SFT rows (sft.py) -> weighted mix of datasets (mixture.py)
-> batch -> this process's rows -> optional worker processes. The random-length crop is applied inside the
jitted step, not here.

data.shard_by picks where processes split the work:
- "batch" (default): every process forms the same global batch and keeps rows [i * B/P, (i + 1) * B/P).
  The data is then independent of the process count (a 2-process run trains on exactly what a 1-process
  run does) and every process has the same iterator state, so saving process 0's is enough. Each host reads
  and packs the whole stream, which benchmarks/data_pipeline.py shows is far cheaper than the model.
- "document": process i reads only documents i, i + P, ... (disjoint, union the whole) and packs its own
  rows: reading scales with the pod, but the order depends on the process count and each process's
  iterator state differs (save every process's `get_state()`).

A config whose data is not prepared yet (data.source other than "prepared") is prepared on first use into
data.cache_dir, so `llada-jax train --config=configs/tiny.py` needs no separate step.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import uuid
from typing import Any

import grain
import numpy as np

from llada_jax.config import CONVERSATION_OBJECTIVES, DOCUMENT_OBJECTIVES, ConfigError
from llada_jax.data import mixture, packing, prepare, records, sft, sources
from llada_jax.data.vocab import get_vocabulary

SHARD_BY = ("batch", "document")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cache_dir(config) -> str:
    d = config.data.get("cache_dir", "")
    return os.path.expanduser(d or os.path.join("~", ".cache", "llada_jax", "datasets"))


def source_kwargs(d) -> dict:
    """The reader arguments of config.data for sources.documents / prepare."""
    return {"path": d.get("path", ""), "field": d.get("text_field", "text"),
            "include_stdlib_source": d.get("include_stdlib_source", False), "task": d.get("seqio_task", ""),
            "split": d.get("seqio_split", "train"), "feature": d.get("seqio_feature", "targets"),
            "import_module": d.get("import_module", "")}


def ensure_prepared(config, vocab, log=_log) -> str:
    """The prepared folder for config.data (preparing it into the cache on first use)."""
    d = config.data
    if d.source == "prepared":
        if not d.path:
            raise ConfigError("data.source='prepared' needs data.path, the folder `llada-jax prepare` wrote")
        return os.path.expanduser(d.path)
    if d.source not in sources.SOURCES:
        raise ConfigError(f"data.source={d.source!r} is unknown; use 'prepared' or one of {sources.SOURCES}")
    kw = source_kwargs(d)
    if d.source == "seqio":
        sources.import_modules(kw["import_module"])
    docs_per_shard, eval_fraction = d.get("docs_per_shard", 1000), d.eval_fraction
    ident = prepare.identity_for(d.source, vocab, kw, docs_per_shard, eval_fraction, d.get("chat_template", "auto"))
    # The cache key also covers file sizes and times, so edited input is prepared again.
    stamps = [(os.path.getsize(p), os.path.getmtime(p)) for p in ident["source"].get("files", [])]
    if d.source == "seqio":  # and a changed Task definition, too
        stamps = prepare.input_fingerprint(d.source, kw)
    key = hashlib.sha256(json.dumps([ident, stamps], sort_keys=True).encode()).hexdigest()[:16]
    folder = os.path.join(cache_dir(config), f"{d.source}-{vocab.name}-{key}")
    manifest = records.read_manifest(folder)
    if manifest is not None and manifest.get("complete"):
        return folder
    # Prepare into a private folder and rename: concurrent processes (hosts sharing a disk) never see a half
    # written dataset, and the loser of the race just uses the winner's copy.
    tmp = f"{folder}.tmp-{uuid.uuid4().hex[:8]}"
    log(f"preparing data.source={d.source!r} into {folder} (once; later runs reuse it)")
    prepare.prepare(tmp, source=d.source, vocab=vocab, source_kw=kw, docs_per_shard=docs_per_shard,
                    eval_fraction=eval_fraction, chat_template=d.get("chat_template", "auto"),
                    strict=d.get("strict", False), log=log)
    try:
        os.rename(tmp, folder)
    except OSError:
        if records.read_manifest(folder) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _doc_with_eos(raw: bytes, eos_id: int) -> dict[str, np.ndarray]:
    ids = records.decode_record(raw)
    return {"tokens": np.concatenate([ids, np.asarray([eos_id], np.int32)])}


def _documents(source, seed: int, shuffle: bool, process_index: int, process_count: int,
               num_epochs: int | None) -> grain.MapDataset:
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)  # a fresh permutation every epoch once repeated
    ds = ds.repeat(num_epochs)
    return ds[process_index::process_count]


def rows(source, kind: str, *, seq_len: int, eos_id: int, pad_id: int, seed: int, packing_mode: str = "concat",
         shuffle: bool = True, overlong: str = "truncate", process_index: int = 0, process_count: int = 1,
         num_epochs: int | None = None, read_threads: int = 4) -> grain.IterDataset:
    """This process's rows (unbatched) of one prepared split."""
    docs = _documents(source, seed, shuffle, process_index, process_count, num_epochs)
    read = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(16, 4 * read_threads))
    if kind == "sft":
        docs = docs.filter(functools.partial(sft.keep_record, seq_len=seq_len, overlong=overlong))
        docs = docs.map(functools.partial(sft.to_row, seq_len=seq_len, eos_id=eos_id))
        return docs.to_iter_dataset(read)
    docs = docs.map(functools.partial(_doc_with_eos, eos_id=eos_id))
    return packing.pack(docs.to_iter_dataset(read), packing_mode, seq_len, pad_id, seed)


def _rows_of(batch: dict, lo: int, hi: int) -> dict:
    return {k: v[lo:hi] for k, v in batch.items()}


class Batches:
    """This process's batches; `get_state`/`set_state` resume exactly (grain iterator state).

    The state carries the grain state (under "all" when every process has the same one, else under this
    process's index) plus the number of batches served. A state without this process's entry (e.g. only
    process 0's was saved with shard_by="document") is restored by replaying that many batches from the
    start: slower, but still exactly the batches an uninterrupted run would have seen.
    """

    def __init__(self, dataset: grain.IterDataset, process_index: int, process_count: int, shared_state: bool = False):
        self._dataset = dataset
        self._it = iter(dataset)
        self._index, self._count = process_index, process_count
        self._key = "all" if shared_state else str(process_index)  # "all": every process has the same state
        self._served = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._it)
        self._served += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"batches": self._served, "process_count": self._count,
                "grain": {self._key: json.dumps(self._it.get_state())}}

    def set_state(self, state: dict[str, Any]) -> None:
        if "batches" not in state and "step" in state:  # state of the earlier window loader: same position
            state = {"batches": int(state["step"]), "process_count": self._count, "grain": {}}
        mine = state.get("grain", {}).get(self._key)
        self._it = iter(self._dataset)
        if mine is not None and (self._key == "all" or state.get("process_count") == self._count):
            self._it.set_state(json.loads(mine))
        else:
            if self._key != "all" and state.get("process_count") not in (None, self._count):
                _log(f"data: the saved position is from {state['process_count']} processes, now {self._count}; "
                     "replaying batches to the same step (the data order differs from the original run)")
            for _ in range(int(state["batches"])):
                next(self._it)
        self._served = int(state["batches"])


def _eval_rows(source, kind: str, n: int, seq_len: int, eos_id: int, overlong: str) -> np.ndarray | dict:
    """The first n rows of an eval split in stored order (cycled if it has fewer): fixed across a run."""
    if source is None or n == 0:
        return []
    out = []
    if kind == "sft":
        for i in range(len(source)):
            raw = source[i]
            if sft.keep_record(raw, seq_len, overlong):
                out.append(sft.to_row(raw, seq_len, eos_id))
            if len(out) == n:
                break
    else:
        buf: list[np.ndarray] = []
        have = 0
        for i in range(len(source)):
            doc = _doc_with_eos(source[i], eos_id)["tokens"]
            buf.append(doc)
            have += len(doc)
            if have >= n * seq_len:
                break
        stream = np.concatenate(buf) if buf else np.zeros(0, np.int32)
        out = [{"tokens": stream[k * seq_len:(k + 1) * seq_len]} for k in range(len(stream) // seq_len)]
    if not out:
        return []
    return [out[k % len(out)] for k in range(n)]


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """The caller's (process_index, process_count), or JAX's when either is left out."""
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ConfigError(f"train.global_batch_size={global_batch_size} does not split over {process_count} "
                          "processes; make it a multiple of the process count")
    return global_batch_size // process_count


def _dataset_parts(config, vocab, log) -> list[tuple[str, float]]:
    """(prepared folder, mixture weight) of every dataset trained on; preparing config.data first if needed."""
    d = config.data
    if d.get("mixture", ""):
        return [(os.path.expanduser(p), w) for p, w in mixture.parse(d.mixture)]
    return [(ensure_prepared(config, vocab, log), 1.0)]


def _choice(d, key: str, default: str, choices: tuple) -> str:
    """data.<key> (default when unset), refused unless it is one of choices."""
    value = d.get(key, default)
    if value not in choices:
        raise ConfigError(f"data.{key}={value!r} is unknown; use one of {choices}")
    return value


def _check_kind(folder: str, kind: str, objective: str) -> None:
    """SFT conversations train only with an objective that takes them (sft, block_diffusion), and the SFT
    objective only on conversations."""
    if kind == "sft" and objective not in CONVERSATION_OBJECTIVES:
        raise ConfigError(f"{folder} holds SFT conversations but train.objective={objective!r}; "
                          "set --config.train.objective=sft")
    if kind != "sft" and objective not in DOCUMENT_OBJECTIVES:
        raise ConfigError(f"train.objective='sft' needs conversations but {folder} holds plain documents; "
                          "prepare an SFT JSONL (data.source='sft_jsonl')")


def _add_totals(info: dict, manifest: dict, train_info: dict, eval_info: dict) -> None:
    """Adds one dataset's document, token and skipped-input counts to the running totals in info."""
    for split, src_info in (("train", train_info), ("eval", eval_info)):
        info[f"{split}_documents"] += src_info["documents"]
        info[f"{split}_tokens"] += src_info["tokens"]
    for k, v in manifest.get("skipped", {}).items():
        info["skipped"][k] = info["skipped"].get(k, 0) + v


def _add_sft_overlong(info: dict, folder: str, manifest: dict, train_documents: int, seq_len: int,
                      overlong: str) -> None:
    """Adds one SFT dataset's truncated/dropped counts (sft_* for train, sft_eval_* for eval) to info; refuses a
    dataset whose every training example would be dropped, as training could then never start."""
    for split, name in (("train", "sft"), ("eval", "sft_eval")):
        counts = sft.overlong_counts(prepare.read_sft_lengths(folder, manifest, split), seq_len, overlong)
        for k, v in counts.items():
            info[f"{name}_{k}"] = info.get(f"{name}_{k}", 0) + v
    if info["sft_dropped"] >= train_documents:
        raise ConfigError(f"every SFT example in {folder} is longer than train.seq_len={seq_len} and was "
                          "dropped; raise train.seq_len or set data.sft_overlong='truncate'")


def _open_dataset(folder: str, vocab, t, overlong: str, info: dict):
    """(manifest, kind, train source, eval source) of one prepared folder, checked against the config; adds its
    counts to info."""
    manifest, train_src, train_info = records.open_split(folder, "train", vocab)
    _, eval_src, eval_info = records.open_split(folder, "eval", vocab)
    kind = manifest["kind"]
    _check_kind(folder, kind, t.objective)
    if train_src is None:
        raise ConfigError(f"{folder} has no training documents; prepare it from non-empty input")
    _add_totals(info, manifest, train_info, eval_info)
    if kind == "sft":
        _add_sft_overlong(info, folder, manifest, train_info["documents"], t.seq_len, overlong)
    return manifest, kind, train_src, eval_src


def _batched(train_sets: list, weights: list, config, by_batch: bool, process_index: int,
             local_batch: int) -> grain.IterDataset:
    """This process's train batches: the datasets' rows mixed by weight, batched, optionally in worker processes.

    With shard_by="batch" every process forms the same global batch and keeps its own rows of it."""
    t, d = config.train, config.data
    ds = train_sets[0] if len(train_sets) == 1 else grain.IterDataset.mix(train_sets, mixture.normalized(weights))
    if by_batch:
        ds = ds.batch(t.global_batch_size, drop_remainder=True)
        ds = ds.map(functools.partial(_rows_of, lo=process_index * local_batch, hi=(process_index + 1) * local_batch))
    else:
        ds = ds.batch(local_batch, drop_remainder=True)
    if d.get("worker_count", 0) > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.worker_count,
                                                         per_worker_buffer_size=d.get("worker_buffer_size", 2)))
    return ds


def _eval_shares(weights: list, n_rows: int) -> np.ndarray:
    """Eval rows per dataset in proportion to the mixture weights, rounding leftovers onto the first."""
    shares = np.floor(np.asarray(mixture.normalized(weights)) * n_rows).astype(int)
    shares[0] += n_rows - shares.sum()
    return shares


def _eval_batches(eval_parts: list, weights: list, t, eos_id: int, overlong: str, process_index: int,
                  process_count: int, log) -> list[dict]:
    """The same eval rows on every run, split into micro-batches, this process's slice of each ([] when the eval
    split is empty, which is logged unless no eval batches were asked for)."""
    micro = t.global_batch_size // t.grad_accum_steps
    n_rows = micro * t.eval_batches
    eval_rows: list[dict] = []
    for (src, kind), n in zip(eval_parts, _eval_shares(weights, n_rows)):
        eval_rows.extend(_eval_rows(src, kind, int(n), t.seq_len, eos_id, overlong))
    eval_sets = []
    if len(eval_rows) == n_rows and n_rows:
        lo, hi = process_index * micro // process_count, (process_index + 1) * micro // process_count
        for b in range(t.eval_batches):
            chunk = eval_rows[b * micro:(b + 1) * micro][lo:hi]
            eval_sets.append({k: np.stack([r[k] for r in chunk]) for k in chunk[0]})
    elif n_rows:
        log("data: the eval split is empty (raise data.eval_fraction or prepare with --eval-fraction); "
            "eval loss is skipped")
    return eval_sets


def _report(info: dict, seq_len: int, overlong: str, log) -> None:
    """Logs what preparing and SFT length limits left out, so a silently shrunken dataset is visible."""
    if info.get("sft_truncated") or info.get("sft_dropped"):
        log(f"data: SFT examples longer than train.seq_len={seq_len}: {info['sft_truncated']} truncated, "
            f"{info['sft_dropped']} dropped (data.sft_overlong={overlong!r})")
    if info["skipped"]:
        log("data: input skipped while preparing: " + ", ".join(f"{v} {k}" for k, v in sorted(info["skipped"].items())))


def build(config, process_index: int | None = None, process_count: int | None = None, *, log=_log):
    """(train batch iterator with get_state/set_state, this process's fixed eval batches, info dict).

    info: train/eval documents and tokens, unigram_entropy (nats/token) of the training mix, skipped input
    counts, SFT truncated/dropped counts, and the prepared folders used.
    """
    process_index, process_count = _process_layout(process_index, process_count)
    t, d = config.train, config.data
    vocab = get_vocabulary(config)
    local_batch = _local_batch_size(t.global_batch_size, process_count)
    parts = _dataset_parts(config, vocab, log)
    by_batch = _choice(d, "shard_by", "batch", SHARD_BY) == "batch"
    packing_mode = _choice(d, "packing", "concat", packing.PACKINGS)
    overlong = _choice(d, "sft_overlong", "truncate", sft.OVERLONG)

    train_sets, eval_parts, manifests = [], [], []
    info: dict[str, Any] = {"train_documents": 0, "eval_documents": 0, "train_tokens": 0, "eval_tokens": 0,
                            "skipped": {}, "datasets": [p for p, _ in parts]}
    for i, (folder, _) in enumerate(parts):
        manifest, kind, train_src, eval_src = _open_dataset(folder, vocab, t, overlong, info)
        manifests.append(manifest)
        train_sets.append(rows(
            train_src, kind, seq_len=t.seq_len, eos_id=vocab.eos_id, pad_id=vocab.pad_id, seed=t.seed + 7919 * i,
            packing_mode=packing_mode, shuffle=d.get("shuffle", True), overlong=overlong,
            process_index=0 if by_batch else process_index, process_count=1 if by_batch else process_count,
            read_threads=d.get("read_threads", 4)))
        eval_parts.append((eval_src, kind))
    if len({kind for _, kind in eval_parts}) > 1:
        raise ConfigError("data.mixture mixes SFT and pretraining datasets; mix only one kind")

    weights = [w for _, w in parts]
    ds = _batched(train_sets, weights, config, by_batch, process_index, local_batch)
    batches = Batches(ds, process_index, process_count, shared_state=by_batch)
    eval_sets = _eval_batches(eval_parts, weights, t, vocab.eos_id, overlong, process_index, process_count, log)
    info["unigram_entropy"] = mixture.mixed_entropy([m["splits"]["train"]["unigram_counts"] for m in manifests], weights)
    _report(info, t.seq_len, overlong, log)
    return batches, eval_sets, info
