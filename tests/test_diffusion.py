"""The forward process and the losses against hand-computed values, and the loss as an unbiased ELBO estimate."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from llada_jax.objectives import losses, masking
from llada_jax.models import registry as M
from llada_jax.config import ModelConfig


def logits_from_probs(probs):
    return jnp.log(jnp.asarray(probs, jnp.float32))


def test_pretrain_loss_hand_computed():
    # position targets 0,1,2,1; the model gives the target probabilities 0.5, 0.9, 0.25, 0.6.
    probs = [[[0.5, 0.25, 0.25], [0.05, 0.9, 0.05], [0.5, 0.25, 0.25], [0.2, 0.6, 0.2]]]
    targets = jnp.array([[0, 1, 2, 1]])
    masked = jnp.array([[True, False, True, False]])
    total, weight, aux = losses.pretrain_loss(logits_from_probs(probs), targets, masked, jnp.array([0.5]))
    loss = losses.mean_loss(total, weight)
    # (ln 2 + ln 4) / p / L = 3 ln2 / 0.5 / 4
    assert float(loss) == np.float32(3 * math.log(2) / 0.5 / 4)
    assert float(aux["masked_tokens"]) == 2
    assert float(aux["masked_correct"]) == 1  # argmax is 0 at both masked positions; only position 0 is right


def test_pretrain_loss_normalises_by_each_sequence_length():
    logits = logits_from_probs([[[0.5, 0.5]] * 4, [[0.5, 0.5]] * 4])
    targets = jnp.zeros((2, 4), jnp.int32)
    masked = jnp.array([[True, True, False, False], [True, False, False, False]])
    total, weight, _ = losses.pretrain_loss(logits, targets, masked, jnp.array([1.0, 0.25]),
                                               lengths=jnp.array([4, 2]))
    ln2 = math.log(2)
    assert float(weight) == 2  # two sequences: the loss is the sum of per-sequence terms over 2
    np.testing.assert_allclose(float(total), (2 * ln2 / 1.0 / 4) + (ln2 / 0.25 / 2), rtol=1e-6)


def test_sft_loss_hand_computed():
    # prompt (2 tokens), response (2 tokens), EOS padding (2 tokens, id 2) that counts as response.
    probs = [[[0.5, 0.25, 0.25]] * 6]
    targets = jnp.array([[0, 1, 0, 1, 2, 2]])
    prompt = jnp.array([[True, True, False, False, False, False]])
    masked = jnp.array([[False, False, True, False, True, False]])
    loss = losses.mean_loss(*losses.sft_loss(logits_from_probs(probs), targets, masked, jnp.array([0.4]),
                                                   ~prompt)[:2])
    # CE ln2 at the masked response token plus ln4 at the masked EOS, over p and the response length 4
    np.testing.assert_allclose(float(loss), (math.log(2) + math.log(4)) / 0.4 / 4, rtol=1e-6)


def test_ar_loss_is_next_token_nll():
    probs = [[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]
    tokens = jnp.array([[0, 0, 1]])
    total, weight, aux = losses.ar_loss(logits_from_probs(probs), tokens)
    np.testing.assert_allclose(float(total), -math.log(0.5) - math.log(0.1), rtol=1e-6)
    assert float(weight) == float(aux["masked_tokens"]) == 2


def test_forward_process_masks_at_rate_p_and_respects_maskable():
    tokens = jnp.arange(20000).reshape(4, 5000) % 50
    t = jnp.array([0.0, 0.25, 0.5, 1.0])
    maskable = jnp.ones_like(tokens, bool).at[:, :1000].set(False)
    noisy, masked, p = masking.forward_process(jax.random.key(0), tokens, 99, 1e-3, maskable, t=t)
    np.testing.assert_allclose(p, (1 - 1e-3) * t + 1e-3, rtol=1e-6)
    assert not bool(masked[:, :1000].any())
    rate = np.asarray(masked[:, 1000:].mean(axis=1))
    np.testing.assert_allclose(rate, np.asarray(p), atol=0.025)
    assert bool(jnp.all(jnp.where(masked, noisy == 99, noisy == tokens)))


def test_forward_process_draws_t_uniformly():
    _, _, p = masking.forward_process(jax.random.key(1), jnp.zeros((20000, 1), jnp.int32), 9, 1e-3)
    assert abs(float(p.mean()) - 0.5) < 0.01 and float(p.min()) >= 1e-3 and float(p.max()) <= 1.0


def test_random_lengths_fraction_and_range():
    lengths = np.asarray(masking.random_lengths(jax.random.key(2), 100000, 64, 0.01))
    cut = lengths < 64
    assert 0.008 < cut.mean() < 0.012  # 1% (plus the 1/64 of cuts that land on 64)
    assert lengths.min() >= 1 and lengths.max() == 64
    assert np.all(np.asarray(masking.random_lengths(jax.random.key(3), 100, 8, 0.0)) == 8)


def test_loss_is_unbiased_estimate_of_exact_elbo():
    """Average the training loss over many draws of (t, mask) and compare with the ELBO computed exactly:
    enumerate every mask of a length-3 sequence and integrate over t with Gauss-Legendre quadrature
    (the integrand is a polynomial in p of degree < T, so 3 nodes are exact)."""
    cfg = ModelConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=8, mlp_hidden=16,
                      dtype="float32", init_std=0.5)
    graphdef = M.split_model(M.abstract_model(cfg))[0]
    params = M.init_params(cfg, 7)
    mask_id, eps, x = 7, 1e-3, jnp.array([3, 1, 4])
    length = x.shape[0]
    f = jax.jit(lambda toks: M.apply(graphdef, params, toks))

    subsets = [m for m in itertools.product([0, 1], repeat=length) if any(m)]
    masks = jnp.array(subsets, bool)
    logits = f(jnp.where(masks, mask_id, x[None]))
    ce = np.asarray(losses.cross_entropy(logits, jnp.broadcast_to(x, masks.shape)))
    nodes, weights = np.polynomial.legendre.leggauss(length)
    exact = 0.0
    for node, w in zip(nodes, weights):
        t = (node + 1) / 2
        p = (1 - eps) * t + eps
        for m, c in zip(subsets, ce):
            k = sum(m)
            exact += w / 2 * p ** k * (1 - p) ** (length - k) * (c * np.array(m)).sum() / p / length

    n = 20000
    noisy, masked, p = masking.forward_process(jax.random.key(0), jnp.broadcast_to(x, (n, length)), mask_id, eps)
    per_seq = jax.vmap(lambda lg, m, pp: losses.pretrain_loss(lg[None], x[None], m[None], pp[None])[0])(
        f(noisy), masked, p)
    mean, se = float(per_seq.mean()), float(per_seq.std() / np.sqrt(n))
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    assert se < 0.02 * exact  # the comparison is tight enough to catch a wrong 1/p or normaliser
