"""The jitted reverse process against a plain NumPy transcription of the official generate.py, fed the same
noise; the reveal schedule; CFG; threshold decoding; the prefix KV cache; EOS early stop; padding; sharding;
the trace PNG; the sample CLI and its one-line errors."""
import re
import struct
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax import sharding
from llada_jax.inference import sampling
from llada_jax.inference import trace_plot
from llada_jax.models import registry as M
from llada_jax.cli import main
from llada_jax.config import ConfigError, ModelConfig

from helpers import params_export

CFG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, mlp_hidden=48,
                  dtype="float32", init_std=0.3)
MASK = 47
GRAPHDEF = M.split_model(M.abstract_model(CFG))[0]
PARAMS = M.init_params(CFG, 3)
_LOGITS = jax.jit(lambda x: M.apply(GRAPHDEF, PARAMS, x))


def model_logits(x):
    return np.asarray(_LOGITS(jnp.asarray(x, jnp.int32)), np.float64)


def reference_generate(prompt, gen_length, steps, block_length, temperature, cfg_scale, remasking, key,
                       logits_fn=None, mask=MASK):
    """generate.py in NumPy (float64), drawing its noise from the same JAX keys as the jitted decoder. As in the
    decoder the mask id is left out of the argmax only: the confidence is the official full-softmax probability.
    The uniforms are float64 under x64 and float32 otherwise, as the decoder's."""
    logits_fn = logits_fn or model_logits
    noise_dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    p = len(prompt)
    x = np.array([list(prompt) + [mask] * gen_length])
    prompt_index = np.arange(x.shape[1])[None] < p
    n_blocks = gen_length // block_length
    spb = steps // n_blocks
    for blk in range(n_blocks):
        m = int((x[0, p + blk * block_length:p + (blk + 1) * block_length] == mask).sum())
        schedule = [m // spb + (1 if i < m % spb else 0) for i in range(spb)]
        for i in range(spb):
            key, k_noise, k_conf = jax.random.split(key, 3)
            logits = logits_fn(x)
            if cfg_scale > 0:
                un = logits_fn(np.where(prompt_index, mask, x))
                logits = un + (cfg_scale + 1) * (logits - un)
            if temperature == 0:
                scores = logits.copy()
            else:
                u = np.asarray(jax.random.uniform(k_noise, logits.shape, noise_dtype,
                                                  minval=np.finfo(noise_dtype).tiny, maxval=1.0), np.float64)
                scores = np.exp(logits) / (-np.log(u)) ** temperature
            scores[..., mask] = -np.inf  # the decoder never predicts the mask id itself
            x0 = scores.argmax(-1)
            if remasking == "low_confidence":
                probs = np.exp(logits - logits.max(-1, keepdims=True))  # the full softmax, mask id included
                probs /= probs.sum(-1, keepdims=True)
                conf = np.take_along_axis(probs, x0[..., None], -1)[..., 0]
            else:
                conf = np.asarray(jax.random.uniform(k_conf, x0.shape, noise_dtype), np.float64)
            conf[:, p + (blk + 1) * block_length:] = -np.inf
            mask_index = x == mask
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
    (0.0, "low_confidence", 0.0),  # greedy
    (0.9, "random", 0.0),  # fixed Gumbel noise and random confidences
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


def test_decoder_equals_numpy_reference_in_float64():
    """With jax_enable_x64 the Gumbel noise and the confidence softmax run in float64, as in generate.py."""
    with jax.enable_x64(True):
        kw = dict(gen_length=8, steps=4, block_length=4, temperature=0.8, cfg_scale=0.0, remasking="low_confidence")
        got, _, _ = run([5, 9, 2], key=jax.random.key(11), **kw)
        want = reference_generate([5, 9, 2], key=jax.random.key(11), **kw)
    np.testing.assert_array_equal(got, want)


GQA_CFG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_hidden=48,
                      dtype="float32", init_std=1.0)
GQA_GRAPHDEF = M.split_model(M.abstract_model(GQA_CFG))[0]
GQA_PARAMS = M.init_params(GQA_CFG, 5)
GQA_PARAMS["ff_out"] = GQA_PARAMS["ff_out"].at[:, MASK].multiply(3.0)  # the mask id's probability: 1e-13 .. 0.999


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_gqa_model_with_varied_outputs_equals_numpy_reference(temperature):
    """Grouped-query attention, a large init std and a strong mask-id output: the mask id holds a varying share
    of the softmax (from ~0 to ~1), so a confidence renormalised without it reorders the reveals (10 of 21
    tokens differed before the fix); the official code takes the full softmax."""
    logits_fn = jax.jit(lambda x: M.apply(GQA_GRAPHDEF, GQA_PARAMS, x))
    kw = dict(gen_length=16, steps=16, block_length=8, temperature=temperature, cfg_scale=0.0,
              remasking="low_confidence")
    ids, valid = sampling.left_pad([[5, 9, 2, 30, 17]], 0)
    got, _, _ = sampling.generate(GQA_GRAPHDEF, GQA_PARAMS, ids, valid, jax.random.key(2), mask_id=MASK, **kw)
    want = reference_generate([5, 9, 2, 30, 17], key=jax.random.key(2),
                              logits_fn=lambda x: np.asarray(logits_fn(jnp.asarray(x, jnp.int32)), np.float64), **kw)
    np.testing.assert_array_equal(np.asarray(got[0]), want)


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
    for blk in range(3):  # a block's positions are revealed during that block's steps only
        assert set(trace[p + blk * bl:p + (blk + 1) * bl]) == {3 * blk, 3 * blk + 1, 3 * blk + 2}


def test_threshold_one_equals_one_token_per_step_baseline():
    """No softmax probability exceeds 1.0, so threshold decoding reveals only the forced top-1 per step. The
    matching baseline is therefore the official schedule with one token per step (steps == gen_length), not
    the default steps: a baseline revealing 2 tokens per step would differ by construction."""
    prompt = [4, 8, 15]
    base, base_trace, base_passes = run(prompt, gen_length=8, steps=8, block_length=4)
    thr, thr_trace, thr_passes = run(prompt, gen_length=8, steps=8, block_length=4, threshold=1.0)
    np.testing.assert_array_equal(thr, base)
    np.testing.assert_array_equal(thr_trace, base_trace)
    assert thr_passes == base_passes == 8


def test_low_threshold_uses_fewer_forward_passes():
    out, trace, passes = run([4, 8, 15], gen_length=8, steps=8, block_length=4, threshold=0.0)
    assert passes == 2 and MASK not in out  # every masked token of a block clears 0.0: one pass per block
    np.testing.assert_array_equal(trace[3:], [0, 0, 0, 0, 1, 1, 1, 1])


def test_padded_batch_equals_prompts_alone():
    """Left padding is its own attention segment and positions restart at the first real token."""
    prompts = [[5, 9, 2, 30, 11, 7], [3, 4]]
    ids, valid = sampling.left_pad(prompts, 0)
    out, _, _ = sampling.generate(GRAPHDEF, PARAMS, ids, valid, jax.random.key(0), gen_length=8, steps=8,
                                  block_length=4, mask_id=MASK)
    for row, prompt in zip(np.asarray(out), prompts):
        alone, _, _ = run(prompt, gen_length=8, steps=8, block_length=4)
        np.testing.assert_array_equal(row[ids.shape[1]:], alone[len(prompt):])


def test_eos_stops_early_without_changing_the_cropped_answer():
    prompt, kw = [5, 9, 2, 30], dict(gen_length=12, steps=6, block_length=4)
    full, full_trace, full_passes = run(prompt, **kw)
    eos = int(full[4 + 1])  # pretend the token at answer position 1 (first block) is EOS
    out, trace, passes = run(prompt, eos_id=eos, **kw)
    assert full_passes == 6 and passes == 2  # one block of two steps instead of three blocks
    np.testing.assert_array_equal(out[:8], full[:8])
    assert np.all(out[8:] == MASK) and np.all(trace[8:] == -1)
    assert sampling.crop_at_eos(out[4:], eos) == sampling.crop_at_eos(full[4:], eos)


@pytest.mark.parametrize("kw", [dict(temperature=0.5, cfg_scale=1.0), dict(threshold=0.3, cache="prefix"),
                                dict(factor=1.0, cache="dual")])
def test_sharded_inference_gives_the_same_tokens(kw):
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
    _, abstract, names = M.split_model(M.abstract_model(CFG))
    sharded = jax.device_put(PARAMS, sharding.tree_shardings(mesh, names, abstract))
    assert len(sharded["blocks"]["q_proj"].sharding.device_set) == 8
    ids, valid = sampling.left_pad([[5, 9, 2, 30], [7, 1]] * 2, 0)
    common = dict(gen_length=8, steps=4, block_length=4, mask_id=MASK, **kw)
    with jax.set_mesh(mesh):
        out8, _, _ = sampling.generate(GRAPHDEF, sharded, ids, valid, jax.random.key(1), **common)
    out1, _, _ = sampling.generate(GRAPHDEF, PARAMS, ids, valid, jax.random.key(1), **common)
    np.testing.assert_array_equal(np.asarray(out8), np.asarray(out1))


def test_crop_at_eos():
    assert sampling.crop_at_eos([5, 6, 1, 7, 1], 1) == [5, 6] and sampling.crop_at_eos([5, 6], 1) == [5, 6]


@pytest.mark.parametrize("kw, fragment", [
    (dict(gen_length=10, block_length=4, steps=4), "gen_length=10 is not a multiple of block_length=4"),
    (dict(gen_length=8, block_length=4, steps=3), "steps=3 does not split over 2 blocks"),
    (dict(gen_length=8, block_length=4, steps=4, remasking="top"), "remasking='top' is unknown"),
    (dict(gen_length=8, block_length=4, steps=4, temperature=-1.0), "must be >= 0"),
])
def test_generate_rejects_bad_options(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        run([1, 2], **kw)


# --- the prefix and dual caches -----------------------------------------------------------------------------

@pytest.mark.parametrize("start, width", [(6, 4), (3, 7), (0, 10)])
def test_window_against_a_fresh_cache_equals_the_full_forward(start, width):
    """Logits of a window recomputed against keys/values cached from a full forward of the same tokens equal
    the full forward's rows, with padding in the batch; asking for the keys/values leaves the logits unchanged."""
    tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, 47)
    seg = jnp.ones_like(tokens).at[0, :2].set(0)  # row 0 has two padding tokens
    pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
    full, kv = jax.jit(lambda t: M.apply(GRAPHDEF, PARAMS, t, pos, seg, return_kv=True))(tokens)
    assert kv[0].shape == (2, 2, 10, 4, 8)  # [layers, batch, length, kv heads, head dim]
    np.testing.assert_allclose(np.asarray(full), np.asarray(jax.jit(M.apply, static_argnums=0)(
        GRAPHDEF, PARAMS, tokens, pos, seg)), rtol=1e-5, atol=1e-5)
    cut = lambda a, s: jax.lax.dynamic_slice_in_dim(a, s, width, axis=1)  # noqa: E731
    window = jax.jit(lambda t, kv, s: M.apply(GRAPHDEF, PARAMS, cut(t, s), cut(pos, s), cut(seg, s), cache_kv=kv,
                                              cache_segment_ids=seg, window_start=s))(tokens, kv, jnp.int32(start))
    np.testing.assert_allclose(np.asarray(window), np.asarray(full[:, start:start + width]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_caches_are_exact_with_one_step_per_block(cache, cfg_scale):
    """Each block's first step is a full forward, so with one step per block a cache changes nothing."""
    kw = dict(gen_length=8, steps=2, block_length=4, temperature=0.6, cfg_scale=cfg_scale)
    plain, _, p_plain = run([5, 9, 2, 30], key=jax.random.key(3), **kw)
    cached, _, p_cached = run([5, 9, 2, 30], key=jax.random.key(3), cache=cache, **kw)
    np.testing.assert_array_equal(cached, plain)
    assert p_cached == p_plain == 2


def cached_reference(prompt, cache, gen_length, steps, block_length):
    """Greedy decoding where every step after a block's first sees keys/values frozen at that first step,
    except inside the recomputed window: built from the model's own window API, one step at a time in Python."""
    full_fn = jax.jit(lambda t: M.apply(GRAPHDEF, PARAMS, t, return_kv=True))
    p, spb = len(prompt), steps // (gen_length // block_length)
    x = np.array([list(prompt) + [MASK] * gen_length])
    for blk in range(gen_length // block_length):
        start = p if cache == "prefix" else p + blk * block_length
        stop = p + gen_length if cache == "prefix" else p + (blk + 1) * block_length
        kv = None
        m = int((x[0, p + blk * block_length:p + (blk + 1) * block_length] == MASK).sum())
        for i in range(spb):
            if kv is None:
                logits, kv = full_fn(jnp.asarray(x))
                logits, lo = np.asarray(logits, np.float64), 0
            else:
                pos = jnp.arange(start, stop)[None]
                logits = np.asarray(M.apply(GRAPHDEF, PARAMS, jnp.asarray(x[:, start:stop]), pos, cache_kv=kv,
                                            window_start=start), np.float64)
                lo = start
            want = [m // spb + (1 if j < m % spb else 0) for j in range(spb)][i]
            probs = np.exp(logits - logits.max(-1, keepdims=True))  # the full softmax
            logits[..., MASK] = -np.inf
            pred = logits.argmax(-1)[0]
            conf = np.take_along_axis(probs / probs.sum(-1, keepdims=True), pred[None, :, None], -1)[0, :, 0]
            cols = lo + np.arange(logits.shape[1])
            conf = np.where((x[0, cols] == MASK) & (cols < p + (blk + 1) * block_length), conf, -np.inf)
            chosen = cols[np.argsort(-conf, kind="stable")[:want]]
            x[0, chosen] = pred[chosen - lo]
    return x[0]


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_with_several_steps_per_block_equal_a_step_by_step_reference(cache):
    """Stale keys/values are the caches' approximation: the jitted loop must reproduce it exactly."""
    kw = dict(gen_length=12, steps=12, block_length=4)
    got, trace, passes = run([5, 9, 2, 30], cache=cache, **kw)
    np.testing.assert_array_equal(got, cached_reference([5, 9, 2, 30], cache, **kw))
    assert passes == 12 and np.array_equal(np.sort(trace[4:]), np.arange(12))  # one reveal per step


def test_dual_cache_stops_at_eos_and_pads_batches_of_different_prompt_lengths():
    prompts, kw = [[5, 9, 2, 30, 11, 7], [3, 4]], dict(gen_length=8, steps=4, block_length=4, cache="dual")
    ids, valid = sampling.left_pad(prompts, 0)
    out, _, passes = sampling.generate(GRAPHDEF, PARAMS, ids, valid, jax.random.key(0), mask_id=MASK, **kw)
    for row, prompt in zip(np.asarray(out), prompts):
        np.testing.assert_array_equal(row[ids.shape[1]:], run(prompt, **kw)[0][len(prompt):])
    alone, trace, _ = run([5, 9, 2, 30], **kw)
    eos = int(alone[4:8][trace[4:8] == 0][0])  # revealed at the first (full) step of block 0
    stopped, _, stopped_passes = run([5, 9, 2, 30], eos_id=eos, **kw)
    assert stopped_passes == 2 and np.all(stopped[8:] == MASK)
    np.testing.assert_array_equal(stopped[:8], alone[:8])


# --- the trace PNG ---------------------------------------------------------------------------------------------

def _read_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)
    idat = data.index(b"IDAT")
    size = struct.unpack(">I", data[idat - 4:idat])[0]
    raw = np.frombuffer(zlib.decompress(data[idat + 4:idat + 4 + size]), np.uint8).reshape(height, 1 + 3 * width)
    assert np.all(raw[:, 0] == 0)
    return raw[:, 1:].reshape(height, width, 3)


def test_trace_png_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError: the zlib fallback
    trace = np.array([[0, 1, 2, -1], [3, 3, -1, -1]])
    legend = trace_plot.save(trace, str(tmp_path / "t.png"), block_length=2)
    assert "grey = never revealed" in legend and "pip install matplotlib" in legend  # the axes it lacks, in words
    image = _read_png((tmp_path / "t.png").read_bytes())
    np.testing.assert_array_equal(image, trace_plot.grid_image(trace, 2))
    assert image.shape == (16, 32, 3) and tuple(image[12, 30]) == (220, 220, 220)  # unrevealed: grey


# --- the CLI ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return params_export(tmp_path_factory.mktemp("export"))


def test_sample_cli(export, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("x\n\n")
    common = [f"--checkpoint={export}", "--prompt=def f(", f"--prompt-file={prompts}", "--gen-length=8",
              "--steps=2", "--block-length=4", "--no-early-stop", "--temperature=0.5"]
    assert main(["sample", *common, f"--trace={tmp_path / 'trace.png'}"]) == 0
    out = capsys.readouterr().out
    assert "=== def f(" in out and "=== x" in out and "(2 forward passes for 2 x 8 tokens, " in out
    assert (tmp_path / "trace.png").read_bytes()[:4] == b"\x89PNG"
    # the default mesh puts fsdp over the 8 simulated devices; fsdp=4 x tensor=2 decodes the same text, also
    # with the dual KV cache (exact here: one step per block); only the timing in the passes line may differ
    assert main(["sample", *common, "--cache=dual", "--config.mesh.fsdp=4", "--config.mesh.tensor=2"]) == 0
    untimed = lambda text: re.sub(r", [0-9.]+ s with the compilation", "", text)  # noqa: E731
    assert untimed(capsys.readouterr().out) == untimed(out.split("reveal trace")[0])


@pytest.mark.parametrize("args, fragment", [
    (["--gen-length=10", "--block-length=4"], "--gen-length=10 is not a multiple of --block-length=4"),
    (["--gen-length=16", "--block-length=4", "--steps=6"], "--steps=6 does not split over 4 blocks"),
    (["--gen-length=64", "--block-length=64", "--steps=64"], "exceeds the model's max_seq_len=64"),
    (["--temperature=-1"], "--temperature and --cfg-scale must be >= 0"),
    (["--prompt-file=/nonexistent/prompts.txt"], "--prompt-file=/nonexistent/prompts.txt does not exist"),
    (["--config.model.d_model=64"], "only --config.mesh.* overrides are accepted"),
])
def test_sample_cli_bad_arguments(export, capsys, args, fragment):
    assert main(["sample", f"--checkpoint={export}", "--prompt=abc", *args]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_sample_cli_missing_checkpoint_or_prompt(export, tmp_path, capsys):
    assert main(["sample", f"--checkpoint={tmp_path}", "--prompt=a"]) == 2
    assert "holds no 'params' checkpoint" in capsys.readouterr().err
    assert main(["sample", f"--checkpoint={export}"]) == 2
    assert "no prompt given" in capsys.readouterr().err
