"""Who may attend to whom in block diffusion: the rule as one pure function, and its tile summary for kernels.

Block diffusion (BD3-LM, LLaDA2) cuts a sequence into blocks, b(i) = i // block_size over the positions 0..L-1 of
the sequence. Training feeds the noisy sequence x_t and the clean x_0 side by side (2L columns, both streams
with positions 0..L-1); with b(.) the block of a position:
- noisy query -> noisy key: same block (each block is denoised on its own ...),
- noisy query -> clean key: strictly earlier block (... given the clean blocks before it),
- clean query -> clean key: same or earlier block (block-causal, which builds those clean keys),
- clean query -> noisy key: never.
Keys of another document (segment id) are never seen. Decoding uses the same rule with one stream: finished
blocks and the prompt are clean, the current block is noisy, so "the current block sees the clean blocks before it
and itself" is `may_attend` with those streams.

`may_attend` works on NumPy and JAX arrays alike (operators only), so the tests check it against a NumPy
transcription of the rule, the dense kernels evaluate it on index grids, and the splash kernel evaluates it
inside its tiles. `BlockPattern` is the static layout a model's attention receives; `active_tiles` is its
block-sparse summary, the tiles any kernel may skip.
"""
from __future__ import annotations

import dataclasses

import numpy as np

NOISY, CLEAN = 0, 1  # stream ids


def may_attend(q_stream, q_pos, k_stream, k_pos, block_size: int, q_segment=None, k_segment=None):
    """Whether a query (stream, position[, segment]) may see a key; arguments broadcast against each other."""
    bq, bk = q_pos // block_size, k_pos // block_size
    q_noisy, k_noisy = q_stream == NOISY, k_stream == NOISY
    q_clean, k_clean = q_stream == CLEAN, k_stream == CLEAN
    allowed = ((q_noisy & k_noisy & (bq == bk)) | (q_noisy & k_clean & (bk < bq))
               | (q_clean & k_clean & (bk <= bq)))
    if q_segment is not None:
        allowed = allowed & (q_segment == k_segment)
    return allowed


@dataclasses.dataclass(frozen=True)
class BlockPattern:
    """A sequence's static attention layout for block diffusion (hashable: it is part of what jit compiles).

    `noisy_length` L > 0: columns 0..L-1 are the noisy stream and L..2L-1 the clean one (training); 0: one clean
    stream, block-causal (a decoder recomputing the whole sequence, whose current block is the last one it shows).
    Positions are the column within its stream, so the kernels derive everything from column indices.
    """

    block_size: int
    noisy_length: int = 0

    def streams_and_positions(self, column):
        """(stream, position) of column indices (NumPy or JAX integers)."""
        if not self.noisy_length:
            return column * 0 + CLEAN, column
        stream = (column >= self.noisy_length) * 1
        return stream, column - stream * self.noisy_length

    def allowed(self, q_column, k_column):
        """may_attend for column indices (segments left to the caller: every kernel has its own way)."""
        q_stream, q_pos = self.streams_and_positions(q_column)
        k_stream, k_pos = self.streams_and_positions(k_column)
        return may_attend(q_stream, q_pos, k_stream, k_pos, self.block_size)

    def dense(self, length: int) -> np.ndarray:
        """[length, length] bool: the whole mask (tests and the dense kernels at small lengths)."""
        columns = np.arange(length)
        return np.asarray(self.allowed(columns[:, None], columns[None, :]))

    def active_tiles(self, length: int, tile: int) -> np.ndarray:
        """[length / tile, length / tile] bool: tiles holding at least one allowed pair. The rule depends on a
        column only through its (stream, block), so each tile is summarised by the few pairs of those it holds."""
        if length % tile:
            raise ValueError(f"tile {tile} does not divide the length {length}")
        stream, pos = self.streams_and_positions(np.arange(length))
        keys = np.stack([stream, pos // self.block_size], axis=-1).reshape(length // tile, tile, 2)
        kinds = [np.unique(k, axis=0) for k in keys]
        n = len(kinds)
        out = np.zeros((n, n), bool)
        for i, q in enumerate(kinds):
            for j, k in enumerate(kinds):
                out[i, j] = bool(np.any(may_attend(q[:, None, 0], q[:, None, 1] * self.block_size, k[None, :, 0],
                                                   k[None, :, 1] * self.block_size, self.block_size)))
        return out

    def allowed_pairs(self, length: int) -> int:
        """How many (query, key) pairs the rule allows at this total length, without forming the mask."""
        stream, pos = self.streams_and_positions(np.arange(length))
        kinds, counts = np.unique(np.stack([stream, pos // self.block_size], axis=-1), axis=0, return_counts=True)
        ok = may_attend(kinds[:, None, 0], kinds[:, None, 1] * self.block_size, kinds[None, :, 0],
                        kinds[None, :, 1] * self.block_size, self.block_size)
        return int(np.sum(ok * counts[:, None] * counts[None, :]))
