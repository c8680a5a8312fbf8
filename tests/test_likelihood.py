"""The Monte Carlo conditional likelihood: per-sample values against NumPy, the stratified mask counts, the
exact expectation of the estimator by enumeration, the Monte Carlo mean against that exact value, and the
score CLI with its one-line errors."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.inference import likelihood
from llada_jax.models import registry as M
from llada_jax.cli import main
from llada_jax.config import ConfigError, ModelConfig

from helpers import TINY, params_export

CFG = ModelConfig(vocab_size=48, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8, mlp_hidden=48,
                  dtype="float32", init_std=0.3)
MASK = 47
GRAPHDEF = M.split_model(M.abstract_model(CFG))[0]
PARAMS = M.init_params(CFG, 3)
_LOGITS = jax.jit(lambda x: M.apply(GRAPHDEF, PARAMS, x))
PROMPT, ANSWER = [5, 9], [2, 30, 11]


def log_probs(x):
    logits = np.asarray(_LOGITS(jnp.asarray(x, jnp.int32)), np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def masked_ce_by_count(prompt, answer):
    """g(l) = E over uniform l-subsets S of (L / l) * sum_{i in S} CE_i, for l = 1..L, by enumeration."""
    big_l, seq = len(answer), np.array(prompt + answer)
    g = {}
    for n_masked in range(1, big_l + 1):
        subsets = list(itertools.combinations(range(big_l), n_masked))
        noisy = np.tile(seq, (len(subsets), 1))
        for row, subset in enumerate(subsets):
            noisy[row, [len(prompt) + i for i in subset]] = MASK
        ce = -np.take_along_axis(log_probs(noisy), np.tile(seq, (len(subsets), 1))[..., None], -1)[..., 0]
        per_subset = [ce[row, [len(prompt) + i for i in subset]].sum() for row, subset in enumerate(subsets)]
        g[n_masked] = (big_l / n_masked) * np.mean(per_subset)
    return g


def test_stratified_counts_are_uniform_per_sample_and_match_the_official_rounding_without_ties():
    for batch, big_l in [(2, 3), (3, 3), (4, 3), (5, 4), (16, 7), (4, 10)]:
        table = np.array([np.asarray(likelihood.stratified_counts(k, batch, big_l)) for k in range(1, big_l + 1)])
        for j in range(batch):  # over the uniform offset k, every sample's l is uniform on 1..L: unbiased
            assert sorted(table[:, j]) == list(range(1, big_l + 1)), (batch, big_l, j)
        official = np.array([((np.round(k + np.arange(batch) * big_l / batch) - 1) % big_l) + 1
                             for k in range(1, big_l + 1)])
        ties = np.any(np.isclose((np.arange(batch) * big_l / batch) % 1, 0.5))
        assert ties or np.array_equal(table, official), (batch, big_l)
    # where j L / B ends in .5, half-to-even rounding (the official code's) is not uniform: L=3, B=2, sample 1
    official = [int(((np.round(k + 1.5) - 1) % 3) + 1) for k in (1, 2, 3)]
    assert sorted(official) == [1, 1, 2]


@pytest.mark.parametrize("batch", [2, 3, 4])
def test_estimator_expectation_by_enumeration_equals_the_exact_bound(batch):
    """E[estimator] = mean over offsets k and samples j of g(l_j(k)); it equals sum_l g(l) / L exactly."""
    g = masked_ce_by_count(PROMPT, ANSWER)
    big_l = len(ANSWER)
    exact = sum(g.values()) / big_l
    expectation = np.mean([[g[int(l)] for l in np.asarray(likelihood.stratified_counts(k, batch, big_l))]
                           for k in range(1, big_l + 1)])
    assert expectation == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("cfg_scale, pad", [(0.0, 0), (0.0, 5), (1.5, 3)])
def test_minibatch_values_equal_numpy_for_the_same_masks(cfg_scale, pad):
    """Per-sample (L/l) * sum of masked CE, recomputed in NumPy on the unpadded sequence from the same masks."""
    seq = PROMPT + ANSWER
    padded = jnp.asarray(seq + [0] * pad, jnp.int32)
    key = jax.random.key(5)
    got = np.asarray(likelihood.minibatch_nll(GRAPHDEF, PARAMS, padded, jnp.int32(2), jnp.int32(3), key, batch=4,
                                              mask_id=MASK, cfg_scale=cfg_scale))
    masks = np.asarray(likelihood.sample_masks(key, 4, len(seq) + pad, 2, 3))[:, :len(seq)]
    assert not masks[:, :2].any() and np.all(masks.sum(1) >= 1)
    noisy = np.where(masks, MASK, np.array(seq))
    logp = log_probs(noisy)
    if cfg_scale > 0:
        un = log_probs(np.where(np.arange(len(seq)) < 2, MASK, noisy))
        logits = un + (cfg_scale + 1) * (logp - un)  # log-softmax shifts cancel inside the next log-softmax
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, np.tile(seq, (4, 1))[..., None], -1)[..., 0]
    want = (ce * masks).sum(1) * 3 / masks.sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_monte_carlo_mean_matches_the_exact_value():
    exact = sum(masked_ce_by_count(PROMPT, ANSWER).values()) / len(ANSWER)
    seq = jnp.asarray(PROMPT + ANSWER, jnp.int32)
    keys = jax.random.split(jax.random.key(0), 2000)
    samples = jax.vmap(lambda k: likelihood.minibatch_nll(GRAPHDEF, PARAMS, seq, jnp.int32(2), jnp.int32(3), k,
                                                          batch=2, mask_id=MASK))(keys)
    batch_means = np.asarray(samples).mean(1)  # mini-batches are independent; samples inside are stratified
    mean, se = batch_means.mean(), batch_means.std(ddof=1) / math.sqrt(batch_means.size)
    assert abs(mean - exact) < 4 * se and se < 0.02 * exact, (mean, exact, se)

    estimate, stderr = likelihood.log_likelihood(GRAPHDEF, PARAMS, PROMPT, ANSWER, jax.random.key(1), mask_id=MASK,
                                                 mc_num=64, batch_size=4)
    assert abs(-estimate - exact) < 5 * stderr and stderr > 0


def test_log_likelihood_rejects_an_empty_answer():
    with pytest.raises(ConfigError, match="the answer is empty"):
        likelihood.log_likelihood(GRAPHDEF, PARAMS, PROMPT, [], jax.random.key(0), mask_id=MASK)


# --- the CLI ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return params_export(tmp_path_factory.mktemp("export"))


@pytest.mark.parametrize("estimator", ["unbiased", "official"])
def test_score_cli_answers_and_multiple_choice(export, tmp_path, capsys, estimator):
    """The CLI scores items together but prints, per answer, what log_likelihood gives with the item's key."""
    import json

    from llada_jax.checkpoints import params_export as exports
    from llada_jax.data.vocab import get_vocabulary

    data = tmp_path / "mc.jsonl"
    data.write_text('{"prompt": "ab", "choices": ["cd", "efg"], "label": 1}\n\n{"prompt": "x", "answer": "yz"}\n'
                    '{"prompt": "q", "choices": ["r", "s"]}\n')
    assert main(["score", f"--checkpoint={export}", f"--input={data}", "--mc-num=8", "--batch-size=4",
                 f"--estimator={estimator}", "--rows-per-pass=4"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert "score: item 3/3" in captured.err  # progress on stderr only
    assert len(lines) == 4 and [r.get("item") for r in lines[:3]] == [1, 2, 3]
    assert len(lines[0]["log_likelihood"]) == 2 and lines[0]["pick"] in (0, 1) and "correct" in lines[0]
    assert lines[1]["log_likelihood"][0] < 0 and "pick" not in lines[1]
    assert "pick" in lines[2] and "correct" not in lines[2]
    assert lines[3] == {"accuracy": float(lines[0]["correct"]), "labelled": 1}
    graphdef, params, config = exports.load_model(str(export))
    vocab = get_vocabulary(config)
    for n, (prompt, answers) in enumerate([("ab", ["cd", "efg"]), ("x", ["yz"]), ("q", ["r", "s"])]):
        key = jax.random.fold_in(jax.random.key(0), n)
        want = [likelihood.log_likelihood(graphdef, params, vocab.encode(prompt), vocab.encode(a), key,
                                          mask_id=config.model.mask_token_id, mc_num=8, batch_size=4,
                                          estimator=estimator)[0] for a in answers]
        np.testing.assert_allclose(lines[n]["log_likelihood"], want, atol=2e-4)


@pytest.mark.parametrize("content, fragment", [
    ("", "holds no items"),
    ('{"prompt": "x"\n', "line 1 is not valid JSON"),
    ('{"question": "x", "answer": "y"}\n', 'line 1 needs a "prompt" string'),
    ('{"prompt": "x"}\n', 'line 1 needs "prompt" and either a non-empty "answer"'),
    ('{"prompt": "x", "answer": ""}\n', 'line 1 needs "prompt" and either a non-empty "answer"'),
    ('{"prompt": "x", "choices": []}\n', '"choices" that is not a non-empty list'),
    ('{"prompt": "x", "choices": ["a", "b"], "label": 2}\n', '"label": 2; give an index into "choices" (0..1)'),
    ('{"prompt": "x", "answer": "' + "y" * 70 + '"}\n', "more than the model's max_seq_len=64"),
])
def test_score_cli_bad_input(export, tmp_path, capsys, content, fragment):
    data = tmp_path / "in.jsonl"
    data.write_text(content)
    assert main(["score", f"--checkpoint={export}", f"--input={data}"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_score_cli_missing_files(export, tmp_path, capsys):
    assert main(["score", f"--checkpoint={export}", f"--input={tmp_path / 'none.jsonl'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    data = tmp_path / "ok.jsonl"
    data.write_text('{"prompt": "x", "answer": "y"}\n')
    assert main(["score", f"--checkpoint={tmp_path}", f"--input={data}"]) == 2
    assert "holds no 'params' checkpoint" in capsys.readouterr().err


def test_each_distinct_masking_of_a_request_is_scored_once():
    """128 samples of a 2-token answer hold at most 3 distinct maskings (2^L - 1); a 1-token answer one row.
    Each sample points at its own masking, so the estimate is unchanged (checked in test_eval)."""
    requests = [([1, 2], [3, 4]), ([1], [5]), ([7] * 5, [1, 2, 3, 4, 5, 6, 7, 8])]
    key_data = np.stack([np.asarray(jax.random.key_data(jax.random.key(i))) for i in range(3)])
    rows, inverses = likelihood._distinct_rows(requests, key_data, minibatches=16, batch=8, bucket=32,
                                               estimator="official")
    per_request = [sum(r == n for _, _, r, _ in rows) for n in range(3)]
    assert per_request[0] == 3 and per_request[1] == 1 and 16 < per_request[2] < 128
    for n, (first, inverse) in enumerate(inverses):
        assert inverse.shape == (128,) and set(inverse) == set(range(per_request[n]))
        assert all(rows[first + i][2] == n for i in range(per_request[n]))
    assert [rows[first][1] for first, _ in inverses] == [2, 1, 8]  # answer windows: next power of two


def test_rows_per_pass_defaults_to_the_backend_and_rounds_to_the_mesh(monkeypatch):
    """None means the backend's default (32 on CPU, where bigger passes only add padding; 256 on accelerators);
    any value is rounded up to what the mesh's batch shards divide."""
    from llada_jax import sharding
    from llada_jax.config import load_config
    from llada_jax.eval.settings import EvalSettings

    assert likelihood._rows_per_pass(None, None) == 32
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert likelihood._rows_per_pass(None, None) == likelihood.ACCELERATOR_ROWS_PER_PASS == 256
    monkeypatch.undo()
    mesh = sharding.make_mesh(load_config(TINY, ["mesh.fsdp=-1"]).mesh)  # 8 batch shards
    assert likelihood._rows_per_pass(None, mesh) == 32 and likelihood._rows_per_pass(12, mesh) == 16
    assert EvalSettings().check().rows_per_pass is None
    with pytest.raises(ConfigError, match="rows_per_pass=0 must be positive"):
        EvalSettings(rows_per_pass=0).check()
