"""Block-diffusion decoding: the attention ranks against a NumPy block-causal mask, the exact-cache sampler
against recomputing the whole sequence every step, and both against a one-row reference written here the way
LLaDA2's generate decodes (no padding, no cache, the sequence cut at the current block)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.config import ConfigError, ModelConfig
from llada_jax.inference import block_sampling, sampling, sampling_rules as rules
from llada_jax.models import attention as A
from llada_jax.models import registry as M

from helpers import small_config

MASK = 259
BLOCK = 4


def block_model(*overrides):
    """A small block-diffusion model with weights scaled up, so predictions are confident and distinct."""
    config = small_config("model.dtype=float32", "train.objective=block_diffusion", f"train.block_size={BLOCK}",
                          *overrides)
    cfg = ModelConfig.from_config(config.model)
    params = jax.tree.map(lambda a: a * 5.0 if a.ndim > 1 else a, M.init_params(cfg, 0))
    return M.graphdef(cfg), params, cfg


@pytest.fixture(scope="module")
def model():
    return block_model()


@pytest.fixture(scope="module")
def shifted_model():
    """The same weights read with model.logit_shift: column i predicted from column i - 1."""
    return block_model("model.logit_shift=True")


def numpy_block_causal(q_block, kv_block, q_seg, kv_seg):
    """The rule written out: same segment and key block <= query block."""
    return (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_block[:, None, :] <= q_block[:, :, None])


@pytest.mark.parametrize("implementation, block", [("xla", 512), ("blockwise", 3)])
def test_visibility_ranks_give_block_causal_attention(implementation, block):
    rng = np.random.default_rng(0)
    b, t, n, h = 2, 10, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32) for _ in range(3))
    seg = np.ones((b, t), np.int32)
    seg[1, :3] = 0  # left padding
    blocks = np.broadcast_to(np.arange(t) // 4, (b, t)).astype(np.int32)
    far = np.full((b, t), 2 ** 30, np.int32)
    got = A.attention(q, k, v, q_segment_ids=(jnp.asarray(seg), jnp.asarray(blocks)),
                      kv_segment_ids=(jnp.asarray(seg), jnp.asarray(blocks), jnp.asarray(far)),
                      implementation=implementation, block_size=block)
    mask = numpy_block_causal(blocks, blocks, seg, seg)
    scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    scores = np.where(mask[:, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    want = np.einsum("bnts,bsnh->btnh", weights / weights.sum(-1, keepdims=True), v)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    if implementation == "blockwise":  # its hand-written backward pass takes the ranks too
        loss = lambda impl: lambda q, k, v: A.attention(  # noqa: E731
            q, k, v, q_segment_ids=(jnp.asarray(seg), jnp.asarray(blocks)),
            kv_segment_ids=(jnp.asarray(seg), jnp.asarray(blocks), jnp.asarray(far)), implementation=impl,
            block_size=block).sum()
        grads = [jax.grad(loss(impl), argnums=(0, 1, 2))(q, k, v) for impl in ("blockwise", "xla")]
        for a, b in zip(*grads):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_an_interval_of_ranks_shows_a_key_to_one_block_only():
    """Two streams in ranks: noisy block b queries with 2b, clean block b with 2b + 1; a clean key of block c is
    visible from 2c + 1 on (later noisy blocks, its own and later clean ones), a noisy key only to 2c."""
    far = 2 ** 30
    keys = (jnp.ones((1, 4), jnp.int32), jnp.asarray([[1, 2, 3, 0]]), jnp.asarray([[far, 2, far, 0]]))  # c0 n1 c1 n0
    queries = (jnp.ones((1, 3), jnp.int32), jnp.asarray([[0, 2, 3]]))  # noisy 0, noisy 1, clean 1
    ok = A._allowed(queries, keys, False)
    np.testing.assert_array_equal(np.asarray(ok[0]), [[0, 0, 0, 1], [1, 1, 0, 0], [1, 0, 1, 0]])


def test_canvas_aligns_block_boundaries_for_prompts_of_any_length():
    ids, valid = sampling.left_pad([[5, 6, 7, 8, 9], [10, 11], [1, 2, 3, 4, 5, 6, 7, 8]], 0)
    lay = block_sampling.layout(ids, valid, block_size=4, gen_length=8, mask_id=MASK)
    x, pos = np.asarray(lay.x), np.asarray(lay.positions)
    np.testing.assert_array_equal(np.asarray(lay.answer_start), [9, 10, 8])  # column block F = 2, plus n % 4
    np.testing.assert_array_equal(x[0, 4:10], [5, 6, 7, 8, 9, MASK])  # prompt from column 4: position 4 in block 2
    np.testing.assert_array_equal(pos[0, 4:10], np.arange(6))
    np.testing.assert_array_equal(x[1, 8:11], [10, 11, MASK])  # two tokens: the whole prompt is in block 2
    np.testing.assert_array_equal(np.asarray(lay.segment_ids)[1, :8], 0)
    assert x.shape[1] == 4 * (2 + 3)  # blocks for the answer whatever the prompt's phase (8 + 3 -> 3 blocks)


@jax.jit(static_argnums=0)
def block_causal_logits(graphdef, params, tokens):
    """Logits of one unpadded sequence with block-causal attention over positions 0..T-1."""
    rank = jnp.arange(tokens.shape[1])[None] // BLOCK
    return M.apply(graphdef, params, tokens, visibility=(rank, rank, jnp.full_like(rank, 2 ** 30)))


def reference_row(graphdef, params, prompt, *, gen_length, steps_per_block, threshold=None, shift=False):
    """One prompt decoded as LLaDA2's generate does: the sequence is the prompt then masks up to a block
    boundary, each block decoded with the sequence cut at its end and recomputed at every step, greedy; masks
    after the answer are never revealed (they stay noise, where LLaDA2 reveals and drops them). With `shift`
    a column's logits are those of the column before it (Dream's generate)."""
    n = len(prompt)
    total = -(-(n + gen_length) // BLOCK) * BLOCK
    x = np.array(list(prompt) + [MASK] * (total - n), np.int32)
    for block in range(n // BLOCK, total // BLOCK):
        end = (block + 1) * BLOCK
        answer = np.arange(end - BLOCK, end) < n + gen_length
        counts = np.array([np.sum((x[end - BLOCK:end] == MASK) & answer)])
        schedule = np.asarray(rules.transfer_schedule(jnp.asarray(counts), steps_per_block))[0]
        for step in range(steps_per_block if threshold is None else BLOCK):
            current = x[end - BLOCK:end]
            if not np.any((current == MASK) & answer):
                break
            logits = block_causal_logits(graphdef, params, jnp.asarray(x[None, :end]))
            if shift:  # column 0 has nothing before it (it is always prompt)
                logits = jnp.pad(logits[:, :-1], ((0, 0), (1, 0), (0, 0)))
            logits = logits[:, end - BLOCK:]
            pred = rules.predict(logits, None, 0.0, MASK)
            conf = rules.confidence(logits, pred, None, "low_confidence")
            conf = jnp.where(jnp.asarray((current == MASK) & answer)[None], conf, -jnp.inf)
            chosen = np.asarray(rules.reveal_mask(conf, jnp.asarray([schedule[step]]), threshold=threshold,
                                                  factor=None))[0]
            x[end - BLOCK:end] = np.where(chosen, np.asarray(pred)[0], current)
    return list(x[n:n + gen_length])


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [1, 2, 3, 4, 5, 6, 7, 8], [42]]  # mid-block, short, aligned, one token


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("rule", [dict(steps=8), dict(steps=16), dict(steps=8, threshold=0.3)])
def test_cached_block_sampler_equals_recomputing_everything_and_the_one_row_reference(request, rule, shift):
    graphdef, params, _ = request.getfixturevalue("shifted_model" if shift else "model")
    ids, valid = sampling.left_pad(PROMPTS, 0)
    outputs = {}
    for cache in ("exact", "none"):
        out, _, passes = sampling.generate(graphdef, params, ids, valid, jax.random.key(0), gen_length=8,
                                           block_length=BLOCK, mask_id=MASK, cache=cache, block_diffusion=True,
                                           **rule)
        outputs[cache] = np.asarray(out)
    np.testing.assert_array_equal(outputs["exact"], outputs["none"])  # token for token
    spb = block_sampling.steps_per_block(8, rule["steps"], BLOCK)
    for row, prompt in enumerate(PROMPTS):
        want = reference_row(graphdef, params, prompt, gen_length=8, steps_per_block=spb,
                             threshold=rule.get("threshold"), shift=shift)
        assert list(outputs["exact"][row, ids.shape[1]:]) == want, f"row {row}"
        np.testing.assert_array_equal(outputs["exact"][row, :ids.shape[1]], np.asarray(ids[row]))


def test_sampling_with_temperature_and_random_remasking_is_the_same_with_and_without_the_cache(model):
    graphdef, params, _ = model
    ids, valid = sampling.left_pad(PROMPTS[:2], 0)
    run = lambda cache: np.asarray(sampling.generate(  # noqa: E731
        graphdef, params, ids, valid, jax.random.key(3), gen_length=8, steps=8, block_length=BLOCK, mask_id=MASK,
        temperature=0.8, remasking="random", cache=cache, block_diffusion=True)[0])
    np.testing.assert_array_equal(run("exact"), run("none"))


def test_a_shifted_model_answers_differently(model, shifted_model):
    """The shift is used at all: the same weights read one column earlier decode other tokens."""
    ids, valid = sampling.left_pad(PROMPTS, 0)
    run = lambda m: np.asarray(sampling.generate(  # noqa: E731
        m[0], m[1], ids, valid, jax.random.key(0), gen_length=8, steps=8, block_length=BLOCK, mask_id=MASK,
        cache="exact", block_diffusion=True)[0])
    assert (run(model) != run(shifted_model)).any()


def test_the_cache_recomputes_only_the_current_block(model):
    """The widths of the forward passes the decoder is built from: the prompt's complete blocks once, then per
    block one pass over the previous and current block, and passes over the current block alone."""
    graphdef, params, _ = model
    ids, valid = sampling.left_pad([list(range(1, 18))], 0)  # 17 tokens: blocks 0-3 complete, block 4 partial
    widths = []
    real = M.apply_with_kv

    def spy(graphdef, params, tokens, *args, **kwargs):
        widths.append(tokens.shape[1])
        return real(graphdef, params, tokens, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(M, "apply_with_kv", spy)
        sampling.generate(graphdef, params, ids, valid, jax.random.key(0), gen_length=8, steps=8,
                          block_length=BLOCK, mask_id=MASK, cache="exact", block_diffusion=True)
    # traced once each: the cache's shape, blocks 0-2 (block 3 comes with block 4), previous + current, current
    assert widths == [BLOCK, 3 * BLOCK, 2 * BLOCK, BLOCK]


def test_early_stop_at_eos_keeps_the_text_and_saves_blocks(model):
    graphdef, params, _ = model
    ids, valid = sampling.left_pad(PROMPTS[:1], 0)
    kwargs = dict(gen_length=16, steps=16, block_length=BLOCK, mask_id=MASK, block_diffusion=True)
    full, _, full_passes = sampling.generate(graphdef, params, ids, valid, jax.random.key(0), **kwargs)
    answer = [int(t) for t in np.asarray(full)[0, ids.shape[1]:]]
    eos = answer[1]  # a token of the first decoded block
    out, _, passes = sampling.generate(graphdef, params, ids, valid, jax.random.key(0), eos_id=eos, **kwargs)
    assert int(passes) < int(full_passes)
    assert sampling.crop_at_eos(np.asarray(out)[0, ids.shape[1]:], eos) == sampling.crop_at_eos(answer, eos)


@pytest.mark.parametrize("options, fragment", [
    (dict(cache="dual"), "cache='dual' does not apply to a block-diffusion model"),
    (dict(cfg_scale=1.0), "classifier-free guidance is not built for block-diffusion models"),
    (dict(steps=0), "must be positive"),
])
def test_block_decoder_refuses_what_it_cannot_do_in_one_sentence(model, options, fragment):
    graphdef, params, _ = model
    ids, valid = sampling.left_pad(PROMPTS[:1], 0)
    kwargs = dict(gen_length=8, steps=8, block_length=BLOCK, mask_id=MASK, block_diffusion=True)
    with pytest.raises(ConfigError) as err:
        sampling.generate(graphdef, params, ids, valid, jax.random.key(0), **{**kwargs, **options})
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_exact_cache_on_a_full_sequence_model_is_refused(model):
    graphdef, params, _ = model
    ids, valid = sampling.left_pad(PROMPTS[:1], 0)
    with pytest.raises(ConfigError, match="this model is a full-sequence one"):
        sampling.generate(graphdef, params, ids, valid, jax.random.key(0), gen_length=8, steps=8, block_length=4,
                          mask_id=MASK, cache="exact")


@pytest.mark.slow
def test_benchmark_script_runs_both_tables_at_toy_shapes(tmp_path, capsys):
    """benchmarks/block_sampling.py: the speed table (the exact cache equal to recomputing, token for token) and
    the accuracy table on a full-sequence and a block-diffusion checkpoint."""
    from llada_jax.checkpoints import params_export

    from helpers import load_benchmark

    bench = load_benchmark("block_sampling")
    toy = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.mlp_hidden=64"]
    rows = bench.main(["--prompt-length=5", "--gen-length=8", "--steps=8", "--block-length=4", "--repeats=1", *toy])
    assert [r["mode"] for r in rows][-1] == "block, exact cache" and rows[-1]["same"] == 1.0
    for name, objective in (("mdm", "sft"), ("bd", "block_diffusion")):
        config = small_config(f"train.objective={objective}", "train.block_size=4")
        params_export.save_params(tmp_path / name, M.init_params(ModelConfig.from_config(config.model), 0), config)
    rows = bench.main([f"--mdm-checkpoint={tmp_path / 'mdm'}", f"--bd-checkpoint={tmp_path / 'bd'}", "--n-test=4",
                       "--train-examples=50", "--gen-length=6", "--steps=6", "--block-length=6", "--repeats=1"])
    assert len(rows) == 5 and all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    assert "accuracy on 4 sorting problems" in capsys.readouterr().out
