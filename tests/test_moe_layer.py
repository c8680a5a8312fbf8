"""The mixture-of-experts layer against independent references: routing against a NumPy transcription of the rule
(softmax / sigmoid, expert bias for selection only, group-limited top-k, renormalised and scaled weights), the
grouped dispatch against every token put through its top-k experts one by one (forward and gradients, each
kernel, with padding and with a capacity), and the statistics the balancing losses are made of."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llada_jax.config import MoEConfig
from llada_jax.models import grouped_matmul, moe_dispatch, moe_routing

D, F = 12, 8


def numpy_route(x, router_w, bias, moe: MoEConfig):
    """The routing rule token by token in NumPy float64: (experts [N, K], weights [N, K])."""
    logits = np.asarray(x, np.float64) @ np.asarray(router_w, np.float64)
    if moe.router == "sigmoid":
        scores = 1 / (1 + np.exp(-logits))
    else:
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
    select = scores + (0 if bias is None else np.asarray(bias, np.float64))
    size = moe.experts // moe.n_groups
    chosen, weights = [], []
    for s, sel in zip(scores, select):
        groups = [sorted(sel[g * size:(g + 1) * size])[::-1][:2] for g in range(moe.n_groups)]
        best_groups = np.argsort([-sum(g) for g in groups], kind="stable")[:moe.topk_groups]
        allowed = [e for e in range(moe.experts) if e // size in best_groups]
        top = sorted(allowed, key=lambda e: -sel[e])[:moe.top_k]
        w = s[top]
        if moe.norm_topk and moe.top_k > 1:
            w = w / w.sum()
        chosen.append(top)
        weights.append(w * moe.routed_scaling)
    return np.array(chosen), np.array(weights)


LLADA2_ROUTER = MoEConfig(experts=16, top_k=4, expert_hidden=F, router="sigmoid", norm_topk=True, routed_scaling=2.5,
                          n_groups=4, topk_groups=2, expert_bias=True)
SOFTMAX_ROUTER = MoEConfig(experts=8, top_k=2, expert_hidden=F, router="softmax")


@pytest.mark.parametrize("moe", [LLADA2_ROUTER, SOFTMAX_ROUTER], ids=["llada2", "softmax"])
def test_routing_equals_a_numpy_transcription_of_the_rule(moe):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, D)).astype(np.float32)
    router_w = rng.standard_normal((D, moe.experts)).astype(np.float32)
    bias = (rng.standard_normal(moe.experts) * 0.3).astype(np.float32) if moe.expert_bias else None
    got = moe_routing.route(jnp.asarray(x), jnp.asarray(router_w), None if bias is None else jnp.asarray(bias), moe)
    want_experts, want_weights = numpy_route(x, router_w, bias, moe)
    np.testing.assert_array_equal(np.asarray(got.experts), want_experts)
    np.testing.assert_allclose(np.asarray(got.weights), want_weights, rtol=1e-5, atol=1e-6)
    if bias is not None:  # the bias changed the choice for some tokens (so the test can tell it is used)
        no_bias, _ = numpy_route(x, router_w, None, moe)
        assert (no_bias != want_experts).any()
        size = moe.experts // moe.n_groups  # every token's experts lie in at most topk_groups groups
        assert max(len(set(row // size)) for row in want_experts) <= moe.topk_groups


def test_the_expert_bias_gets_no_gradient_and_padding_chooses_nothing():
    moe = LLADA2_ROUTER
    x = jax.random.normal(jax.random.key(0), (10, D))
    w = jax.random.normal(jax.random.key(1), (D, moe.experts))
    bias = jnp.linspace(-0.2, 0.2, moe.experts)
    grad = jax.grad(lambda b: jnp.sum(moe_routing.route(x, w, b, moe).weights ** 2))(bias)
    assert not np.any(np.asarray(grad))
    valid = jnp.arange(10) < 7
    r = moe_routing.route(x, w, bias, moe, valid)
    assert np.all(np.asarray(r.experts[7:]) == moe.experts) and not np.any(np.asarray(r.weights[7:]))


def layer_inputs(moe: MoEConfig, b=3, t=8, seed=0):
    keys = jax.random.split(jax.random.key(seed), 6)
    e = moe.experts
    x = jax.random.normal(keys[0], (b, t, D))
    router_w = jax.random.normal(keys[1], (D, e)) * 0.5
    bias = jax.random.normal(keys[2], (e,)) * 0.1 if moe.expert_bias else None
    gate = jax.random.normal(keys[3], (e, D, F)) * 0.3
    up = jax.random.normal(keys[4], (e, D, F)) * 0.3
    down = jax.random.normal(keys[5], (e, F, D)) * 0.3
    valid = jnp.ones((b, t), bool).at[-1, -3:].set(False)  # the last row ends in padding
    return x, router_w, bias, gate, up, down, valid


def reference_choice(x, router_w, bias, moe: MoEConfig):
    """The experts NumPy's routing rule picks for each token (decided once, outside any differentiation)."""
    flat = np.asarray(x).reshape(-1, x.shape[-1])
    return numpy_route(flat, np.asarray(router_w), None if bias is None else np.asarray(bias), moe)[0]


def dense_reference(x, router_w, bias, gate, up, down, valid, moe: MoEConfig, experts, capacity=None):
    """Every real token through each of its top-k experts (`experts`, from reference_choice), one product at a
    time (token order decides what a capacity drops); differentiable in every weight."""
    b, t, d = x.shape
    flat, ok = x.reshape(-1, d), np.asarray(valid).reshape(-1)
    routing = moe_routing.route(flat, router_w, bias, moe)  # for the weights' gradient path
    taken = np.zeros(moe.experts, int)
    rows = []
    for n in range(flat.shape[0]):
        out = jnp.zeros(d)
        for slot, e in enumerate(experts[n] if ok[n] else []):
            taken[e] += 1
            if capacity is not None and taken[e] > capacity:
                continue
            h = jax.nn.silu(flat[n] @ gate[e]) * (flat[n] @ up[e])
            out = out + routing.weights[n, slot] * (h @ down[e])
        rows.append(out)
    return jnp.stack(rows).reshape(b, t, d)


KERNELS = ["tiled", "ragged_dot", "megablox_interpret"]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("moe", [LLADA2_ROUTER, SOFTMAX_ROUTER], ids=["llada2", "softmax"])
def test_grouped_dispatch_equals_every_token_through_its_experts_one_by_one(moe, kernel):
    """Forward and gradients (input, router, experts) to 1e-5 in float32, padding tokens sent nowhere."""
    args = layer_inputs(moe)
    diff = (0, 1, 3, 4, 5)  # x, router, gate, up, down

    def ours(*a):
        out, _ = moe_dispatch.moe_layer(*a, moe, kernel)
        return out

    def loss(fn):
        return lambda *a: jnp.sum(jnp.sin(fn(*a)) * (jnp.arange(D) + 1) / D)

    chosen = reference_choice(args[0], args[1], args[2], moe)
    ref = lambda *a: dense_reference(*a, moe, chosen)  # noqa: E731
    np.testing.assert_allclose(np.asarray(ours(*args)), np.asarray(ref(*args)), atol=1e-5, rtol=1e-5)
    got = jax.grad(loss(ours), argnums=diff)(*args)
    want = jax.grad(loss(ref), argnums=diff)(*args)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5)


def test_a_capacity_drops_the_latest_assignments_of_a_full_expert_and_counts_them():
    moe = dataclasses.replace(SOFTMAX_ROUTER, capacity_factor=0.5)
    args = layer_inputs(moe, seed=3)
    cap = moe_dispatch.capacity(moe, 3 * 8)
    out, stats = moe_dispatch.moe_layer(*args, moe, "tiled")
    want = dense_reference(*args, moe, reference_choice(*args[:3], moe), capacity=cap)
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=1e-5)
    load = np.asarray(stats["load"])
    assert int(stats["dropped"]) == int(np.maximum(load - cap, 0).sum()) > 0


def test_statistics_count_real_tokens_and_the_balancing_loss_is_top_k_when_balanced():
    moe = SOFTMAX_ROUTER
    args = layer_inputs(moe)
    _, stats = moe_dispatch.moe_layer(*args, moe, "tiled")
    assert float(stats["tokens"]) == 3 * 8 - 3 and float(stats["rows"]) == 3
    assert float(stats["load"].sum()) == (3 * 8 - 3) * moe.top_k
    # perfectly even routing: every token splits its probability evenly and the experts share the tokens
    e, k, t = moe.experts, moe.top_k, 8
    experts = jnp.asarray([[(i * k + j) % e for j in range(k)] for i in range(t)])
    even = moe_routing.Routing(experts, jnp.ones((t, k)), jnp.full((t, e), 1 / e), jnp.zeros((t, e)))
    stats = moe_routing.routing_stats(even, 1, jnp.ones((1, t), bool))
    assert float(stats["balance_sum"]) == pytest.approx(k)


def test_no_array_pairs_every_token_with_every_expert():
    """The traced layer holds nothing as large as [tokens, experts, hidden] (a dense dispatch would)."""
    from helpers import all_avals

    moe = dataclasses.replace(SOFTMAX_ROUTER, experts=32, top_k=2)
    args = layer_inputs(moe, b=4, t=32)
    jaxpr = jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(moe_dispatch.moe_layer(*a, moe, "tiled")[0])))(*args)
    tokens = 4 * 32
    largest = max(int(np.prod(a.shape)) for a in all_avals(jaxpr.jaxpr) if hasattr(a, "shape"))
    assert largest < tokens * moe.experts * F / 4, largest


def test_tiled_kernel_works_for_any_tile_and_gives_zero_past_the_groups():
    rng = np.random.default_rng(1)
    sizes = np.array([5, 0, 9, 1], np.int32)
    x = jnp.asarray(rng.standard_normal((20, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, 6, 7)), jnp.float32)
    want = np.concatenate([np.asarray(x[s:s + n]) @ np.asarray(w[g]) for g, (s, n) in
                           enumerate(zip(np.cumsum(sizes) - sizes, sizes))] + [np.zeros((5, 7))])
    for tile in (1, 3, 4, 16):
        np.testing.assert_allclose(np.asarray(grouped_matmul.tiled_matmul(x, w, jnp.asarray(sizes), tile)), want,
                                   atol=1e-5)
    assert grouped_matmul.resolve_kernel("auto", "tpu") == "megablox"
    assert grouped_matmul.resolve_kernel("auto", "cpu") == "tiled"
    assert grouped_matmul.resolve_kernel("megablox", "cpu") == "megablox_interpret"
