"""Who may attend to whom in block diffusion: the rule as one pure function, and its tile summary for kernels.

Block diffusion (BD3-LM, LLaDA2) cuts a sequence into blocks, b(i) = i // block_size over the positions 0..L-1 of
the sequence. Training feeds the noisy sequence x_t and the clean x_0 side by side (2L columns, both streams
with positions 0..L-1); with b(.) the block of a position:
- noisy query -> noisy key: same block (each block is denoised on its own ...),
- noisy query -> clean key: strictly earlier block (... given the clean blocks before it),
- clean query -> clean key: same or earlier block (block-causal, which builds those clean keys),
- clean query -> noisy key: never.
Keys of another document (segment id) are never seen. Decoding and scoring use the same rule: the prompt and
finished blocks are clean keys and the block being decoded sees them and itself. A decoder can run its whole
canvas as one clean block-causal stream: the current block then sees exactly what its noisy copy sees in training,
and its queries are the only ones it reads (tests/test_block_diffusion.py checks the logits agree).

The rule is held as intervals of ranks, so every user derives from one definition: a column of stream s in block
b has rank r = 2b + s (noisy 0, clean 1); a key is visible from rank r on, to rank r if noisy (its own noisy
block only) and to every later rank if clean; a query sees a key iff from <= rank <= to (`visibility_ranks`,
`rank_visible`). `may_attend` is that comparison, checked by the tests against a pair-by-pair NumPy transcription
of the four lines above.

Two consumers, two forms (models/attention.py says why each is needed):
- `BlockPattern`, the static layout of training's two-stream step: a function of column indices known at trace
  time, so the splash and tiled kernels skip the tiles it leaves empty (`active_tiles`, `allowed_pairs`).
- the ranks as arrays (`visibility_ranks` of each column's stream and block), passed beside the segment ids by
  the block sampler and the block-diffusion scorer, whose passes are windows at traced columns of a KV cache.
Both work on NumPy and JAX arrays alike (operators only).
"""
from __future__ import annotations

import dataclasses

import numpy as np

NOISY, CLEAN = 0, 1  # stream ids
CLEAN_TO = 2 ** 30  # a clean key's "to" rank: visible to every later rank (fits int32)


def visibility_ranks(stream, block):
    """(query rank, key from, key to) of columns in `stream` (NOISY / CLEAN, 0 / 1) and `block`: query rank 2b + s;
    a key visible from that rank on, to itself if noisy and to CLEAN_TO if clean."""
    rank = 2 * block + stream
    return rank, rank, rank + stream * (CLEAN_TO - rank)


def rank_visible(q_rank, k_from, k_to):
    """Whether a query of rank q_rank sees a key visible on [k_from, k_to] (broadcasting)."""
    return (k_from <= q_rank) & (q_rank <= k_to)


def may_attend(q_stream, q_pos, k_stream, k_pos, block_size: int, q_segment=None, k_segment=None):
    """Whether a query (stream, position[, segment]) may see a key; arguments broadcast against each other."""
    q_rank, _, _ = visibility_ranks(q_stream, q_pos // block_size)
    _, k_from, k_to = visibility_ranks(k_stream, k_pos // block_size)
    allowed = rank_visible(q_rank, k_from, k_to)
    if q_segment is not None:
        allowed = allowed & (q_segment == k_segment)
    return allowed


@dataclasses.dataclass(frozen=True)
class BlockPattern:
    """A sequence's static attention layout for block diffusion (hashable: it is part of what jit compiles).

    `noisy_length` L > 0: columns 0..L-1 are the noisy stream and L..2L-1 the clean one (training); 0: one clean
    stream, block-causal: what the block sampler's visibility ranks express for a whole canvas (its passes use
    the ranks, since they are windows against a cache; the tests check the two give the same logits).
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
