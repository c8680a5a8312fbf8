"""Per-step reveal rules (full-softmax confidence, threshold, Fast-dLLM factor) against plain Python; the
parallel modes through `generate`; serving params cast once; the CLI's compilation cache."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.utils import compile_cache
from llada_jax.inference import sampling
from llada_jax.inference import sampling_rules
from llada_jax.inference import serving_params
from llada_jax.models import registry as M
from llada_jax.config import ConfigError, ModelConfig

from helpers import ROOT, params_export, xla_flags

NEG = -np.inf


def factor_count_by_hand(row, factor):
    """Fast-dLLM's rule read literally: walk the sorted confidences while c_i >= 1 - factor / (i + 1)."""
    ordered = sorted((c for c in row if np.isfinite(c)), reverse=True)
    n = 0
    for i, c in enumerate(ordered, start=1):
        if c < 1 - factor / (i + 1):
            break
        n = i
    return min(max(n, 1), len(ordered))


def test_factor_count_matches_a_literal_reading():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.3, 1.0, (64, 9)) ** 0.3
    conf[rng.uniform(size=conf.shape) < 0.3] = NEG  # not candidates
    for factor in (0.5, 1.0, 2.0):
        got = np.asarray(sampling_rules.factor_count(jnp.asarray(conf), factor))
        np.testing.assert_array_equal(got, [factor_count_by_hand(r, factor) for r in conf])


def test_threshold_and_factor_reveal_at_least_one_and_only_candidates():
    conf = jnp.asarray([[0.95, 0.5, NEG, 0.91], [0.2, 0.1, NEG, NEG], [NEG, NEG, NEG, NEG]])
    np.testing.assert_array_equal(sampling_rules.reveal_mask(conf, None, threshold=0.9, factor=None),
                                  [[1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    # factor 1: thresholds 1 - 1/2, 1 - 1/3, ... -> 0.95 >= 0.5 and 0.91 >= 0.667 pass, 0.5 < 0.75 stops
    np.testing.assert_array_equal(sampling_rules.reveal_mask(conf, None, threshold=None, factor=1.0),
                                  [[1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_confidence_is_the_full_softmax_and_the_mask_is_never_predicted():
    logits = jnp.asarray([[[2.0, 0.5, 3.0, -1.0]]])  # id 2 (the "mask") is the largest
    pred = sampling_rules.predict(logits, None, 0.0, mask_id=2)
    conf = sampling_rules.confidence(logits, pred, None, "low_confidence")
    e = np.exp([2.0, 0.5, 3.0, -1.0])
    assert int(pred[0, 0]) == 0 and np.isclose(float(conf[0, 0]), e[0] / e.sum(), rtol=1e-6)


CFG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_hidden=48,
                  dtype="float32", init_std=0.3)
GRAPHDEF, PARAMS = M.split_model(M.abstract_model(CFG))[0], M.init_params(CFG, 1)


@pytest.mark.parametrize("rule", [dict(threshold=0.0), dict(factor=100.0), dict(threshold=1.0), dict(factor=1e-9)])
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_parallel_rules_per_row_in_one_jit(rule, cache):
    """Rules that accept every candidate finish a block per pass; rules that accept none reveal one per pass."""
    ids, valid = sampling.left_pad([[5, 9, 2], [7]], 0)
    out, trace, passes = sampling.generate(GRAPHDEF, PARAMS, ids, valid, jax.random.key(0), gen_length=8, steps=8,
                                           block_length=4, mask_id=47, cache=cache, **rule)
    greedy = rule in (dict(threshold=0.0), dict(factor=100.0))
    assert int(passes) == (2 if greedy else 8) and 47 not in np.asarray(out)
    for row in np.asarray(trace)[:, 3:]:
        assert sorted(np.bincount(row).tolist()) == ([4, 4] if greedy else [1] * 8)


def test_two_parallel_rules_are_rejected():
    with pytest.raises(ConfigError, match="give one of them"):
        sampling.generate(GRAPHDEF, PARAMS, jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), bool), jax.random.key(0),
                          gen_length=4, steps=4, block_length=4, mask_id=47, threshold=0.5, factor=1.0)
    with pytest.raises(ConfigError, match="cache='kv' is unknown"):
        sampling.generate(GRAPHDEF, PARAMS, jnp.ones((1, 2), jnp.int32), jnp.ones((1, 2), bool), jax.random.key(0),
                          gen_length=4, steps=4, block_length=4, mask_id=47, cache="kv")


def test_serving_params_cast_once_to_the_chosen_dtype():
    assert serving_params.serving_dtype("auto", "cpu") is None
    assert serving_params.serving_dtype("auto", "tpu") == jnp.bfloat16 == serving_params.serving_dtype("bfloat16")
    cast = serving_params.cast_params({"w": PARAMS["wte"], "step": jnp.int32(3)}, jnp.bfloat16)
    assert cast["w"].dtype == jnp.bfloat16 and cast["step"].dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(cast["w"], np.float32),
                                  np.asarray(PARAMS["wte"]).astype(jnp.bfloat16).astype(np.float32))
    with pytest.raises(ConfigError, match="--param-dtype=fp8 is unknown"):
        serving_params.serving_dtype("fp8")


def test_compilation_cache_directory_setting(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
    assert compile_cache.cache_dir() == os.path.expanduser("~/.cache/llada_jax/jax")
    monkeypatch.setenv(compile_cache.ENV_VAR, "off")
    assert compile_cache.cache_dir() is None and compile_cache.enable() is None
    monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "c"))
    assert compile_cache.cache_dir() == str(tmp_path / "c")


def test_sample_cli_fills_the_compilation_cache_and_reuses_its_traced_decoder(tmp_path):
    """Separate processes (the cache is process-wide): the first run compiles and stores the traced decoder, the
    second reads the trace back instead of tracing and prints the same text."""
    export = params_export(tmp_path)
    env = dict(os.environ, LLADA_JAX_COMPILATION_CACHE=str(tmp_path / "cache"), PYTHONPATH=ROOT,
               XLA_FLAGS=xla_flags(1))
    cmd = [sys.executable, "-m", "llada_jax.cli", "sample", f"--checkpoint={export}", "--prompt=ab",
           "--gen-length=8", "--steps=4", "--block-length=4", "--cache=dual", "--param-dtype=bfloat16"]
    runs = [subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300) for _ in range(2)]
    for done in runs:
        assert done.returncode == 0, done.stderr
        assert "(4 forward passes for 1 x 8 tokens, " in done.stdout
    assert "(compiling the decoder first)" in runs[0].stderr
    assert "(the traced decoder came from the cache)" in runs[1].stderr
    assert runs[0].stdout.split("(4 forward")[0] == runs[1].stdout.split("(4 forward")[0]
    assert len(os.listdir(tmp_path / "cache")) > 1
    assert len([f for f in os.listdir(tmp_path / "cache" / "exports") if f.endswith(".jaxexport")]) == 1


def test_a_stored_trace_is_found_only_for_the_same_options_shapes_and_source(tmp_path, monkeypatch):
    import functools

    import jax
    import jax.numpy as jnp

    from llada_jax.inference import export_cache

    monkeypatch.setattr(export_cache, "export_dir", lambda: str(tmp_path))
    scale = functools.partial(lambda x, k: x * k, k=3.0)
    x = jnp.arange(4.0)
    program, cached = export_cache.load_or_export("t", scale, (x,), {"k": 3.0})
    assert not cached and program.call(x).tolist() == [0.0, 3.0, 6.0, 9.0]
    assert export_cache.load_or_export("t", scale, (x,), {"k": 3.0})[1]  # the same: read back
    assert not export_cache.load_or_export("t", scale, (x,), {"k": 4.0})[1]  # another option
    assert not export_cache.load_or_export("t", scale, (jnp.arange(5.0),), {"k": 3.0})[1]  # another shape
    monkeypatch.setattr(export_cache, "source_digest", lambda: "edited")
    assert not export_cache.load_or_export("t", scale, (x,), {"k": 3.0})[1]  # llada_jax's code changed
    # a damaged entry is traced again and replaced
    path = tmp_path / (export_cache.key("t", {"k": 3.0}, (x,)) + export_cache.SUFFIX)
    path.write_bytes(b"not an export")
    program, cached = export_cache.load_or_export("t", scale, (x,), {"k": 3.0})
    assert not cached and program.call(x).tolist() == [0.0, 3.0, 6.0, 9.0]
    assert export_cache.load_or_export("t", scale, (x,), {"k": 3.0})[1]
    # what JAX will not export (a custom call without serialization guarantees) runs jitted, nothing stored
    def refuse(fn):
        raise ValueError("Cannot serialize code with custom calls whose targets have no compatibility guarantees")

    monkeypatch.setattr(jax.export, "export", refuse)
    before = sorted(os.listdir(tmp_path))
    program, cached = export_cache.load_or_export("t", scale, (x,), {"k": 5.0})
    assert not cached and program.call(x).tolist() == [0.0, 3.0, 6.0, 9.0]
    assert sorted(os.listdir(tmp_path)) == before
    # caches turned off: no stored trace either
    monkeypatch.setattr(export_cache, "export_dir", lambda: None)
    assert isinstance(export_cache.load_or_export("t", scale, (x,), {"k": 3.0})[0], export_cache.JittedProgram)
