"""The jitted reverse process against a plain NumPy transcription of the official generate.py, fed the same
noise; the reveal schedule; CFG; threshold decoding; padding; sharding; the sample CLI."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import likelihood, loop, sampling, sharding
from llada_jax import model as M
from llada_jax.cli import main
from llada_jax.config import ModelConfig

from helpers import small_config

CFG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, mlp_hidden=48,
                  dtype="float32", init_std=0.3)
MASK = 47
GRAPHDEF = M.split_model(M.abstract_model(CFG))[0]
PARAMS = M.init_params(CFG, 3)


def model_logits(x):
    return np.asarray(M.apply(GRAPHDEF, PARAMS, jnp.asarray(x)), np.float64)


def reference_generate(prompt, gen_length, steps, block_length, temperature, cfg_scale, remasking, key):
    """generate.py in NumPy (float64), drawing its noise from the same JAX keys as the jitted decoder (and, like
    it, never predicting the mask id)."""
    p = len(prompt)
    x = np.array([list(prompt) + [MASK] * gen_length])
    prompt_index = np.arange(x.shape[1])[None] < p
    n_blocks = gen_length // block_length
    spb = steps // n_blocks
    for blk in range(n_blocks):
        m = int((x[0, p + blk * block_length:p + (blk + 1) * block_length] == MASK).sum())
        schedule = [m // spb + (1 if i < m % spb else 0) for i in range(spb)]
        for i in range(spb):
            key, k_noise, k_conf = jax.random.split(key, 3)
            logits = model_logits(x)
            if cfg_scale > 0:
                un = model_logits(np.where(prompt_index, MASK, x))
                logits = un + (cfg_scale + 1) * (logits - un)
            logits[..., MASK] = -np.inf  # the decoder never predicts the mask id itself
            if temperature == 0:
                x0 = logits.argmax(-1)
            else:
                u = np.asarray(jax.random.uniform(k_noise, logits.shape, jnp.float32,
                                                  minval=np.finfo(np.float32).tiny, maxval=1.0), np.float64)
                x0 = (np.exp(logits) / (-np.log(u)) ** temperature).argmax(-1)
            if remasking == "low_confidence":
                probs = np.exp(logits - logits.max(-1, keepdims=True))
                probs /= probs.sum(-1, keepdims=True)
                conf = np.take_along_axis(probs, x0[..., None], -1)[..., 0]
            else:
                conf = np.asarray(jax.random.uniform(k_conf, x0.shape, jnp.float32), np.float64)
            conf[:, p + (blk + 1) * block_length:] = -np.inf
            mask_index = x == MASK
            x0 = np.where(mask_index, x0, x)
            conf = np.where(mask_index, conf, -np.inf)
            chosen = np.argsort(-conf[0], kind="stable")[:schedule[i]]
            x[0, chosen] = x0[0, chosen]
    return x[0]


def run(prompt, **kw):
    ids, valid = sampling.left_pad([prompt], 0)
    out, trace, passes = sampling.generate(GRAPHDEF, PARAMS, ids, valid, kw.pop("key", jax.random.key(0)),
                                           mask_id=MASK, **kw)
    return np.asarray(out[0]), np.asarray(trace[0]), int(passes)


@pytest.mark.parametrize("temperature, remasking, cfg_scale", [
    (0.0, "low_confidence", 0.0),
    (0.9, "random", 0.0),
    (0.7, "low_confidence", 0.0),
    (0.0, "low_confidence", 1.5),  # classifier-free guidance
])
def test_decoder_equals_numpy_reference(temperature, remasking, cfg_scale):
    prompt = [5, 9, 2, 30]
    kw = dict(gen_length=12, steps=6, block_length=4, temperature=temperature, cfg_scale=cfg_scale, remasking=remasking)
    got, _, passes = run(prompt, key=jax.random.key(7), **kw)
    want = reference_generate(prompt, key=jax.random.key(7), **kw)
    np.testing.assert_array_equal(got, want)
    assert passes == 6 and MASK not in got


def test_cfg_changes_the_result():
    prompt = [5, 9, 2, 30]
    plain, _, _ = run(prompt, gen_length=8, steps=8, block_length=8)
    guided, _, _ = run(prompt, gen_length=8, steps=8, block_length=8, cfg_scale=3.0)
    assert not np.array_equal(plain, guided)


def test_transfer_schedule():
    np.testing.assert_array_equal(sampling.transfer_schedule(jnp.array([10, 7, 3]), 4),
                                  [[3, 3, 2, 2], [2, 2, 2, 1], [1, 1, 1, 0]])


def test_reveals_follow_the_schedule_block_by_block():
    p, gen, steps, bl = 3, 12, 9, 4  # 3 blocks of 4 masks over 3 steps each: 2, 1, 1
    _, trace, _ = run([1, 2, 3], gen_length=gen, steps=steps, block_length=bl)
    assert np.all(trace[:p] == -1)
    counts = np.bincount(trace[p:], minlength=steps)
    np.testing.assert_array_equal(counts, [2, 1, 1] * 3)
    for blk in range(3):
        assert set(trace[p + blk * bl:p + (blk + 1) * bl]) == {3 * blk, 3 * blk + 1, 3 * blk + 2}


def test_threshold_one_equals_one_token_per_step_baseline():
    """No softmax probability exceeds 1.0, so threshold decoding reveals exactly the top-1 each step: the
    official schedule with steps == gen_length."""
    prompt = [4, 8, 15]
    base, base_trace, base_passes = run(prompt, gen_length=8, steps=8, block_length=4)
    thr, thr_trace, thr_passes = run(prompt, gen_length=8, steps=8, block_length=4, threshold=1.0)
    np.testing.assert_array_equal(thr, base)
    np.testing.assert_array_equal(thr_trace, base_trace)
    assert thr_passes == base_passes == 8


def test_low_threshold_uses_fewer_forward_passes():
    out, _, passes = run([4, 8, 15], gen_length=8, steps=8, block_length=4, threshold=0.0)
    assert passes == 2 and MASK not in out  # every masked token of a block clears 0.0: one pass per block


def test_padded_batch_equals_prompts_alone():
    prompts = [[5, 9, 2, 30, 11, 7], [3, 4]]
    ids, valid = sampling.left_pad(prompts, 0)
    out, _, _ = sampling.generate(GRAPHDEF, PARAMS, ids, valid, jax.random.key(0), gen_length=8, steps=8,
                                  block_length=4, mask_id=MASK)
    for row, prompt in zip(np.asarray(out), prompts):
        alone, _, _ = run(prompt, gen_length=8, steps=8, block_length=4)
        np.testing.assert_array_equal(row[ids.shape[1]:], alone[len(prompt):])


def test_sharded_inference_gives_the_same_tokens():
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    _, abstract, names = M.split_model(M.abstract_model(CFG))
    sharded = jax.device_put(PARAMS, sharding.tree_shardings(mesh, names, abstract))
    assert len(sharded["blocks"]["q_proj"].sharding.device_set) == 8
    ids, valid = sampling.left_pad([[5, 9, 2, 30]] * 8, 0)
    with jax.set_mesh(mesh):
        out8, _, _ = sampling.generate(GRAPHDEF, sharded, ids, valid, jax.random.key(1), gen_length=8, steps=4,
                                       block_length=4, mask_id=MASK, temperature=0.5)
    out1, _, _ = sampling.generate(GRAPHDEF, PARAMS, ids, valid, jax.random.key(1), gen_length=8, steps=4,
                                   block_length=4, mask_id=MASK, temperature=0.5)
    np.testing.assert_array_equal(np.asarray(out8), np.asarray(out1))


def test_crop_at_eos():
    assert sampling.crop_at_eos([5, 6, 1, 7, 1], 1) == [5, 6] and sampling.crop_at_eos([5, 6], 1) == [5, 6]


def test_likelihood_mean_matches_exact_enumeration():
    """E[(L/l) sum_{masked} CE] with l uniform on 1..L and a uniform subset of size l, computed exactly."""
    prompt, answer = [5, 9], [2, 30, 11]
    big_l = len(answer)
    seq = np.array(prompt + answer)
    exact = 0.0
    for n_masked in range(1, big_l + 1):
        subsets = list(itertools.combinations(range(big_l), n_masked))
        noisy = np.tile(seq, (len(subsets), 1))
        for row, subset in enumerate(subsets):
            noisy[row, [len(prompt) + i for i in subset]] = MASK
        logp = model_logits(noisy) - np.log(np.exp(model_logits(noisy)).sum(-1, keepdims=True))
        ce = -np.take_along_axis(logp, np.tile(seq, (len(subsets), 1))[..., None], -1)[..., 0]
        per_subset = [ce[row, [len(prompt) + i for i in subset]].sum() for row, subset in enumerate(subsets)]
        exact += (big_l / n_masked) * np.mean(per_subset) / big_l

    keys = jax.random.split(jax.random.key(0), 3000)
    samples = jax.vmap(lambda k: likelihood.minibatch_nll(GRAPHDEF, PARAMS, jnp.asarray(seq), k, prompt_len=2,
                                                          batch=3, mask_id=MASK))(keys).reshape(-1)
    mean, se = float(samples.mean()), float(samples.std() / math.sqrt(samples.size))
    assert abs(mean - exact) < 4 * se and se < 0.02 * exact, (mean, exact, se)

    estimate, stderr = likelihood.log_likelihood(GRAPHDEF, PARAMS, prompt, answer, jax.random.key(1), mask_id=MASK,
                                                 mc_num=96, batch_size=3)
    assert abs(-estimate - exact) < 5 * stderr


def test_stratified_mask_counts_cover_every_length():
    counts = np.asarray(likelihood.stratified_mask_counts(jax.random.key(0), 6, 6))
    assert sorted(counts) == [1, 2, 3, 4, 5, 6]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    loop.run(small_config("train.steps=2", "checkpoint.tensorboard=False", "train.eval_batches=1",
                          "model.max_seq_len=64"), workdir, quiet=True)
    return workdir


def test_sample_cli_on_a_trained_checkpoint(trained, tmp_path, capsys):
    assert main(["sample", f"--checkpoint={trained}", "--prompt=def f(", "--prompt=x", "--gen-length=16",
                 "--steps=8", "--block-length=8", "--kv-cache", f"--trace={tmp_path / 'trace.png'}"]) == 0
    out = capsys.readouterr().out
    assert "=== def f(" in out and "=== x" in out and "(8 forward passes for 2 x 16 tokens)" in out
    assert (tmp_path / "trace.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, fragment", [
    (["--gen-length=10", "--block-length=4"], "--gen-length=10 is not a multiple of --block-length=4"),
    (["--gen-length=16", "--block-length=4", "--steps=6"], "--steps=6 does not split over 4 blocks"),
    (["--gen-length=64", "--block-length=64", "--steps=64"], "exceeds the model's max_seq_len=64"),
])
def test_sample_cli_bad_arguments(trained, capsys, args, fragment):
    assert main(["sample", f"--checkpoint={trained}", "--prompt=abc", *args]) == 2
    assert fragment in capsys.readouterr().err


def test_score_cli_multiple_choice(trained, tmp_path, capsys):
    data = tmp_path / "mc.jsonl"
    data.write_text('{"prompt": "ab", "choices": ["cd", "ef"], "label": 1}\n{"prompt": "x", "answer": "yz"}\n')
    assert main(["score", f"--checkpoint={trained}", f"--input={data}", "--mc-num=8", "--batch-size=4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert '"pick"' in lines[0] and '"accuracy"' in lines[-1] and len(lines) == 3
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    assert main(["score", f"--checkpoint={trained}", f"--input={bad}"]) == 2
    assert "line 1 needs \"prompt\"" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["sample", f"--checkpoint={tmp_path}", "--prompt=a"]) == 2
    assert "holds no 'params' checkpoint" in capsys.readouterr().err


def test_cached_prefix_decode_equals_the_full_forward():
    """Suffix logits computed against a prefix K/V cache (taken from a full forward) equal the full forward's."""
    tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, 47)
    seg = jnp.ones_like(tokens).at[0, :2].set(0)  # row 0 has two padding tokens
    pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
    full, kv = M.apply(GRAPHDEF, PARAMS, tokens, pos, seg, return_kv=True)
    assert kv[0].shape == (2, 2, 10, 4, 8)  # [layers, batch, length, kv heads, head dim]
    prefix = jax.tree.map(lambda a: a[:, :, :6], kv)
    suffix = M.apply(GRAPHDEF, PARAMS, tokens[:, 6:], pos[:, 6:], seg[:, 6:], prefix_kv=prefix,
                     prefix_segment_ids=seg[:, :6])
    np.testing.assert_allclose(np.asarray(suffix), np.asarray(full[:, 6:]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg_scale, threshold", [(0.0, None), (2.0, None), (0.0, 1.0)])
def test_kv_cache_is_exact_with_one_step_per_block(cfg_scale, threshold):
    """Each block's first step is a full forward, so with one step per block the cache changes nothing."""
    kw = dict(gen_length=12, steps=3, block_length=4, temperature=0.6, cfg_scale=cfg_scale)
    if threshold is not None:  # threshold 1.0 reveals one token per pass: compare against one step per token
        kw.update(steps=12, threshold=threshold)
    plain, _, p_plain = run([5, 9, 2, 30], key=jax.random.key(3), **kw)
    kw_cache = dict(kw, steps=3) if threshold is None else kw
    cached, _, p_cached = run([5, 9, 2, 30], key=jax.random.key(3), kv_cache=True, **kw_cache)
    if threshold is None:
        np.testing.assert_array_equal(cached, plain)
        assert p_cached == p_plain == 3
    else:
        assert MASK not in cached and p_cached == p_plain == 12


def test_kv_cache_with_several_steps_per_block_completes_on_schedule():
    prompt = [5, 9, 2, 30]
    plain, plain_trace, _ = run(prompt, gen_length=12, steps=12, block_length=4)
    cached, trace, passes = run(prompt, gen_length=12, steps=12, block_length=4, kv_cache=True)
    assert passes == 12 and MASK not in cached
    np.testing.assert_array_equal(np.sort(trace[4:]), np.arange(12))  # one reveal per step, as scheduled
    # the first step of each block is exact: the token it reveals matches the uncached decoder
    assert cached[4:][trace[4:] == 0] == plain[4:][plain_trace[4:] == 0]
