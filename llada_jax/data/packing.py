"""Packing documents into fixed-length rows (data.packing):

- "concat": documents joined with EOS and cut every seq_len tokens (the LLaDA pretraining layout); rows
  carry only "tokens", and attention crosses document boundaries as in the paper.
- "first_fit": documents (split into pieces of at most seq_len) placed into rows by first-fit; rows carry
  "tokens" and "segment_ids" (1, 2, ... per document, 0 for padding), so documents do not attend to each other.

Both keep their position in a checkpointable state, so a resumed pipeline continues mid-document.
"""
from __future__ import annotations

from typing import Any

import grain
import grain.experimental as gexp
import numpy as np

from llada_jax.config import ConfigError

PACKINGS = ("concat", "first_fit")


class _ChunkIterator(grain.DatasetIterator):
    """Yields {"tokens": piece} for consecutive pieces of at most `size` tokens of each parent document."""

    def __init__(self, parent: grain.DatasetIterator, size: int):
        super().__init__(parent)
        self._size = size
        self._doc: np.ndarray | None = None
        self._offset = 0
        self._doc_state = self._parent.get_state()  # parent state just before the current document

    def __next__(self) -> dict[str, np.ndarray]:
        while self._doc is None or self._offset >= len(self._doc):
            self._doc_state = self._parent.get_state()
            self._doc = next(self._parent)["tokens"]
            self._offset = 0
        piece = self._doc[self._offset:self._offset + self._size]
        self._offset += self._size
        return {"tokens": piece}

    def get_state(self) -> dict[str, Any]:
        if self._doc is None or self._offset >= len(self._doc):
            return {"parent": self._parent.get_state(), "offset": 0}
        return {"parent": self._doc_state, "offset": int(self._offset)}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._doc, self._offset = None, 0
        if state["offset"]:
            self._doc_state = self._parent.get_state()
            self._doc = next(self._parent)["tokens"]
            self._offset = int(state["offset"])


class ChunkIterDataset(grain.IterDataset):
    def __init__(self, parent: grain.IterDataset, size: int):
        super().__init__(parent)
        self._size = size

    def __iter__(self) -> _ChunkIterator:
        return _ChunkIterator(self._parent.__iter__(), self._size)


def _tokens_only(row: dict) -> dict:
    return {"tokens": row["tokens"]}


def _with_segments(row: dict) -> dict:
    return {"tokens": row["tokens"], "segment_ids": row["tokens_segment_ids"].astype(np.int32)}


def pack(docs: grain.IterDataset, packing: str, seq_len: int, pad_id: int, seed: int) -> grain.IterDataset:
    """Rows of seq_len tokens from documents {"tokens": ids ending with EOS}."""
    if packing == "concat":
        rows = gexp.ConcatThenSplitIterDataset(docs, length_struct={"tokens": seq_len})
        return rows.map(_tokens_only)
    if packing == "first_fit":
        pieces = ChunkIterDataset(docs, seq_len)
        rows = gexp.FirstFitPackIterDataset(pieces, length_struct={"tokens": seq_len}, num_packing_bins=8,
                                            seed=seed, shuffle_bins=True, padding_struct={"tokens": pad_id})
        return rows.map(_with_segments)
    raise ConfigError(f"data.packing={packing!r} is unknown; use one of {PACKINGS}")
