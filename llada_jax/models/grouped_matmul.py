"""Grouped matrix multiplication: rows sorted by expert times each row's expert's weight, computing only the
selected experts (never every row against every expert).

    out[r] = x[r] @ w[g(r)]   for the rows r of group g (groups are consecutive runs of `group_sizes` rows);
    rows past sum(group_sizes) (padding) give 0.

Kernels (model.moe.kernel; `auto` picks by backend):
- megablox (TPU): the Pallas grouped matmul, exact in the forward and backward pass (its tgmm computes the
  weight gradient group by group). Checked ahead of time for v5p: 1.0x the exact FLOPs both ways.
- ragged_dot: jax.lax.ragged_dot. XLA lowers it natively on TPU and GPU; on CPU JAX decomposes it into a dense
  [groups, rows, ...] computation (groups times the work), and on TPU its weight gradient compiles dense too
  (65x the exact FLOPs for 64 groups, measured ahead of time), which is why it is not the TPU default. Its GPU
  lowering has not been measured here (no GPU time), so GPU defaults to `tiled` until it is.
- tiled (pure JAX, any backend; the CPU and GPU default): each group padded to whole tiles of `tile` rows, each
  tile multiplied by its group's weight (gathered per tile): rows + groups * (tile - 1) rows of work at most, and
  a [tiles, k, n] copy of the weights (about 9 copies). Exact in both passes (the weight gradient is each tile's
  product summed into its group).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KERNELS = ("ragged_dot", "megablox", "tiled")
MEGABLOX_TILE = (512, 1024, 1024)  # (rows, contracting, output) upper bounds; shrunk to the problem's size


def resolve_kernel(kernel: str, platform: str) -> str:
    """The kernel to run on a platform: `auto` is megablox on TPU and tiled elsewhere; megablox off TPU runs in the
    Pallas interpreter (slow: for checking it on a CPU)."""
    if kernel == "auto":
        return "megablox" if platform == "tpu" else "tiled"
    if kernel == "megablox" and platform != "tpu":
        return "megablox_interpret"
    return kernel


def grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array, kernel: str) -> jax.Array:
    """x [R, k] sorted by group, w [G, k, n], group_sizes [G] int32 (sum <= R) -> [R, n] in x's dtype."""
    group_sizes = group_sizes.astype(jnp.int32)
    rows = jnp.arange(x.shape[0]) < jnp.sum(group_sizes)
    if kernel.startswith("megablox"):  # its backward leaves the padding rows' gradient unwritten: cut them off
        out = _megablox(jnp.where(rows[:, None], x, 0), w, group_sizes, interpret=kernel == "megablox_interpret")
    elif kernel == "ragged_dot":
        out = jax.lax.ragged_dot(x, w.astype(x.dtype), group_sizes)
    elif kernel == "tiled":
        out = tiled_matmul(x, w.astype(x.dtype), group_sizes)
    else:
        raise ValueError(f"unknown grouped matmul kernel {kernel!r}; use one of {KERNELS}")
    return jnp.where(rows[:, None], out, 0).astype(x.dtype)  # megablox leaves rows past the groups unwritten


def tile_rows(rows: int, groups: int) -> int:
    """Rows per tile of the tiled kernel: a power of two near rows / (8 groups), so padding adds at most ~1/8 of
    the work and the per-tile weight copy stays near 9 copies of the weights; between 8 and 512 (at fewer rows
    than 64 per group the padding matters less than a weight copy per row would)."""
    target = max(8, rows // (8 * groups))
    return int(min(512, 1 << (target.bit_length() - 1)))


def tiled_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array, tile: int | None = None) -> jax.Array:
    """The `tiled` kernel (see the module docstring); rows past sum(group_sizes) give 0."""
    r, k = x.shape
    g, _, n = w.shape
    tile = tile or tile_rows(r, g)
    n_tiles = -(-r // tile) + g  # sum over groups of ceil(size / tile) never exceeds this
    ends = jnp.cumsum(group_sizes)
    starts = ends - group_sizes
    group_tiles = (group_sizes + tile - 1) // tile
    tile_ends = jnp.cumsum(group_tiles)
    row_group = jnp.searchsorted(ends, jnp.arange(r), side="right")  # G for rows past the last group
    safe = jnp.minimum(row_group, g - 1)
    dest = (tile_ends[safe] - group_tiles[safe]) * tile + jnp.arange(r) - starts[safe]
    dest = jnp.where(row_group < g, dest, n_tiles * tile)  # padding rows land nowhere
    padded = jnp.zeros((n_tiles * tile, k), x.dtype).at[dest].set(x, mode="drop")
    tile_group = jnp.minimum(jnp.searchsorted(tile_ends, jnp.arange(n_tiles), side="right"), g - 1)
    out = jnp.einsum("tmk,tkn->tmn", padded.reshape(n_tiles, tile, k), w[tile_group],
                     preferred_element_type=jnp.float32)
    return out.reshape(n_tiles * tile, n).at[dest].get(mode="fill", fill_value=0)


def _megablox(x, w, group_sizes, interpret: bool):
    """The Pallas TPU kernel; rows padded to a whole number of row tiles (the padding is no group's)."""
    from jax.experimental.pallas.ops.tpu.megablox import gmm

    r, k = x.shape
    n = w.shape[2]
    tm = min(MEGABLOX_TILE[0], max(8, 1 << (max(r, 1) - 1).bit_length()))
    tiling = (tm, min(MEGABLOX_TILE[1], k), min(MEGABLOX_TILE[2], n))
    pad = -r % tm
    xp = jnp.pad(x, ((0, pad), (0, 0))) if pad else x
    # accumulates in float32 inside the kernel; the output (rows x width, the layer's largest) in x's dtype
    out = gmm(xp, w.astype(x.dtype), group_sizes, preferred_element_type=x.dtype, tiling=tiling, interpret=interpret)
    return out[:r]
