"""A local text corpus as one token stream, and the batches the trainer reads from it.

The demo corpus is CPython's bundled documentation (`pydoc_data.topics`), optionally plus the standard
library's own source: real English and code that every Python install has, so `llada-jax train` runs with
no download. Documents are joined with EOS; the last `eval_fraction` of the stream is held out.

Batches are a pure function of (seed, step): each row is a window at an offset drawn from
`numpy.random.default_rng((seed, step))`, and each process keeps its own rows. Resuming is therefore
exact given the step, and processes read disjoint rows of the same global batch.
"""
from __future__ import annotations

import glob
import os
import sysconfig
from typing import Iterator

import numpy as np

from llada_jax.config import ConfigError


def pydoc_documents(include_stdlib_source: bool = False) -> list[str]:
    from pydoc_data import topics

    docs = [topics.topics[k] for k in sorted(topics.topics)]
    if include_stdlib_source:
        stdlib = sysconfig.get_paths()["stdlib"]
        for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
            with open(path, encoding="utf-8", errors="replace") as f:
                docs.append(f.read())
    return docs


def text_documents(pattern: str) -> list[str]:
    paths = sorted(glob.glob(pattern, recursive=True))
    if not paths:
        raise ConfigError(f"data.path={pattern!r} matches no files; give a glob of UTF-8 text files")
    docs = []
    for path in paths:
        with open(path, "rb") as f:
            raw = f.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not valid UTF-8 (byte {e.start}); convert it or drop it from data.path") from None
        if text.strip():
            docs.append(text)
    if not docs:
        raise ConfigError(f"every file matched by data.path={pattern!r} is empty")
    return docs


def token_stream(config, vocab) -> np.ndarray:
    """All documents encoded and joined with EOS, as int32."""
    d = config.data
    if d.source == "pydoc":
        docs = pydoc_documents(d.include_stdlib_source)
    elif d.source == "text":
        docs = text_documents(d.path)
    else:
        raise ConfigError(f"data.source={d.source!r} is unknown; use 'pydoc' or 'text'")
    ids: list[int] = []
    for doc in docs:
        ids.extend(vocab.encode(doc))
        ids.append(vocab.eos_id)
    return np.asarray(ids, dtype=np.int32)


def split_stream(stream: np.ndarray, eval_fraction: float, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    n_eval = int(len(stream) * eval_fraction)
    train, evals = stream[: len(stream) - n_eval], stream[len(stream) - n_eval:]
    if len(train) <= seq_len:
        raise ConfigError(f"the corpus has {len(train)} training tokens, fewer than train.seq_len={seq_len}; add text")
    return train, evals


def unigram_entropy(stream: np.ndarray) -> float:
    """Entropy (nats/token) of the token frequencies: the loss of the best model that ignores context."""
    counts = np.bincount(stream).astype(np.float64)
    probs = counts[counts > 0] / counts.sum()
    return float(-(probs * np.log(probs)).sum())


class WindowBatches:
    """Random windows of `seq_len` tokens; this process's rows of each global batch.

    The iterator's whole state is the next step, so `get_state`/`set_state` round-trip exactly.
    """

    def __init__(self, stream: np.ndarray, global_batch: int, seq_len: int, seed: int,
                 process_index: int = 0, process_count: int = 1):
        if global_batch % process_count:
            raise ConfigError(f"global batch {global_batch} does not split over {process_count} processes")
        self.stream, self.seq_len, self.seed = stream, seq_len, seed
        self.global_batch = global_batch
        self.local = global_batch // process_count
        self.rows = slice(process_index * self.local, (process_index + 1) * self.local)
        self.step = 0

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, step))
        starts = rng.integers(0, len(self.stream) - self.seq_len + 1, size=self.global_batch)[self.rows]
        return {"tokens": np.stack([self.stream[s:s + self.seq_len] for s in starts])}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


def eval_batches(stream: np.ndarray, batch: int, seq_len: int, n_batches: int) -> list[dict[str, np.ndarray]]:
    """Fixed, evenly spaced windows of the held-out stream, so eval losses are comparable across a run."""
    n_windows = batch * n_batches
    if len(stream) < seq_len:
        return []
    starts = np.linspace(0, len(stream) - seq_len, n_windows).astype(np.int64)
    rows = np.stack([stream[s:s + seq_len] for s in starts])
    return [{"tokens": rows[i * batch:(i + 1) * batch]} for i in range(n_batches)]
