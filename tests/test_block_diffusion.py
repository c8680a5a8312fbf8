"""train.objective=block_diffusion: the loss against LLaDA's at one block and against a NumPy computation at several,
what each prediction may depend on (block 1 is next-token prediction, packed documents stay apart), SFT with the
prompt clean and complementary masks, the forward process's noise options, and one-line config errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.config import ConfigError, ModelConfig, validate
from llada_jax.models import block_mask as BM
from llada_jax.models import registry as M
from llada_jax.objectives import block_diffusion as BD
from llada_jax.objectives import masking
from llada_jax.objectives import registry as R

from helpers import small_config

F32 = ("model.dtype=float32",)


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.from_config(small_config(*F32).model)
    graphdef, params, _ = M.split_model(M.build(cfg, __import__("flax").nnx.Rngs(0)))
    return graphdef, params


def tokens(batch=8, length=16, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(3, 250, (batch, length)), jnp.int32)


def loss_and_grads(model, config, batch, key):
    graphdef, params = model
    fn = lambda p: R.compute_loss(graphdef, config, p, batch, key)  # noqa: E731
    return jax.value_and_grad(fn, has_aux=True)(params)


def assert_same(a, b, tol=1e-6):
    (la, aux_a), ga = a
    (lb, aux_b), gb = b
    np.testing.assert_allclose(la, lb, rtol=tol)
    for k in aux_b:
        np.testing.assert_allclose(aux_a[k], aux_b[k], rtol=tol)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * float(jnp.max(jnp.abs(y))))


@pytest.mark.parametrize("block_size", [16, 64])
@pytest.mark.parametrize("packed", [False, True])
def test_one_block_is_llada_pretraining_loss_and_gradients(model, block_size, packed):
    """Block size >= seq_len: the MDM loss and gradients to 1e-6 with the same keys (the crop on, per-block noise)."""
    batch = {"tokens": tokens()}
    if packed:
        batch["segment_ids"] = jnp.asarray(np.repeat([[1] * 6 + [2] * 7 + [0] * 3], 8, axis=0), jnp.int32)
    crop = "train.random_length_fraction=0.5"
    key = jax.random.key(7)
    bd = small_config(*F32, crop, "train.objective=block_diffusion", f"train.block_size={block_size}")
    mdm = small_config(*F32, crop, "train.objective=mdm")
    assert_same(loss_and_grads(model, bd, batch, key), loss_and_grads(model, mdm, batch, key))


def test_one_block_is_llada_sft_loss_and_gradients(model):
    t = tokens()
    prompt = jnp.arange(16)[None, :] < jnp.asarray([3, 5, 4, 6, 2, 3, 7, 5])[:, None]
    seg = (jnp.arange(16)[None, :] < jnp.asarray([9, 12, 10, 8, 16, 11, 13, 9])[:, None]).astype(jnp.int32)
    batch = {"tokens": t, "prompt_mask": prompt, "segment_ids": seg}
    key = jax.random.key(3)
    bd = small_config(*F32, "train.objective=block_diffusion", "train.block_size=16")
    sft = small_config(*F32, "train.objective=sft")
    assert_same(loss_and_grads(model, bd, batch, key), loss_and_grads(model, sft, batch, key))


def numpy_block_loss(logits, targets, masked, p_blocks, normaliser):
    """sum over rows of sum_blocks (masked CE in the block) / p_block / normaliser, written out with NumPy."""
    logits = np.asarray(logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    ce = lse - np.take_along_axis(logits, np.asarray(targets)[..., None], -1)[..., 0]
    b, length = ce.shape
    nb = p_blocks.shape[1]
    per_block = (ce * np.asarray(masked)).reshape(b, nb, length // nb).sum(-1)
    per_row = (per_block / np.asarray(p_blocks, np.float64)).sum(-1) / np.maximum(np.asarray(normaliser), 1)
    return per_row.sum(), float((np.asarray(normaliser) > 0).sum())


@pytest.mark.parametrize("options", [(), ("train.block_noise=sequence",), ("train.random_length_fraction=0.5",)])
def test_two_stream_loss_matches_numpy_on_the_models_logits(model, options):
    """Block 4 of 16: the objective's sum and weight equal a NumPy computation on logits of the same masks."""
    graphdef, params = model
    config = small_config(*F32, "train.objective=block_diffusion", "train.block_size=4",
                          "train.random_length_fraction=0.0", *options)
    t, key = tokens(), jax.random.key(11)
    total, aux = R.compute_loss(graphdef, config, params, {"tokens": t}, key)
    key_len, key_mask = jax.random.split(key)
    lengths = BD.row_lengths({"tokens": t}, key_len, config.train.random_length_fraction)
    valid = jnp.arange(16)[None, :] < lengths[:, None]
    noisy, masked, p = masking.block_forward_process(key_mask, t, config.model.mask_token_id, config.train.mask_eps,
                                                     4, valid, per_block=config.train.block_noise == "block")
    assert p.shape == ((8, 4) if config.train.block_noise == "block" else (8, 1))
    both = jnp.concatenate([noisy, t], axis=1)
    positions = jnp.broadcast_to(jnp.tile(jnp.arange(16), 2), both.shape)
    segments = jnp.concatenate([valid, valid], axis=1).astype(jnp.int32)
    logits = M.apply(graphdef, params, both, positions, segments,
                     attention_pattern=BD.BlockPattern(4, 16))[:, :16]
    want_total, want_weight = numpy_block_loss(logits, t, masked, np.broadcast_to(p, (8, p.shape[1])), lengths)
    np.testing.assert_allclose(float(total), want_total, rtol=1e-5)
    assert float(aux["loss_weight"]) == want_weight
    assert float(aux["masked_tokens"]) == float(jnp.sum(masked)) > 0


def two_stream_logits(model, noisy, clean, segments, block):
    graphdef, params = model
    out = BD.two_stream_head(graphdef, params, noisy, clean, segments, block)
    return np.asarray(jnp.einsum("btd,dv->btv", out.hidden, out.weight))


def test_block_one_predicts_each_token_from_the_tokens_before_it(model):
    """Block size 1: the prediction at a masked noisy position changes with the clean tokens before it and with
    nothing at or after it, in either stream (next-token prediction with a mask at the predicted position)."""
    mask_id = small_config().model.mask_token_id
    clean = tokens(batch=1, seed=3)
    noisy = jnp.full_like(clean, mask_id)
    seg = jnp.ones_like(clean)
    base = two_stream_logits(model, noisy, clean, seg, 1)
    i = 9
    later = clean.at[0, i:].set(7)  # the target itself and everything after it, clean stream
    other_noisy = noisy.at[0, :i].set(5).at[0, i + 1:].set(5)  # every other noisy column
    np.testing.assert_allclose(two_stream_logits(model, noisy, later, seg, 1)[0, i], base[0, i], atol=1e-5)
    np.testing.assert_allclose(two_stream_logits(model, other_noisy, clean, seg, 1)[0, i], base[0, i], atol=1e-5)
    earlier = clean.at[0, i - 1].set(int(clean[0, i - 1]) % 200 + 1)
    assert np.abs(two_stream_logits(model, noisy, earlier, seg, 1)[0, i] - base[0, i]).max() > 1e-3


def test_a_block_sees_its_own_noisy_block_and_earlier_clean_blocks_only(model):
    """Block 4: a noisy column of block 2 ignores the clean tokens of its own and later blocks and other noisy
    blocks, and depends on its own noisy block and on the clean blocks before it."""
    clean = tokens(batch=1, seed=5)
    noisy = clean.at[0, 8:12].set(small_config().model.mask_token_id)
    seg = jnp.ones_like(clean)
    base = two_stream_logits(model, noisy, clean, seg, 4)[0, 9]
    same = lambda n, c: np.testing.assert_allclose(  # noqa: E731
        two_stream_logits(model, n, c, seg, 4)[0, 9], base, atol=1e-5)
    differs = lambda n, c: np.abs(two_stream_logits(model, n, c, seg, 4)[0, 9] - base).max() > 1e-3  # noqa: E731
    same(noisy, clean.at[0, 8:].set(7))  # the answer itself (clean, same block) and later clean blocks
    same(noisy.at[0, :8].set(7).at[0, 12:].set(7), clean)  # the other noisy blocks
    assert differs(noisy, clean.at[0, 5].set(7))  # clean block 1
    assert differs(noisy.at[0, 11].set(7), clean)  # its own noisy block


def test_packed_documents_never_see_each_other_across_the_streams(model):
    clean = tokens(batch=1, seed=8)
    seg = jnp.asarray([[1] * 7 + [2] * 9], jnp.int32)
    noisy = clean.at[0, ::3].set(small_config().model.mask_token_id)
    base = two_stream_logits(model, noisy, clean, seg, 4)
    other = two_stream_logits(model, noisy.at[0, 7:].set(9), clean.at[0, 7:].set(9), seg, 4)
    np.testing.assert_allclose(other[0, :7], base[0, :7], atol=1e-5)  # document 1 unchanged by document 2
    assert np.abs(other[0, 7:] - base[0, 7:]).max() > 1e-3


def sft_batch():
    prompt = jnp.arange(16)[None, :] < jnp.asarray([3, 5, 4, 6, 2, 3, 7, 5])[:, None]
    seg = (jnp.arange(16)[None, :] < jnp.asarray([9, 12, 10, 8, 14, 11, 13, 9])[:, None]).astype(jnp.int32)
    return {"tokens": tokens(), "prompt_mask": prompt, "segment_ids": seg}


def test_sft_keeps_the_prompt_clean_and_complementary_masks_cover_each_response_token_once(model, monkeypatch):
    graphdef, params = model
    seen = {}
    real = BD.losses.block_loss

    def spy(outputs, targets, masked, p, normaliser, weighting):
        seen.update(masked=np.asarray(masked), p=np.asarray(p), normaliser=np.asarray(normaliser))
        return real(outputs, targets, masked, p, normaliser, weighting)

    monkeypatch.setattr(BD.losses, "block_loss", spy)
    batch = sft_batch()
    config = small_config(*F32, "train.objective=block_diffusion", "train.block_size=4", "train.complementary_masks=True")
    total, aux = R.compute_loss(graphdef, config, params, batch, jax.random.key(2))
    masked = seen["masked"]
    assert masked.shape == (16, 16) and aux["loss_weight"] == 16  # every example twice
    first, second = masked[:8], masked[8:]
    response = np.asarray(~batch["prompt_mask"]) & (np.arange(16)[None] < 14)  # widened to the longest example
    assert not (first & second).any() and ((first | second) == response).all()  # each response token once
    assert not (masked[:, :7] & np.tile(np.asarray(batch["prompt_mask"])[:, :7], (2, 1))).any()
    np.testing.assert_allclose(seen["p"][8:], np.maximum(1 - seen["p"][:8], config.train.mask_eps))
    np.testing.assert_array_equal(seen["normaliser"][:8], response.sum(-1))
    assert np.isfinite(float(total))


def test_mean_weighting_is_the_mean_masked_cross_entropy(model):
    graphdef, params = model
    config = small_config(*F32, "train.objective=block_diffusion", "train.block_size=4",
                          "train.block_weighting=mean", "train.noise_low=0.3", "train.noise_high=0.8",
                          "train.mask_eps=1e-6")
    total, aux = R.compute_loss(graphdef, config, params, sft_batch(), jax.random.key(4))
    assert float(aux["loss_weight"]) == float(aux["masked_tokens"]) > 0
    np.testing.assert_allclose(float(total), float(aux["masked_ce_sum"]), rtol=1e-6)


def test_noise_per_block_or_per_row_within_the_range():
    t = jnp.zeros((64, 1024), jnp.int32)
    _, masked, p = masking.block_forward_process(jax.random.key(0), t, 9, 1e-3, 128, noise_range=(0.3, 0.8))
    assert p.shape == (64, 8) and float(p.min()) >= 0.3 and float(p.max()) <= 0.8 + 1e-3
    rates = np.asarray(masked).reshape(64, 8, 128).mean(-1)
    assert np.abs(rates - np.asarray(p)).mean() < 0.05  # each block masked at its own rate
    assert np.asarray(p).std(axis=1).mean() > 0.05  # and the rates differ between blocks of a row
    _, masked, p = masking.block_forward_process(jax.random.key(0), t, 9, 1e-3, 128, per_block=False)
    assert p.shape == (64, 1)
    fixed = masking.block_forward_process(jax.random.key(0), t, 9, 1e-3, 8, t=jnp.full((64,), 0.5))[2]
    np.testing.assert_allclose(fixed, (1 - 1e-3) * 0.5 + 1e-3)


def test_shifted_block_one_is_the_autoregressive_loss_and_gradients(model):
    """model.logit_shift at block size 1, everything masked: each token is predicted from the clean stream's
    state one position earlier, which sees exactly the tokens before it. That is the AR objective of the same
    weights run causally: the same CE sum, count and gradients (an AR checkpoint starts where it left off)."""
    _, params = model
    batch = {"tokens": tokens(), "t": jnp.ones((8,))}
    common = (*F32, "train.random_length_fraction=0")
    shifted = small_config(*common, "train.objective=block_diffusion", "train.block_size=1",
                           "model.logit_shift=True", "train.block_weighting=mean")
    causal = small_config(*common, "train.objective=ar", "model.causal=True")
    graph = lambda config: M.graphdef(ModelConfig.from_config(config.model))  # noqa: E731
    (bd_loss, bd_aux), bd_grads = loss_and_grads((graph(shifted), params), shifted, batch, jax.random.key(1))
    (ar_loss, ar_aux), ar_grads = loss_and_grads((graph(causal), params), causal, batch, jax.random.key(1))
    assert float(bd_aux["loss_weight"]) == float(ar_aux["loss_weight"]) == 8 * 15  # position 0 has no predecessor
    np.testing.assert_allclose(bd_loss, ar_loss, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(bd_grads), jax.tree.leaves(ar_grads)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(y))))


def test_shifted_predictions_come_from_the_position_before(model):
    """Block 4 with the shift: a block's first position is predicted by the clean stream's previous position
    (the clean sequence's block-causal state there: it sees every clean token before the block), the others by the
    noisy stream's previous position; a packed document's first token is never a target."""
    graphdef, params = model
    mask_id = small_config().model.mask_token_id
    clean = tokens(batch=1, seed=5)
    noisy = clean.at[0, 5:7].set(mask_id).at[0, 8:].set(mask_id)
    seg = jnp.ones_like(clean)
    both = BD.two_stream_head(graphdef, params, noisy, clean, seg, 4)
    shifted = BD.two_stream_head(graphdef, params, noisy, clean, seg, 4, shift=True)
    block_causal = M.apply_head(graphdef, params, clean, attention_pattern=BD.BlockPattern(4)).hidden
    np.testing.assert_allclose(shifted.hidden[0, 4::4], block_causal[0, 3:-1:4], atol=1e-5)
    inside = [i for i in range(1, 16) if i % 4]
    np.testing.assert_allclose(shifted.hidden[0, inside], both.hidden[0, [i - 1 for i in inside]], atol=1e-6)
    segments = jnp.asarray([[1] * 6 + [2] * 7 + [0] * 3], jnp.int32)
    from llada_jax.models import logit_shift
    assert np.flatnonzero(~np.asarray(logit_shift.predictable(segments))[0]).tolist() == [0, 6, 13, 14, 15]


@pytest.mark.parametrize("overrides, message", [
    (("train.objective=mdm",), "model.logit_shift=True needs block decoding"),
    (("train.objective=block_diffusion", "train.block_size=64"), "final block size below train.seq_len"),
    (("train.objective=block_diffusion", "train.block_schedule=4:0.5,4096:0.5"), "final block size below"),
])
def test_logit_shift_outside_block_decoding_is_one_sentence(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(small_config("model.logit_shift=True", *overrides))


def test_block_schedule_phases_and_llada2_shape():
    t = small_config("train.objective=block_diffusion", "train.seq_len=64", "model.max_seq_len=64",
                     "train.steps=100", "train.block_schedule=1:0.05,4:0.05,32:0.1,4096:0.6,32:0.2").train
    sizes = [BD.block_size_at(t, s) for s in range(100)]
    assert sizes[:5] == [1] * 5 and sizes[5:10] == [4] * 5 and sizes[10:20] == [32] * 10
    assert sizes[20:80] == [64] * 60 and sizes[80:] == [32] * 20  # 4096 >= seq_len: one block of 64
    assert BD.block_sizes(t) == [1, 4, 32, 64]
    t.block_schedule = ""
    assert BD.block_size_at(t, 50) == 32 and BD.block_sizes(t) == [32]


@pytest.mark.parametrize("override,message", [
    ("train.block_size=5", "block size 5 must be positive and divide train.seq_len=16"),
    ("train.block_schedule=1:0.5,3:0.5", "block size 3 must"),
    ("train.block_schedule=1:0.5,4:0.4", "must be positive and add up to 1"),
    ("train.block_schedule=four:1", "is not SIZE:FRACTION"),
    ("train.block_noise=token", "train.block_noise='token' is unknown"),
    ("train.block_weighting=x", "train.block_weighting='x' is unknown"),
    ("train.noise_high=1.5", "must satisfy 0 <= low <= high <= 1"),
])
def test_block_settings_errors_are_one_sentence(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(small_config("train.objective=block_diffusion", override))


def test_decoding_layout_gives_the_training_logits_of_the_current_block(model):
    """One block-causal stream (finished blocks clean, the current block partly masked, later blocks anything) gives
    the current block the logits the two-stream training pass gives its noisy copy: decoding sees what training
    trained. The block sampler's visibility ranks (block_mask.visibility_ranks of a clean stream, as
    inference/block_sampling.py builds them) and the static one-stream BlockPattern give the same logits."""
    graphdef, params = model
    mask_id = small_config().model.mask_token_id
    row = tokens(batch=1, seed=9)
    current = row.at[0, 9:11].set(mask_id).at[0, 12:].set(mask_id)  # block 2 (8..11) half masked, later all masked
    block = jnp.arange(16)[None, :] // 4
    ranked = M.apply(graphdef, params, current, visibility=BM.visibility_ranks(BM.CLEAN, block))
    static = M.apply(graphdef, params, current, attention_pattern=BD.BlockPattern(4))
    noisy = current  # what the noisy stream holds for block 2; other noisy blocks are unseen by it
    two = two_stream_logits(model, noisy, row.at[0, 8:].set(3), jnp.ones_like(row), 4)  # later clean tokens unseen
    np.testing.assert_allclose(np.asarray(ranked)[0, 8:12], two[0, 8:12], atol=1e-4)
    np.testing.assert_allclose(np.asarray(static), np.asarray(ranked), atol=1e-5)
