"""The chunked output head + cross entropy gives today's dense-logits losses, accuracies and gradients for
every objective, without a [batch, length, vocab] array in either direction."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import all_avals
from llada_jax.objectives import losses, masking
from llada_jax.models import head_loss, output_head
from llada_jax.models import registry as M
from llada_jax.config import ModelConfig

CFG = ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_hidden=48,
                  dtype="float32", rope_theta=10000.0, loss_chunk_tokens=15)  # 3 rows x 13: chunks of 5, 5, 3 positions
B, T = 3, 13


@pytest.fixture(scope="module")
def setup():
    params = M.init_params(CFG, 0)
    k1, k2 = jax.random.split(jax.random.key(3))
    tokens = jax.random.randint(k1, (B, T), 0, 90)
    noisy, masked, p = masking.forward_process(k2, tokens, 95, 1e-3)
    return params, tokens, noisy, masked, p


def objectives(tokens, masked, p):
    lengths = jnp.asarray([T, 9, 4])
    valid = jnp.arange(T)[None] < lengths[:, None]
    response = valid & (jnp.arange(T)[None] >= 3)
    mean = lambda total, weight, aux: (losses.mean_loss(total, weight), aux)  # noqa: E731
    return {
        "mdm": lambda out: mean(*losses.pretrain_loss(out, tokens, masked & valid, p, lengths)),
        "sft": lambda out: mean(*losses.sft_loss(out, tokens, masked & response, p, response)),
        "ar": lambda out: mean(*losses.ar_loss(out, tokens, valid)),
    }


@pytest.mark.parametrize("objective", ["mdm", "sft", "ar"])
def test_chunked_loss_accuracy_and_gradients_equal_dense(setup, objective):
    params, tokens, noisy, masked, p = setup
    cfg = dataclasses.replace(CFG, causal=objective == "ar")
    graphdef = M.split_model(M.abstract_model(cfg))[0]
    loss_of = objectives(tokens, masked, p)[objective]
    inputs = tokens if objective == "ar" else noisy

    dense = jax.value_and_grad(lambda q: loss_of(M.apply(graphdef, q, inputs)), has_aux=True)
    chunked = jax.value_and_grad(lambda q: loss_of(M.apply_head(graphdef, q, inputs)), has_aux=True)
    (want, want_aux), want_grads = jax.jit(dense)(params)
    (got, got_aux), got_grads = jax.jit(chunked)(params)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for name in want_aux:
        np.testing.assert_allclose(got_aux[name], want_aux[name], rtol=1e-6)
    assert float(got_aux["masked_tokens"]) > 0
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-7), got_grads, want_grads)


def test_token_scores_match_numpy_log_softmax():
    h = jax.random.normal(jax.random.key(0), (2, 7, 16))
    w = jax.random.normal(jax.random.key(1), (16, 30))
    y = jax.random.randint(jax.random.key(2), (2, 7), 0, 30)
    logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    want_ce = -np.take_along_axis(logp, np.asarray(y)[..., None], -1)[..., 0]
    weights = jax.random.uniform(jax.random.key(4), (2, 7))
    total, got = head_loss.weighted_ce(output_head.HeadOutput(h, w, chunk_tokens=6), y, weights)  # chunks of 3
    np.testing.assert_allclose(got.ce, want_ce, rtol=1e-5)
    np.testing.assert_array_equal(got.correct, logits.argmax(-1) == np.asarray(y))
    np.testing.assert_allclose(total, np.sum(want_ce * np.asarray(weights)), rtol=1e-5)


def head_matmuls(jaxpr, vocab: int) -> int:
    """dot_generals with a vocabulary-sized operand or result, nested jaxprs included."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes = [v.aval.shape for v in list(eqn.invars) + list(eqn.outvars)]
            count += any(vocab in shape for shape in shapes)
        for sub in jax.core.jaxprs_in_params(eqn.params):
            count += head_matmuls(sub, vocab)
    return count


def test_the_training_head_costs_three_matmuls_not_four(setup):
    """Logits, d(hidden) and d(weight), each once: the backward pass recomputes no logits (issue 25's head)."""
    params, tokens, noisy, masked, p = setup
    graphdef = M.split_model(M.abstract_model(CFG))[0]
    loss = lambda q: losses.pretrain_loss(M.apply_head(graphdef, q, noisy), tokens, masked, p)[0]  # noqa: E731
    assert head_matmuls(jax.make_jaxpr(jax.grad(loss))(params).jaxpr, CFG.vocab_size) == 3
    assert head_matmuls(jax.make_jaxpr(loss)(params).jaxpr, CFG.vocab_size) == 1  # eval: the loss alone


def test_gradient_pass_never_holds_full_logits(setup):
    params, tokens, noisy, masked, p = setup
    graphdef = M.split_model(M.abstract_model(CFG))[0]
    loss = lambda q: losses.pretrain_loss(M.apply_head(graphdef, q, noisy), tokens, masked, p)[0]  # noqa: E731
    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    shapes = {tuple(a.shape) for a in all_avals(jaxpr) if hasattr(a, "shape")}
    assert (B, T, CFG.vocab_size) not in shapes and (B, 15, CFG.vocab_size) not in shapes
    assert (B, 5, CFG.vocab_size) in shapes  # one chunk at a time
