"""benchmarks/moe_balance.py's --probe: the routing it reports is the model's own (every routed assignment of the
batch counted once, split by whether the token was masked at the asked ratio); its final-model load figures."""
import re

from helpers import load_benchmark


def test_probe_counts_every_assignment_of_the_batch_by_masked_and_unmasked_tokens(capsys):
    bench = load_benchmark("moe_balance")
    route_before = bench_route()
    assert bench.main(["--steps=2", "--tail=1", "--probe", "--eval-batches=1", "--config.mesh.fsdp=-1"]) == 0
    assert bench_route() is route_before  # the recording router is taken out again
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "probe," in line]
    assert len(lines) == 3 * 2  # three mask ratios x the toy's two MoE layers
    tokens, top_k = 16 * 64, 2
    for line, ratio in zip(lines, (0.1, 0.1, 0.5, 0.5, 0.9, 0.9)):
        masked, unmasked = (list(map(int, re.search(rf"{kind} \[([0-9, ]+)\]", line).group(1).split(", ")))
                            for kind in ("experts", "unmasked"))
        assert len(masked) == len(unmasked) == 8
        assert sum(masked) + sum(unmasked) == tokens * top_k
        assert abs(sum(masked) / (tokens * top_k) - ratio) < 0.05  # the masked share is the asked ratio
        load = [a + b for a, b in zip(masked, unmasked)]
        reported = float(re.search(r"max/mean ([0-9.]+)", line).group(1))
        assert abs(reported - max(load) / (sum(load) / 8)) < 0.006
    assert "expert bias (rate 0.01)" in out and "no balancing" in out
    finals = re.findall(r"final model on 1 batches: per batch ([0-9.]+), pooled ([0-9.]+)", out)
    assert len(finals) == 2 and all(a == b and 1.0 <= float(a) <= 4.0 for a, b in finals)  # one batch: the same


def test_final_load_pools_the_batches_loads():
    """The pooled figure is the max/mean of the summed load, not a mean of per-batch figures: two batches that
    overload different experts average to a perfect 1.0 when pooled."""
    import numpy as np

    bench = load_benchmark("moe_balance")
    uneven = [np.array([[3.0, 1.0, 1.0, 3.0]]), np.array([[1.0, 3.0, 3.0, 1.0]])]  # [layers, E] per batch
    per_batch, pooled = bench.worst_figures(uneven)
    assert per_batch == 1.5 and pooled == 1.0


def bench_route():
    from llada_jax.models import moe_dispatch
    return moe_dispatch.route
