"""The mask predictor: shapes, bidirectionality vs. causal, the spec's RMSNorm/RoPE, layer execution modes."""
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llada_jax.models import layers
from llada_jax.models import registry as M
from llada_jax.config import ModelConfig

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, mlp_hidden=48,
                  dtype="float32", rope_theta=10000.0)


def logits_fn(cfg):
    graphdef = M.split_model(M.abstract_model(cfg))[0]
    return jax.jit(lambda p, t, s=None: M.apply(graphdef, p, t, segment_ids=s))


@pytest.fixture(scope="module")
def params():
    return M.init_params(CFG, 0)


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (2, 12), 0, 64)


def test_param_shapes_names_and_logical_axes():
    _, abstract, names = M.split_model(M.abstract_model(CFG))
    shapes = jax.tree.map(lambda x: x.shape, abstract)
    assert shapes["wte"] == (64, 32) and shapes["ff_out"] == (32, 64) and shapes["ln_f"] == (32,)
    assert shapes["blocks"]["q_proj"] == (2, 32, 4, 8)
    assert shapes["blocks"]["attn_out"] == (2, 4, 8, 32)
    assert shapes["blocks"]["ff_proj"] == (2, 32, 48) and shapes["blocks"]["ff_out"] == (2, 48, 32)
    # every parameter carries one logical name per dimension; layer params start with "layers"
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        axes = names
        for k in path:
            axes = axes[k.key]
        assert len(axes) == leaf.ndim, path
    assert names["blocks"]["up_proj"] == ("layers", "embed", "mlp")
    n = sum(np.prod(x.shape) for x in jax.tree.leaves(abstract))
    per_layer = 2 * 32 + 4 * 32 * 32 + 3 * 32 * 48
    assert n == 2 * 64 * 32 + 32 + 2 * per_layer  # no biases anywhere


def test_output_shape_and_dtype(params, tokens):
    out = logits_fn(CFG)(params, tokens)
    assert out.shape == (2, 12, 64) and out.dtype == jnp.float32
    bf16 = logits_fn(dataclasses.replace(CFG, dtype="bfloat16"))(params, tokens)
    assert bf16.dtype == jnp.float32  # logits always float32 for the loss
    np.testing.assert_allclose(bf16, out, atol=0.05)


def test_bidirectional_last_position_changes_first(params, tokens):
    f = logits_fn(CFG)
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 64)
    assert float(jnp.abs(f(params, tokens)[:, 0] - f(params, changed)[:, 0]).max()) > 1e-4


def test_causal_mode_ignores_the_future(params, tokens):
    f = logits_fn(dataclasses.replace(CFG, causal=True))
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % 64)
    a, b = f(params, tokens), f(params, changed)
    np.testing.assert_array_equal(a[:, :-1], b[:, :-1])
    assert float(jnp.abs(a[:, -1] - b[:, -1]).max()) > 1e-4


def test_causal_mode_with_segment_ids_still_ignores_the_future(params, tokens):
    """The train step always passes segment ids (padding is segment 0); causality must survive the mask."""
    f = logits_fn(dataclasses.replace(CFG, causal=True))
    seg = jnp.ones_like(tokens)
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 64)
    a, b = f(params, tokens, seg), f(params, changed, seg)
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert float(jnp.abs(a[:, 7:] - b[:, 7:]).max()) > 1e-4


def test_segment_ids_isolate_documents(params, tokens):
    f = logits_fn(CFG)
    seg = jnp.array([[1] * 6 + [2] * 6] * 2)
    changed = tokens.at[:, 8].set((tokens[:, 8] + 3) % 64)
    a, b = f(params, tokens, seg), f(params, changed, seg)
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert float(jnp.abs(a[:, 6:] - b[:, 6:]).max()) > 1e-4


@pytest.mark.parametrize("change", [dict(scan_layers=False), dict(remat="full"), dict(remat="save_dots", scan_layers=False)])
def test_layer_execution_modes_agree(params, tokens, change):
    ref = logits_fn(CFG)(params, tokens)
    np.testing.assert_allclose(logits_fn(dataclasses.replace(CFG, **change))(params, tokens), ref, rtol=1e-5, atol=1e-5)


def test_remat_gradients_agree(params, tokens):
    def grads(cfg):
        graphdef = M.split_model(M.abstract_model(cfg))[0]
        return jax.grad(lambda p: M.apply(graphdef, p, tokens).sum())(params)

    a = grads(CFG)
    for policy in ("full", "save_proj", "save_dots"):
        b = grads(dataclasses.replace(CFG, remat=policy))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_rms_norm_and_rope_gradients_match_autodiff_of_their_formulas():
    """The hand-written backward passes (which keep no float32 copies) equal autodiff of the plain formulas."""
    kx, kw, kd = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 5, 3, 8))
    w = 1.0 + 0.1 * jax.random.normal(kw, (8,))
    dy = jax.random.normal(kd, x.shape)

    def plain_norm(x, w):
        return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-5) * w

    want = jax.vjp(plain_norm, x, w)[1](dy)
    got = jax.vjp(lambda x, w: layers.rms_norm(x, w, 1e-5), x, w)[1](dy)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)

    cos, sin = layers.rope_tables(jnp.arange(5)[None].repeat(2, 0), 8, 10000.0)

    def plain_rope(x):
        x1, x2 = jnp.split(x, 2, axis=-1)
        return x * cos[:, :, None] + jnp.concatenate([-x2, x1], axis=-1) * sin[:, :, None]

    np.testing.assert_allclose(jax.vjp(lambda x: layers.apply_rope(x, cos, sin), x)[1](dy)[0],
                               jax.vjp(plain_rope, x)[1](dy)[0], rtol=1e-5, atol=1e-6)


def test_grouped_query_attention_shapes_and_runs():
    cfg = dataclasses.replace(CFG, n_kv_heads=2)
    p = M.init_params(cfg, 0)
    assert p["blocks"]["k_proj"].shape == (2, 32, 2, 8)
    out = logits_fn(cfg)(p, jnp.zeros((1, 5), jnp.int32))
    assert out.shape == (1, 5, 64) and bool(jnp.isfinite(out).all())


def test_rms_norm_matches_spec_formula():
    x = jnp.array([[1.0, -2.0, 3.0, 0.5]])
    w = jnp.array([1.0, 2.0, 0.5, 1.0])
    want = x / np.sqrt(np.mean(np.square(np.asarray(x))) + 1e-5) * w
    np.testing.assert_allclose(layers.rms_norm(x, w, 1e-5), want, rtol=1e-6)


def test_rope_rotate_half_matches_hand_computation():
    hd, theta = 4, 10000.0
    x = jnp.arange(1.0, 5.0).reshape(1, 1, 1, hd)  # [x1 | x2] = [1, 2 | 3, 4]
    pos = jnp.array([[3]])
    cos, sin = layers.rope_tables(pos, hd, theta)
    out = np.asarray(layers.apply_rope(x, cos, sin))[0, 0, 0]
    inv = theta ** (-np.arange(0, hd, 2) / hd)  # [1, 0.01]
    ang = 3 * inv
    # rotate_half([1,2,3,4]) = [-3,-4,1,2]; each frequency rotates the pair (x_j, x_{j+hd/2}).
    want = np.array([
        1 * np.cos(ang[0]) - 3 * np.sin(ang[0]),
        2 * np.cos(ang[1]) - 4 * np.sin(ang[1]),
        3 * np.cos(ang[0]) + 1 * np.sin(ang[0]),
        4 * np.cos(ang[1]) + 2 * np.sin(ang[1]),
    ])
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_rope_makes_attention_relative():
    """q.k after RoPE depends only on the position difference."""
    key = jax.random.key(3)
    q, k = jax.random.normal(key, (2, 1, 1, 1, 8))
    def score(pq, pk):
        cq, sq = layers.rope_tables(jnp.array([[pq]]), 8, 500000.0)
        ck, sk = layers.rope_tables(jnp.array([[pk]]), 8, 500000.0)
        return float(jnp.sum(layers.apply_rope(q, cq, sq) * layers.apply_rope(k, ck, sk)))
    assert score(5, 2) == pytest.approx(score(13, 10), rel=1e-5)


# ---------------------------------------------------------------- options of the architectures models come from

def numpy_forward_layer0_qk(params, cfg, tokens):
    """q and k of layer 0 after projection, bias, QK-norm and (partial) RoPE, in NumPy (float64)."""
    b = params["blocks"]
    x = np.asarray(params["wte"], np.float64)[np.asarray(tokens)]
    rms = lambda v, w: v / np.sqrt(np.mean(v * v, -1, keepdims=True) + cfg.rms_norm_eps) * w  # noqa: E731
    y = rms(x, np.asarray(b["attn_norm"][0], np.float64))
    q = np.einsum("btd,dnh->btnh", y, np.asarray(b["q_proj"][0], np.float64))
    k = np.einsum("btd,dkh->btkh", y, np.asarray(b["k_proj"][0], np.float64))
    if cfg.qkv_bias:
        q, k = q + np.asarray(b["q_bias"][0]), k + np.asarray(b["k_bias"][0])
    if cfg.qk_norm:
        q, k = rms(q, np.asarray(b["q_norm"][0], np.float64)), rms(k, np.asarray(b["k_norm"][0], np.float64))
    r = cfg.rotary_dim
    inv = cfg.rope_theta ** (-np.arange(0, r, 2) / r)
    ang = np.arange(tokens.shape[1])[:, None] * inv
    cos, sin = np.cos(np.concatenate([ang, ang], -1))[None, :, None], np.sin(np.concatenate([ang, ang], -1))[None, :, None]

    def rope(v):
        head, rest = v[..., :r], v[..., r:]
        half = r // 2
        rotated = np.concatenate([-head[..., half:], head[..., :half]], -1)
        return np.concatenate([head * cos + rotated * sin, rest], -1)
    return rope(q), rope(k)


@pytest.mark.parametrize("options", [dict(qk_norm=True), dict(qkv_bias=True), dict(rotary_dim=4),
                                     dict(qk_norm=True, qkv_bias=True, rotary_dim=4)])
def test_qk_norm_qkv_bias_and_partial_rotary_match_a_numpy_transcription(options):
    from llada_jax.models import self_attention

    cfg = dataclasses.replace(CFG, **options)
    params = M.init_params(cfg, 0)
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(3), a.shape), params)  # biases != 0
    tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, 64)
    layer0 = jax.tree.map(lambda a: a[0], params["blocks"])
    y = layers.rms_norm(params["wte"][tokens], layer0["attn_norm"], cfg.rms_norm_eps)
    layer = types.SimpleNamespace(**{name: jnp.asarray(v) for name, v in layer0.items()})  # params as attributes
    q, k, _ = self_attention.project_qkv(layer, cfg, y)
    cos, sin = layers.rope_tables(jnp.broadcast_to(jnp.arange(12), (2, 12)), cfg.rotary_dim, cfg.rope_theta)
    q, k = layers.apply_rope(q, cos, sin), layers.apply_rope(k, cos, sin)
    want_q, want_k = numpy_forward_layer0_qk(params, cfg, tokens)
    np.testing.assert_allclose(q, want_q, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(k, want_k, atol=2e-5, rtol=1e-4)
    assert np.isfinite(np.asarray(M.apply(M.graphdef(cfg), params, tokens))).all()


def test_partial_rotary_leaves_the_other_dimensions_alone_and_full_rotary_is_the_default():
    x = jax.random.normal(jax.random.key(0), (1, 5, 2, 8))
    cos, sin = layers.rope_tables(jnp.arange(5)[None], 4, 10000.0)
    out = layers.apply_rope(x, cos, sin)
    np.testing.assert_array_equal(out[..., 4:], x[..., 4:])
    np.testing.assert_allclose(out[..., :4], layers.apply_rope(x[..., :4], cos, sin))
    dy = jax.random.normal(jax.random.key(1), x.shape)  # the backward is the inverse rotation, pass-through kept
    grad = jax.vjp(lambda v: layers.apply_rope(v, cos, sin), x)[1](dy)[0]
    np.testing.assert_allclose(grad, jax.vjp(lambda v: jnp.concatenate(
        [layers.apply_rope(v[..., :4], cos, sin), v[..., 4:]], -1), x)[1](dy)[0], atol=1e-6)
    assert ModelConfig.from_config(dict(vocab_size=8, d_model=32, n_layers=1, n_heads=4, mlp_hidden=8)).rotary_dim == 8


def test_tied_embeddings_use_the_table_as_the_head_and_train_it_through_both_uses(tokens):
    cfg = dataclasses.replace(CFG, tie_embeddings=True)
    params = M.init_params(cfg, 0)
    assert "ff_out" not in params and "ff_out" in params["blocks"]
    graphdef = M.graphdef(cfg)
    logits = M.apply(graphdef, params, tokens)
    hidden = nnx.merge(graphdef, params).hidden_states(tokens)[0]
    np.testing.assert_allclose(logits, np.einsum("btd,vd->btv", hidden, params["wte"]), atol=1e-5)
    grad = jax.grad(lambda p: M.apply(graphdef, p, tokens)[..., 5].sum())(params)
    assert np.abs(np.asarray(grad["wte"][5])).sum() > 0  # the head's column 5 is the table's row 5
