"""Block-sparse attention in pure JAX: only the (query tile, key tile) pairs a static pattern allows are computed.

The blockwise kernel of attention.py visits every key block; a block-diffusion layout (block_mask.BlockPattern)
leaves most tiles of its 2L x 2L square empty (clean queries never see noisy keys, noisy queries only their own
block of noisy keys). This kernel lists the active tiles once, at trace time, and runs one lax.scan over them:
the forward keeps an online softmax per query tile (max, sum, output accumulator for every tile in the carry) and
the hand-written backward recomputes each tile's probabilities, adding into dq, dk and dv. Inside a tile the rule
is evaluated from column indices and segment ids, so no [.., L, L] array exists in either direction; the work is
the active tiles' share of the dense square (block_mask.active_tiles), about a quarter at 2L = 8192 with 512 tiles.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_NEG = -1e30  # as in attention.py: exp underflows to 0 without inf - inf


def tile_pairs(pattern, length: int, tile: int) -> np.ndarray:
    """[P, 2] int32 (query tile, key tile) of every active tile, by query tile."""
    return np.argwhere(pattern.active_tiles(length, tile)).astype(np.int32)


def _tile(x, index, tile):
    """Rows index*tile .. (index+1)*tile - 1 of x along axis 1."""
    return jax.lax.dynamic_slice_in_dim(x, index * tile, tile, axis=1)


def _scores(qg, k, q_seg, kv_seg, pair, pattern, scale, tile):
    """Masked float32 scores [B, K, G, tile, tile] of one tile pair, and where they are allowed."""
    qi, kj = pair[0], pair[1]
    qt, kt = _tile(qg, qi, tile), _tile(k, kj, tile)
    s = jnp.einsum("btkgh,bskh->bkgts", qt, kt, preferred_element_type=jnp.float32) * scale
    q_cols, k_cols = qi * tile + jnp.arange(tile), kj * tile + jnp.arange(tile)
    ok = pattern.allowed(q_cols[:, None], k_cols[None, :])[None]
    ok = ok & (_tile(q_seg, qi, tile)[:, :, None] == _tile(kv_seg, kj, tile)[:, None, :])
    ok = ok[:, None, None]
    return jnp.where(ok, s, _NEG), ok


def _forward(qg, k, v, q_seg, kv_seg, pairs, pattern, scale, tile):
    """(out [B, T, K, G, H] float32, logsumexp [n_tiles, B, K, G, tile])."""
    b, t, nk, g, h = qg.shape
    n = t // tile
    m0 = jnp.full((n, b, nk, g, tile), _NEG, jnp.float32)

    def step(carry, pair):
        m, l, acc = carry
        s, ok = _scores(qg, k, q_seg, kv_seg, pair, pattern, scale, tile)
        qi = pair[0]
        m_old, l_old, acc_old = m[qi], l[qi], acc[qi]
        m_new = jnp.maximum(m_old, s.max(-1))
        p = jnp.where(ok, jnp.exp(s - m_new[..., None]), 0.0)
        corr = jnp.exp(m_old - m_new)
        vt = _tile(v, pair[1], tile)
        pv = jnp.einsum("bkgts,bskh->bkgth", p.astype(vt.dtype), vt, preferred_element_type=jnp.float32)
        return (m.at[qi].set(m_new), l.at[qi].set(l_old * corr + p.sum(-1)),
                acc.at[qi].set(acc_old * corr[..., None] + pv)), None

    acc0 = jnp.zeros((n, b, nk, g, tile, h), jnp.float32)
    (m, l, acc), _ = jax.lax.scan(step, (m0, jnp.zeros_like(m0), acc0), jnp.asarray(pairs))
    out = acc / l[..., None]  # [n, B, K, G, tile, H]
    out = jnp.moveaxis(out, 4, 1)  # [n, tile, B, K, G, H]
    return jnp.moveaxis(out.reshape((t, b, nk, g, h)), 0, 1), m + jnp.log(l)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _attend(qg, k, v, q_seg, kv_seg, pairs, pattern, scale, tile):
    return _forward(qg, k, v, q_seg, kv_seg, pairs, pattern, scale, tile)[0].astype(qg.dtype)


def _attend_fwd(qg, k, v, q_seg, kv_seg, pairs, pattern, scale, tile):
    out, lse = _forward(qg, k, v, q_seg, kv_seg, pairs, pattern, scale, tile)
    out = out.astype(qg.dtype)
    return out, (qg, k, v, q_seg, kv_seg, out, lse)


def _attend_bwd(pairs, pattern, scale, tile, res, d_out):
    """Flash backward over the active tiles: p recomputed from the saved logsumexp, then dv += p^T do,
    ds = p (do v^T - rowsum(do o)) * scale, dq += ds k, dk += ds^T q."""
    qg, k, v, q_seg, kv_seg, out, lse = res
    d_out = d_out.astype(jnp.float32)
    delta = jnp.sum(d_out * out.astype(jnp.float32), axis=-1)  # [B, T, K, G]

    def step(carry, pair):
        dq, dk, dv = carry
        qi, kj = pair[0], pair[1]
        s, ok = _scores(qg, k, q_seg, kv_seg, pair, pattern, scale, tile)
        p = jnp.where(ok, jnp.exp(s - lse[qi][..., None]), 0.0)
        do_t = _tile(d_out, qi, tile)  # [B, tile, K, G, H]
        dv_t = jnp.einsum("bkgts,btkgh->bskh", p, do_t)
        dp = jnp.einsum("btkgh,bskh->bkgts", do_t, _tile(v, kj, tile).astype(jnp.float32))
        ds = p * (dp - jnp.moveaxis(_tile(delta, qi, tile), 1, 3)[..., None]) * scale
        dq_t = jnp.einsum("bkgts,bskh->btkgh", ds, _tile(k, kj, tile).astype(jnp.float32))
        dk_t = jnp.einsum("bkgts,btkgh->bskh", ds, _tile(qg, qi, tile).astype(jnp.float32))
        add = lambda x, part, i: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
            x, _tile(x, i, tile) + part, i * tile, axis=1)
        return (add(dq, dq_t, qi), add(dk, dk_t, kj), add(dv, dv_t, kj)), None

    zeros = lambda x: jnp.zeros(x.shape, jnp.float32)  # noqa: E731
    (dq, dk, dv), _ = jax.lax.scan(step, (zeros(qg), zeros(k), zeros(v)), jnp.asarray(pairs))
    return dq.astype(qg.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def tile_for(pattern, length: int, block: int) -> int:
    """The tile: the largest divisor of a stream's length (so no tile straddles two streams) up to `block`."""
    stream = pattern.noisy_length or length
    return int(np.gcd(stream, block))


class _Static:
    """Wraps the pair list so custom_vjp can hold it as a hashable static argument."""

    def __init__(self, pairs: np.ndarray):
        self.pairs = pairs
        self._key = pairs.tobytes()

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key == other._key

    def __array__(self, dtype=None, copy=None):
        return self.pairs if dtype is None else self.pairs.astype(dtype)


def pattern_attention(q, k, v, q_segment_ids, kv_segment_ids, pattern, scale, block: int = 512):
    """q [B, T, N, H], k/v [B, T, K, H] (self-attention over the pattern's columns) -> [B, T, N, H]."""
    b, t, n, h = q.shape
    if k.shape[1] != t:
        raise ValueError(f"a block pattern needs queries and keys of one length, not {t} and {k.shape[1]}")
    nk = k.shape[2]
    tile = tile_for(pattern, t, block)
    pairs = _Static(tile_pairs(pattern, t, tile))
    qg = q.reshape(b, t, nk, n // nk, h)
    out = _attend(qg, k, v, q_segment_ids, kv_segment_ids, pairs, pattern, float(scale), tile)
    return out.reshape(b, t, n, h)
