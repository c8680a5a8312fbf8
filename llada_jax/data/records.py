"""The on-disk form of a prepared dataset: ArrayRecord shards of token ids plus a JSON manifest.

Layout of a prepared folder:
    manifest.json              what the folder holds (source, tokenizer identity, counts, shards); written
                               first with "complete": false, so a folder can never be mistaken for another
    train-00000.array_record   one record per document: little-endian int32 token ids (no EOS; the pipeline
                               adds it). SFT records are [prompt_length, prompt ids..., response ids...].
    train-00000.json           the shard's own counts; its presence marks the shard finished (re-runs skip it)
    eval-00000.array_record    held-out documents, same format

Everything that reads a folder goes through `open_split`, which checks the manifest is complete, the tokenizer
matches, and every shard has the size and record count the manifest promises, and the SHA-256 it recorded when
the file was modified since (a truncated or damaged copy fails here, with the shard's name, instead of deep
inside a worker mid-run). Damage that kept a shard's size and modification time (bit rot in place) is caught
as the records are read: each record is its own Riegeli chunk with a checked hash, and `CheckedSource` skips
and reports a record that fails it instead of ending the run.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np

from llada_jax.config import ConfigError

FORMAT = "llada_jax.prepared/v1"
MANIFEST = "manifest.json"
SPLITS = ("train", "eval")
WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for the global shuffle


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.array_record"


def stats_path(folder: str, split: str, index: int) -> str:
    return os.path.join(folder, f"{split}-{index:05d}.json")


def encode_record(ids, prompt_length: int | None = None) -> bytes:
    arr = np.asarray(ids, dtype="<i4")
    if prompt_length is not None:
        arr = np.concatenate([np.asarray([prompt_length], "<i4"), arr])
    return arr.tobytes()


def decode_record(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<i4").astype(np.int32)


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_manifest(folder: str) -> dict | None:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid JSON; delete the folder and run `llada-jax prepare` again") from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a llada_jax prepared dataset (format {manifest.get('format')!r}); "
                          "prepare it with `llada-jax prepare`")
    return manifest


def write_shard(folder: str, split: str, index: int, records: list[bytes], stats: dict) -> dict:
    """Writes one shard under a temporary name, then renames it and its stats file into place."""
    from array_record.python.array_record_module import ArrayRecordWriter

    name = shard_name(split, index)
    final = os.path.join(folder, name)
    tmp = f"{final}.tmp-{os.getpid()}"
    writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
    for r in records:
        writer.write(r)
    writer.close()
    os.replace(tmp, final)
    stats = dict(stats, file=name, bytes=os.path.getsize(final), documents=len(records), sha256=file_sha256(final),
                 mtime_ns=os.stat(final).st_mtime_ns)
    write_json_atomic(stats_path(folder, split, index), stats)
    return stats


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_shard(path: str, shard: dict, *, always: bool = False) -> None:
    """Compares a shard with the SHA-256 its manifest recorded: always, or (the cheap check at every start)
    only when its modification time differs from the recorded one, i.e. the file was written since."""
    want = shard.get("sha256")
    if want is None or (not always and os.stat(path).st_mtime_ns == shard.get("mtime_ns")):
        return
    if file_sha256(path) != want:
        raise ConfigError(f"shard {path} does not match the checksum in its manifest: it is corrupt; copy it again "
                          "or prepare the folder again with --overwrite")


def verify_shards(folder: str, manifest: dict) -> None:
    """Every shard of a complete folder against its recorded size and SHA-256 (what `prepare` re-checks)."""
    for split in SPLITS:
        for shard in manifest["splits"][split]["shards"]:
            path = os.path.join(folder, shard["file"])
            if not os.path.isfile(path) or os.path.getsize(path) != shard["bytes"]:
                raise ConfigError(f"shard {path} is missing or truncated; prepare the folder again with --overwrite")
            check_shard(path, shard, always=True)


def finished_shard(folder: str, split: str, index: int) -> dict | None:
    """The stats of a shard an earlier run completed, or None (then it is (re)written)."""
    path = stats_path(folder, split, index)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        stats = json.load(f)
    shard = os.path.join(folder, stats["file"])
    if not os.path.isfile(shard) or os.path.getsize(shard) != stats["bytes"]:
        return None
    return stats


def check_tokenizer(manifest: dict, vocab, folder: str) -> None:
    """A dataset is only read with the vocabulary that wrote it."""
    theirs = manifest["identity"]["tokenizer"]
    ours = vocab.identity
    keys = ("name", "sha256", "mask_id", "eos_id", "pad_id")
    if any(theirs.get(k) != ours.get(k) for k in keys):
        diff = ", ".join(f"{k} {theirs.get(k)!r} vs {ours.get(k)!r}" for k in keys if theirs.get(k) != ours.get(k))
        raise ConfigError(f"{folder} was tokenized with a different tokenizer than data.tokenizer ({diff}); "
                          "prepare it again with the config's tokenizer or point data.tokenizer at the one it used")


def open_split(folder: str, split: str, vocab=None):
    """(manifest, ArrayRecordDataSource or None when the split is empty, split summary), all checked."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise ConfigError(f"{folder} has no {MANIFEST}; prepare it with `llada-jax prepare --output={folder} ...`")
    if not manifest.get("complete"):
        raise ConfigError(f"{folder} is only partly prepared; run the same `llada-jax prepare` command again to finish it")
    if vocab is not None:
        check_tokenizer(manifest, vocab, folder)
    info = manifest["splits"][split]
    paths = []
    for shard in info["shards"]:
        path = os.path.join(folder, shard["file"])
        if not os.path.isfile(path):
            raise ConfigError(f"shard {path} is missing; copy the whole folder or prepare it again")
        size = os.path.getsize(path)
        if size != shard["bytes"]:
            raise ConfigError(f"shard {path} has {size} bytes but the manifest says {shard['bytes']}: it is truncated "
                              "or changed; copy it again or prepare the folder again")
        check_shard(path, shard)
        paths.append(path)
    if not paths:
        return manifest, None, info
    import grain

    try:
        source = CheckedSource(grain.sources.ArrayRecordDataSource(paths), paths,
                               [shard["documents"] for shard in info["shards"]])
        n = len(source)
    except Exception as e:
        raise ConfigError(f"cannot read shard {_unopenable(paths, grain)} ({str(e).splitlines()[0][:200]}): it is "
                          "corrupt; copy it again or prepare the folder again with --overwrite") from None
    if n != info["documents"]:
        raise ConfigError(f"the shards of {folder}/{split} hold {n} records but the manifest says {info['documents']}; "
                          "prepare the folder again")
    return manifest, source, info


def _unopenable(paths: list[str], grain) -> str:
    """The first shard whose index cannot be read (only looked for once opening them all failed)."""
    for path in paths:
        try:
            len(grain.sources.ArrayRecordDataSource([path]))
        except Exception:
            return path
    return ", ".join(paths)


class CheckedSource:
    """An ArrayRecord data source whose corrupt records are skipped and counted instead of ending the run.

    Every record of a prepared shard is its own Riegeli chunk with a hash that is checked on each read, so
    bit rot that left a shard's size and modification time unchanged costs nothing to detect: a record that
    fails to read is replaced by the next readable one (deterministically, so a resumed run draws the same
    data), and the first such record of each shard is reported in one line naming the shard and the fix.
    """

    MAX_IN_A_ROW = 64  # more unreadable records than this in a row: the shard is beyond skipping

    def __init__(self, source, paths: list[str], counts: list[int]):
        self._source, self._paths = source, list(paths)
        self._ends = np.cumsum(counts).tolist()
        self.skipped = 0
        self._reported: set[int] = set()

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        n = len(self._source)
        for k in range(self.MAX_IN_A_ROW):
            i = (int(index) + k) % n
            try:
                return self._source[i]
            except Exception as e:  # a Riegeli chunk hash mismatch, or worse
                self._skip(i, e)
        shard = self._paths[self._shard_of(int(index) % n)]
        raise ConfigError(f"shard {shard} has more than {self.MAX_IN_A_ROW} unreadable records in a row: it is corrupt; "
                          "copy it again or prepare the folder again with --overwrite")

    def __getitems__(self, indices) -> list[bytes]:
        try:
            return list(self._source.__getitems__(indices))  # the fast batched read when every record is good
        except Exception:
            return [self[i] for i in indices]

    def _shard_of(self, index: int) -> int:
        return int(np.searchsorted(self._ends, index, side="right"))

    def _skip(self, index: int, error: Exception) -> None:
        """Reports the first bad record of each shard, then every 10th, 100th, ... skip of this reader."""
        self.skipped += 1
        shard = self._shard_of(index)
        if shard not in self._reported:
            self._reported.add(shard)
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
            print(f"data: record {index - (self._ends[shard - 1] if shard else 0)} of shard {self._paths[shard]} is "
                  f"corrupt ({first}), so it is skipped (the next record is read in its place), as are any other "
                  "corrupt records of the shard; prepare the folder again with --overwrite to repair it",
                  file=sys.stderr, flush=True)
        elif self.skipped in (10, 100, 1000, 10000, 100000):
            print(f"data: {self.skipped} corrupt records skipped so far by this reader", file=sys.stderr, flush=True)
