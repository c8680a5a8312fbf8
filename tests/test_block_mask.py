"""The block-diffusion attention rule (models/block_mask.py) against a NumPy transcription of its definition, and
every kernel that applies it (dense XLA, the tiled blockwise kernel, splash in interpret mode) against the dense
reference, values and gradients, with packed documents."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.models import attention as A
from llada_jax.models import block_mask as BM
from llada_jax.models import tiled_attention as TA


def transcribed_rule(length: int, block: int, segments) -> np.ndarray:
    """The issue's rule written out pair by pair: columns 0..L-1 are x_t, L..2L-1 are x_0, both at positions 0..L-1."""
    n = 2 * length
    out = np.zeros((n, n), bool)
    for i, j in itertools.product(range(n), range(n)):
        q_noisy, k_noisy = i < length, j < length
        bq, bk = (i % length) // block, (j % length) // block
        if segments[i % length] != segments[j % length]:
            continue
        if q_noisy and k_noisy:
            out[i, j] = bq == bk
        elif q_noisy:
            out[i, j] = bk < bq
        elif not k_noisy:
            out[i, j] = bk <= bq
    return out


def packed(length: int, cuts, pad_from=None):
    """Segment ids of one row: documents 1, 2, ... starting at `cuts`, padding (0) from `pad_from`."""
    seg = np.ones(length, np.int32)
    for doc, cut in enumerate(cuts, start=2):
        seg[cut:] = doc
    if pad_from is not None:
        seg[pad_from:] = 0
    return seg


CASES = [(8, 1, []), (8, 2, [3]), (12, 4, [5], ), (16, 4, [6, 11]), (16, 8, []), (16, 16, [7]), (10, 5, [4])]


@pytest.mark.parametrize("length,block,cuts", CASES)
def test_rule_matches_the_transcription_for_lengths_blocks_and_packed_documents(length, block, cuts):
    seg = packed(length, cuts, pad_from=length - 1)
    want = transcribed_rule(length, block, seg)
    pattern = BM.BlockPattern(block, length)
    both = np.concatenate([seg, seg])
    got = pattern.dense(2 * length) & (both[:, None] == both[None, :])
    np.testing.assert_array_equal(got, want)
    # the dense mask every XLA/cuDNN call builds: the same, from traced column indices and segment ids
    seg2 = jnp.asarray(both)[None]
    np.testing.assert_array_equal(np.asarray(A._allowed(seg2, seg2, False, pattern=pattern))[0], want)
    # may_attend with streams, positions and segments directly (what a decoder calls)
    streams = np.repeat([BM.NOISY, BM.CLEAN], length)
    pos = np.tile(np.arange(length), 2)
    direct = BM.may_attend(streams[:, None], pos[:, None], streams[None], pos[None], block, both[:, None], both[None])
    np.testing.assert_array_equal(direct, want)
    assert np.all(np.diag(want)), "every column sees itself, so no attention row is ever empty"


@pytest.mark.parametrize("length,block,tile", [(16, 4, 4), (16, 4, 8), (32, 8, 8), (32, 2, 16), (24, 3, 6)])
def test_active_tiles_and_pair_counts_summarise_the_dense_mask(length, block, tile):
    pattern = BM.BlockPattern(block, length)
    dense = pattern.dense(2 * length)
    n = 2 * length // tile
    tiles = dense.reshape(n, tile, n, tile).any(axis=(1, 3))
    np.testing.assert_array_equal(pattern.active_tiles(2 * length, tile), tiles)
    assert pattern.allowed_pairs(2 * length) == dense.sum()
    # the clean quadrant's noisy keys are never needed: a quarter of the square is skipped outright
    assert not tiles[n // 2:, :n // 2].any()


def test_one_stream_layout_is_block_causal():
    pattern = BM.BlockPattern(4)
    cols = np.arange(12)
    np.testing.assert_array_equal(pattern.dense(12), (cols[None] // 4) <= (cols[:, None] // 4))


def numpy_attention(q, k, v, mask, scale):
    s = np.einsum("btnh,bsnh->bnts", q, k) * scale
    s = np.where(mask[:, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, v)


def inputs(length, heads=4, kv_heads=2, head_dim=16, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    t = 2 * length
    q = rng.normal(size=(batch, t, heads, head_dim)).astype(np.float32)
    k = rng.normal(size=(batch, t, kv_heads, head_dim)).astype(np.float32)
    v = rng.normal(size=(batch, t, kv_heads, head_dim)).astype(np.float32)
    seg = np.stack([packed(length, []), packed(length, [length // 3, length // 2], pad_from=length - 5)])
    seg = np.concatenate([seg, seg], axis=1)
    return q, k, v, seg


def test_dense_reference_with_a_pattern_matches_numpy():
    length, block = 16, 4
    q, k, v, seg = inputs(length)
    pattern = BM.BlockPattern(block, length)
    got = A.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), q_segment_ids=jnp.asarray(seg),
                      kv_segment_ids=jnp.asarray(seg), implementation="xla", pattern=pattern)
    mask = np.stack([transcribed_rule(length, block, row[:length]) for row in seg])
    rep = lambda x: np.repeat(x, 2, axis=2)  # noqa: E731  grouped-query heads
    np.testing.assert_allclose(np.asarray(got), numpy_attention(q, rep(k), rep(v), mask, 16 ** -0.5), atol=2e-6)


@pytest.mark.parametrize("length,block,tile", [(16, 4, 8), (32, 1, 16), (24, 8, 8)])
def test_tiled_kernel_values_and_gradients_match_the_dense_reference(length, block, tile):
    q, k, v, seg = (jnp.asarray(x) for x in inputs(length, seed=length + block))
    pattern = BM.BlockPattern(block, length)
    assert TA.tile_for(pattern, 2 * length, tile) == tile
    active = pattern.active_tiles(2 * length, tile)
    assert len(TA.tile_pairs(pattern, 2 * length, tile)) == active.sum() < active.size  # tiles really skipped

    def loss(impl):
        def f(q, k, v):
            out = A.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, implementation=impl,
                              block_size=tile, pattern=pattern)
            return jnp.sum(jnp.sin(out) * jnp.arange(out.shape[1])[None, :, None, None])
        return f

    ref, ref_grads = jax.value_and_grad(loss("xla"), argnums=(0, 1, 2))(q, k, v)
    got, got_grads = jax.value_and_grad(loss("blockwise"), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    for g, r in zip(got_grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=2e-4, rtol=1e-4)


def test_splash_kernel_with_the_pattern_matches_the_dense_reference_in_interpret_mode():
    length, block = 128, 32  # 256 columns: two splash tiles of 128, one per stream
    q, k, v, seg = (jnp.asarray(x) for x in inputs(length, heads=2, kv_heads=2))
    pattern = BM.BlockPattern(block, length)
    ref = A.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, implementation="xla", pattern=pattern)
    got = A.splash_attention(q, k, v, seg, seg, False, 16 ** -0.5, interpret=True, pattern=pattern)
    np.testing.assert_allclose(got, ref, atol=2e-5)
    # the splash mask is the rule itself, evaluated per tile
    mask = A.splash_pattern_mask(pattern, 2 * length)
    np.testing.assert_array_equal(mask[0:256, 0:256], pattern.dense(256))
    assert mask == A.splash_pattern_mask(pattern, 2 * length) and hash(mask) != hash(
        A.splash_pattern_mask(BM.BlockPattern(16, length), 2 * length))


def test_tiled_kernel_holds_no_length_by_length_scores():
    from helpers import all_avals

    length, tile = 64, 16
    q, k, v, seg = (jnp.asarray(x) for x in inputs(length))
    pattern = BM.BlockPattern(4, length)

    def squares(impl):
        def f(q, k, v):
            return jnp.sum(A.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, implementation=impl,
                                       block_size=tile, pattern=pattern))

        jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(q, k, v).jaxpr
        return [a.shape for a in all_avals(jaxpr) if hasattr(a, "shape") and a.shape[-2:] == (2 * length, 2 * length)]

    assert not squares("blockwise")
    assert squares("xla")  # the check can fail: the dense reference does hold them
