"""The block-diffusion ELBO: per-row values against one forward pass per block written here (the sequence cut at
the block's end, that block noised), the per-block mask counts, the Monte Carlo mean against the bound computed
by enumeration, block size >= the sequence giving the full-sequence scorer's values, and `score` on a
block-diffusion checkpoint."""
import dataclasses
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.checkpoints import params_export
from llada_jax.cli import main
from llada_jax.config import ConfigError, ModelConfig
from llada_jax.inference import block_likelihood, likelihood
from llada_jax.models import registry as M

from helpers import small_config

CFG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, mlp_hidden=48,
                  dtype="float32", init_std=0.3)
MASK = 47
GRAPHDEF = M.graphdef(CFG)
SHIFTED = M.graphdef(dataclasses.replace(CFG, logit_shift=True))  # the same params, read one position earlier
PARAMS = M.init_params(CFG, 3)
BLOCK = 2
PROMPT, ANSWER = [5, 9, 14], [2, 30, 11, 7]  # answer positions 3 | 4 5 | 6: blocks 1 (shared with the prompt), 2, 3


@jax.jit
def block_causal_log_probs(tokens):
    rank = jnp.arange(tokens.shape[1])[None] // BLOCK
    logits = M.apply(GRAPHDEF, PARAMS, tokens, visibility=(rank, rank, jnp.full_like(rank, 2 ** 30)))
    return jax.nn.log_softmax(logits.astype(jnp.float64) if jax.config.jax_enable_x64 else logits, axis=-1)


def block_term(seq, block, subset, shift=False):
    """Sum of the CE at `subset` (positions of `block`) with that block noised and the sequence cut at its end:
    the block denoised given the clean blocks before it, in one stream (`shift`: position i read at i - 1, where
    the previous block's last position sees only clean tokens)."""
    end = min((block + 1) * BLOCK, len(seq))
    x = np.array(seq[:end])
    x[list(subset)] = MASK
    log_probs = np.asarray(block_causal_log_probs(jnp.asarray(x[None], jnp.int32)), np.float64)[0]
    return -sum(log_probs[i - shift, seq[i]] for i in subset)


def answer_blocks(prompt, answer):
    """{block: its answer positions}."""
    positions = range(len(prompt), len(prompt) + len(answer))
    return {b: [i for i in positions if i // BLOCK == b] for b in sorted({i // BLOCK for i in positions})}


def reference_value(seq, prompt, answer, masked_row, shift=False):
    """One row's estimate: sum over blocks of (n_b / l_b) * the masked CE of block b."""
    total = 0.0
    for block, positions in answer_blocks(prompt, answer).items():
        subset = [i for i in positions if masked_row[i]]
        total += len(positions) / len(subset) * block_term(seq, block, subset, shift)
    return total


def exact_bound():
    """sum_b (1 / n_b) sum_l E over l-subsets S of block b of (n_b / l) * CE(S): the bound, enumerated."""
    seq, total = PROMPT + ANSWER, 0.0
    for block, positions in answer_blocks(PROMPT, ANSWER).items():
        n = len(positions)
        for size in range(1, n + 1):
            subsets = list(itertools.combinations(positions, size))
            total += np.mean([n / size * block_term(seq, block, s) for s in subsets]) / n
    return total


@pytest.mark.parametrize("shift", [False, True])
def test_row_values_equal_one_pass_per_block(shift):
    seq = PROMPT + ANSWER
    total = 16  # padded, as the scorer pads to a bucket
    masks = np.asarray(likelihood.sample_masks(jax.random.key(4), 6, total, len(PROMPT), len(ANSWER),
                                               block_size=BLOCK))
    rows = np.zeros((6, total), np.int32)
    rows[:, :len(seq)] = seq
    got = np.asarray(block_likelihood.block_rows_nll(
        SHIFTED if shift else GRAPHDEF, PARAMS, jnp.asarray(rows), jnp.asarray(masks), jnp.full((6,), 3),
        jnp.full((6,), 4), window=4, mask_id=MASK, block_size=BLOCK))
    want = [reference_value(seq, PROMPT, ANSWER, m, shift) for m in masks]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_block_masks_draw_a_stratified_count_in_every_answer_block():
    for seed in range(20):
        masks = np.asarray(likelihood.sample_masks(jax.random.key(seed), 4, 16, 3, 4, block_size=BLOCK))
        assert not masks[:, :3].any() and not masks[:, 7:].any()
        for positions in answer_blocks(PROMPT, ANSWER).values():
            counts = masks[:, positions].sum(1)
            assert np.all(counts >= 1) and np.all(counts <= len(positions))
            if len(positions) == 2:  # stratified: 4 samples over l in {1, 2} take each twice
                assert sorted(counts) == [1, 1, 2, 2]


def test_monte_carlo_mean_matches_the_enumerated_bound():
    exact = exact_bound()
    estimate, stderr = likelihood.log_likelihood(GRAPHDEF, PARAMS, PROMPT, ANSWER, jax.random.key(1), mask_id=MASK,
                                                 mc_num=512, batch_size=4, block_size=BLOCK)
    assert abs(-estimate - exact) < 4 * stderr and stderr < 0.05 * exact, (estimate, exact, stderr)


def test_one_block_over_the_whole_sequence_is_the_full_sequence_scorer():
    """With one block there are no earlier clean blocks: the noisy stream is the full-sequence model's input."""
    seq = PROMPT + ANSWER
    masks = np.asarray(likelihood.sample_masks(jax.random.key(2), 4, 8, 3, 4, block_size=8))
    rows = jnp.asarray(np.tile(seq + [0], (4, 1)), jnp.int32)
    args = (GRAPHDEF, PARAMS, rows, jnp.asarray(masks), jnp.full((4,), 3), jnp.full((4,), 4))
    block = block_likelihood.block_rows_nll(*args, window=4, mask_id=MASK, block_size=8)
    full = likelihood.rows_nll(*args, window=4, mask_id=MASK)
    np.testing.assert_allclose(np.asarray(block), np.asarray(full), rtol=1e-5)


def test_guidance_is_refused_for_a_block_diffusion_model():
    with pytest.raises(ConfigError, match="classifier-free guidance is not built for block-diffusion models"):
        likelihood.log_likelihood(GRAPHDEF, PARAMS, PROMPT, ANSWER, jax.random.key(0), mask_id=MASK, cfg_scale=1.0,
                                  block_size=BLOCK)


@pytest.fixture(scope="module")
def block_export(tmp_path_factory):
    config = small_config("train.objective=block_diffusion", "train.block_size=4")
    folder = tmp_path_factory.mktemp("bd") / "params"
    params_export.save_params(folder, M.init_params(ModelConfig.from_config(config.model), 0), config)
    return folder


def test_score_and_sample_a_block_diffusion_checkpoint(block_export, tmp_path, capsys):
    (tmp_path / "items.jsonl").write_text(json.dumps({"prompt": "sort 31=", "choices": ["13", "31"], "label": 0}))
    assert main(["score", f"--checkpoint={block_export}", f"--input={tmp_path / 'items.jsonl'}",
                 "--mc-num=8", "--batch-size=4"]) == 0
    out, err = capsys.readouterr()
    record = json.loads(out.splitlines()[0])
    assert "block-diffusion ELBO with block 4" in err and all(math.isfinite(v) for v in record["log_likelihood"])
    assert main(["sample", f"--checkpoint={block_export}", "--prompt=sort 531=", "--prompt=ab",
                 "--gen-length=6", "--steps=6"]) == 0
    out, err = capsys.readouterr()
    assert "decoding block by block (block 4) with an exact cache" in err and out.count("=== ") == 2
    assert main(["sample", f"--checkpoint={block_export}", "--prompt=ab", "--cache=dual", "--gen-length=8",
                 "--steps=8"]) == 2
    err = capsys.readouterr().err
    assert "--cache=dual does not apply to a block-diffusion model; use one of auto, exact, none" in err


def test_harness_model_decodes_and_scores_a_block_diffusion_checkpoint(block_export, capsys):
    pytest.importorskip("lm_eval")
    from types import SimpleNamespace

    from llada_jax.eval import requests as req_lib
    from llada_jax.eval.harness_model import LladaJaxLM

    lm = LladaJaxLM(str(block_export), gen_length="6", steps="6", block_length="6", gen_batch_size="8",
                    mc_num="8", mc_batch_size="4")
    prompts = ["sort 531=", "ab"]
    got = lm.generate_until([SimpleNamespace(args=(p, {"until": []})) for p in prompts])
    assert main(["sample", f"--checkpoint={block_export}", *[f"--prompt={p}" for p in prompts], "--gen-length=6",
                 "--steps=6"]) == 0
    text = capsys.readouterr().out
    for prompt, answer in zip(prompts, got):
        assert answer == text.split(f"=== {prompt}\n", 1)[1].split("\n=== ")[0].split("\n(")[0]
    scored = lm.loglikelihood([SimpleNamespace(args=("sort 31=", "13"))])
    pair = req_lib.encode_pair(lm.vocab, "sort 31=", "13")
    keys = req_lib.request_keys(["sort 31="], 0)
    options = dict(mask_id=lm.mask_id, mc_num=8, batch_size=4)
    block = likelihood.batched_log_likelihoods(lm.graphdef, lm.params, [pair], keys, block_size=4, **options)
    full = likelihood.batched_log_likelihoods(lm.graphdef, lm.params, [pair], keys, **options)
    assert scored[0][0] == pytest.approx(block[0][0], abs=1e-6) and abs(block[0][0] - full[0][0]) > 1e-4
