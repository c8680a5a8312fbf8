"""Every attention kernel equals the dense reference (segments, padding, causal, GQA, cached prefix), values and
gradients; `auto` resolves per backend."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import all_avals
from llada_jax.models import attention as A


def random_inputs(b=2, t=24, s=None, n=4, k=2, h=8, seed=0):
    s = t if s is None else s
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (b, t, n, h))
    keys = jax.random.normal(kk, (b, s, k, h))
    values = jax.random.normal(kv, (b, s, k, h))
    return q, keys, values


def packed_segments(b, length, seed=1):
    """Rows of 2-3 documents followed by padding (segment 0), as packing and random lengths produce."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(b):
        cuts = np.sort(rng.choice(np.arange(2, length - 2), size=3, replace=False))
        row = np.zeros(length, np.int32)
        row[:cuts[0]], row[cuts[0]:cuts[1]], row[cuts[1]:cuts[2]] = 1, 2, 3
        rows.append(row)
    return jnp.asarray(np.stack(rows))


def numpy_attention(q, k, v, q_seg, kv_seg, causal, scale):
    """Independent float64 definition: softmax over allowed keys of q.k * scale, shared kv heads for groups."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    s, nk = k.shape[1], k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for head in range(n):
            kh = head // (n // nk)
            scores = q[bi, :, head] @ k[bi, :, kh].T * scale
            allowed = np.asarray(q_seg)[bi][:, None] == np.asarray(kv_seg)[bi][None, :]
            if causal:
                allowed &= np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)
            scores = np.where(allowed, scores, -np.inf)
            p = np.exp(scores - scores.max(-1, keepdims=True))
            out[bi, :, head] = (p / p.sum(-1, keepdims=True)) @ v[bi, :, kh]
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_numpy_definition(causal):
    q, k, v = random_inputs()
    seg = packed_segments(2, 24)
    got = A.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, implementation="xla")
    np.testing.assert_allclose(got, numpy_attention(q, k, v, seg, seg, causal, 8 ** -0.5), atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_blockwise_values_and_gradients_match_reference(causal):
    q, k, v = random_inputs()
    seg = packed_segments(2, 24)
    weights = jax.random.normal(jax.random.key(5), q.shape)

    def loss(impl):
        def f(q, k, v):
            out = A.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, causal=causal, implementation=impl,
                              block_size=10)  # 24 keys: blocks of 10, 10 and a padded 4
            return jnp.sum(out * weights), out
        return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)

    (want_loss, want_out), want_grads = loss("xla")
    (got_loss, got_out), got_grads = loss("blockwise")
    np.testing.assert_allclose(got_out, want_out, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, atol=1e-4)


def test_blockwise_with_cached_prefix_matches_numpy():
    """Sampler's KV-cache shape: 5 new queries attend to 7 cached + their own 5 keys."""
    q, k, v = random_inputs(t=5, s=12)
    kv_seg = jnp.asarray([[1] * 12, [1] * 9 + [0] * 3])
    q_seg = kv_seg[:, 7:]
    for causal in (False, True):
        got = A.attention(q, k, v, q_segment_ids=q_seg, kv_segment_ids=kv_seg, causal=causal,
                          implementation="blockwise", block_size=4)
        np.testing.assert_allclose(got, numpy_attention(q, k, v, q_seg, kv_seg, causal, 8 ** -0.5), atol=1e-5)


def test_splash_kernel_in_interpret_mode_matches_reference():
    q, k, v = random_inputs(b=1, t=128, n=2, k=1, h=64)
    seg = packed_segments(1, 128)
    want = A.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, implementation="xla")
    got = A.splash_attention(q, k, v, seg, seg, False, 64 ** -0.5, interpret=True)
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_auto_picks_per_backend_and_falls_back_on_unsupported_shapes():
    bf16 = jnp.bfloat16
    assert A.resolve("auto", 4096, 4096, 128, dtype=bf16, platform="gpu") == "cudnn"
    assert A.resolve("auto", 4096, 4096, 128, dtype=bf16, platform="tpu") == "splash"
    assert A.resolve("auto", 4096, 4096, 128, dtype=bf16, platform="cpu") == "blockwise"
    assert A.resolve("auto", 512, 512, 128, dtype=bf16, platform="cpu") == "xla"  # one block: blockwise only slower
    assert A.resolve("auto", 600, 600, 128, dtype=bf16, platform="cpu", block_size=1024) == "xla"
    assert A.resolve("auto", 100, 100, 128, dtype=bf16, platform="tpu") == "blockwise"  # not a multiple of 128
    assert A.resolve("splash", 128, 256, 128, dtype=bf16, platform="tpu") == "blockwise"  # cached prefix
    assert A.resolve("cudnn", 128, 128, 64, dtype=bf16, platform="cpu") == "blockwise"


# (platform, dtype, head_dim) -> what `auto` runs at 4096 tokens, and whether it is a fallback
BRANCHES = [
    ("gpu", "bfloat16", 128, "cudnn", False), ("gpu", "float16", 64, "cudnn", False),
    ("gpu", "float32", 128, "blockwise", True),  # cuDNN refuses float32: configs/tiny.py and demo.py on a GPU
    ("gpu", "bfloat16", 256, "blockwise", True), ("gpu", "bfloat16", 60, "blockwise", True),
    ("tpu", "bfloat16", 128, "splash", False), ("tpu", "float32", 256, "splash", False),
    ("cpu", "float32", 64, "blockwise", False), ("cpu", "bfloat16", 128, "blockwise", False),
]


@pytest.mark.parametrize("platform, dtype, head_dim, kernel, fallback", BRANCHES)
def test_kernel_choice_covers_every_platform_dtype_and_head_dim(platform, dtype, head_dim, kernel, fallback):
    got, note = A.startup_kernel("auto", length=4096, head_dim=head_dim, dtype=dtype, platform=platform)
    assert got == kernel and (note is not None) == fallback
    if fallback:
        assert note.startswith("attention: the cuDNN kernel") and f"the {kernel} kernel runs" in note
        assert "\n" not in note


def test_an_explicit_kernel_that_cannot_run_is_one_sentence_at_start_up():
    from llada_jax.config import ConfigError

    with pytest.raises(ConfigError, match=r"model.attention='cudnn' cannot run here: the cuDNN kernel takes "
                                          r"bfloat16 or float16 inputs, not float32 .*it picks blockwise here"):
        A.startup_kernel("cudnn", length=256, head_dim=64, dtype="float32", platform="gpu")
    with pytest.raises(ConfigError, match="runs on GPUs only, not on cpu"):
        A.startup_kernel("cudnn", length=256, head_dim=64, dtype="bfloat16", platform="cpu")
    with pytest.raises(ConfigError, match="not a multiple of 128"):
        A.startup_kernel("splash", length=100, head_dim=64, dtype="bfloat16", platform="tpu")
    # a checkpoint's request is a note for inference (its config cannot be changed there), never an error
    kernel, note = A.startup_kernel("cudnn", length=256, head_dim=64, dtype="float32", platform="gpu", strict=False)
    assert kernel == "blockwise" and "the checkpoint asks for cudnn" in note
    kernel, note = A.startup_kernel("splash", length=256, head_dim=64, dtype="float32", platform="cpu")
    assert kernel == "splash" and "interpret mode" in note
    assert A.startup_kernel("xla", length=256, head_dim=64, dtype="float32", platform="gpu") == ("xla", None)


def test_a_float32_model_on_gpu_never_reaches_the_cudnn_call(monkeypatch):
    """The crash the review found: with auto, float32 inputs on a GPU resolved to cuDNN, which refuses them.
    Traced as if on a GPU (cuDNN itself is not on this machine): the call must go to the blockwise kernel."""
    monkeypatch.setattr(A, "target_platform", lambda: "gpu")
    called = []
    monkeypatch.setattr(A, "_cudnn_attention", lambda *a, **k: called.append(a) or a[0])
    q, k, v = random_inputs(b=1, t=64, n=2, k=2, h=8)
    seg = jnp.ones((1, 64), jnp.int32)
    want = A.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, implementation="xla")
    got = A.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, implementation="auto")
    assert not called and q.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    A.attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), q_segment_ids=seg,
                kv_segment_ids=seg, implementation="auto")
    assert len(called) == 1  # bfloat16 inputs do take the cuDNN path


def test_blockwise_keeps_no_length_by_length_scores():
    """Neither direction of the blockwise kernel creates a [B, heads, T, S] array (here 256 x 256)."""
    q, k, v = random_inputs(b=1, t=256, n=2, k=2, h=8)
    seg = jnp.ones((1, 256), jnp.int32)
    f = lambda q, k, v: jnp.sum(A.attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg,  # noqa: E731
                                            implementation="blockwise", block_size=64))
    shapes = {tuple(x.shape) for x in all_avals(jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(q, k, v).jaxpr)}
    assert not any(len(s) >= 2 and s[-1] == 256 and s[-2] == 256 for s in shapes)
    assert (1, 2, 1, 256, 64) in shapes  # the per-block scores are there
