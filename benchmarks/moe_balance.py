"""Aux-loss-free balancing on a CPU toy run: the same MoE model (8 experts, top 2, LLaDA2.0's sigmoid router)
trained twice on CPython's documentation, with the expert bias moved by load and without it; prints the worst
layer's max/mean expert load (1.0 is perfect balance) over the run and at its end.

    python benchmarks/moe_balance.py [--steps=300] [--rate=0.01] [--probe] [--config.train.objective=ar ...]

Under masked diffusion a batch of the default 16 rows stays near 1.8 at any update rate tried (see below); the
goal's figure (<= 1.3 with the bias, over 3 without) comes from 256 rows for 600 steps, about 10 minutes a run
on a 2-core CPU:

    python benchmarks/moe_balance.py --steps=600 --rate=0.003 --config.optimizer.lr=3e-4 \
        --config.train.global_batch_size=256

The end figure is the mean over the last --tail logged steps (single steps are noisy). Each run goes through
`llada-jax train`'s loop into a temporary workdir and reads its metrics.jsonl.

Then each run's final model (router and bias frozen) routes the first --eval-batches training batches, each
noised by the run's own objective (`compute_loss`, so the load is the one the step reports): the worst layer's
max/mean load per batch (the mean over batches) and of the load pooled over all of them, i.e. how evenly the
experts share the tokens. The two differ under masked diffusion: a row's masked tokens look alike to the router
and go to the same experts, so a batch of 16 rows is only as even as its few heavily masked rows let it be, while
the pooled load shows what the balancing achieved.

--probe looks inside the balanced run's final model: it routes one training batch masked at fixed ratios (0.1,
0.5, 0.9) and prints, per MoE layer, the max/mean load, the experts masked and unmasked tokens chose, and how much
the router's logits vary over tokens of each kind (what masked diffusion does to routing, which a load figure
cannot tell).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOY = ["model.d_model=64", "model.n_layers=3", "model.n_heads=4", "model.n_kv_heads=2", "model.mlp_hidden=128",
       "model.rotary_dim=8", "model.moe.experts=8", "model.moe.top_k=2", "model.moe.expert_hidden=64",
       "model.moe.n_groups=1", "model.moe.topk_groups=1", "model.max_seq_len=64", "train.seq_len=64",
       "train.global_batch_size=16", "train.log_every=5", "train.eval_every=0", "train.eval_batches=1",
       "checkpoint.every_steps=0", "checkpoint.tensorboard=False", "optimizer.warmup_steps=20", "mesh.fsdp=1",
       "mesh.data=1", "mesh.tensor=1", "mesh.expert=1"]


def run(steps: int, bias: bool, rate: float, overrides=(), probe: bool = False, eval_batches: int = 0):
    """(the worst layer's max/mean load at every logged step of one toy run, final_load's figures for its final
    model on `eval_batches` batches, or None); with `probe`, probe_routing's report is printed first."""
    from llada_jax.config import load_config
    from llada_jax.training import loop

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = load_config(os.path.join(root, "configs", "tiny_moe.py"),
                         TOY + [f"train.steps={steps}", f"model.moe.expert_bias={bias}",
                                f"model.moe.bias_update_rate={rate}", *overrides])
    with tempfile.TemporaryDirectory() as workdir:
        loop.run(config, workdir, quiet=True)
        if probe:
            probe_routing(config, os.path.join(workdir, "params"))
        final = final_load(config, os.path.join(workdir, "params"), eval_batches) if eval_batches else None
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    return [r["moe_worst_load"] for r in records if "moe_worst_load" in r], final


def final_load(config, params_dir: str, n_batches: int) -> tuple[float, float]:
    """(mean over batches of the worst layer's max/mean load, the worst layer's max/mean of the load summed over
    the batches) of the saved model on the first `n_batches` training batches, each noised by the objective."""
    import jax
    import numpy as np

    from llada_jax.checkpoints import params_export
    from llada_jax.data import pipeline
    from llada_jax.objectives import registry as objectives

    graphdef, params, _ = params_export.load_model(params_dir)
    load_of = jax.jit(lambda batch, key:
                      objectives.compute_loss(graphdef, config, params, batch, key)[1]["expert_load"])
    batches, _, _ = pipeline.build(config, 0, 1)
    loads = []
    for i, batch in zip(range(n_batches), batches):
        loads.append(np.asarray(load_of({k: jax.numpy.asarray(v) for k, v in batch.items()}, jax.random.key(i))))
    return worst_figures(loads)


def worst_figures(loads) -> tuple[float, float]:
    """loads: per batch [layers, E] -> (mean over batches of the worst layer's max/mean, the same of their sum)."""
    import numpy as np

    worst = lambda load: float(np.max(load.max(-1) / load.mean(-1)))  # noqa: E731
    return float(np.mean([worst(load) for load in loads])), worst(np.sum(loads, axis=0))


def probe_routing(config, params_dir: str, ratios=(0.1, 0.5, 0.9)) -> None:
    """Routes one training batch of the trained model, masked at each fixed ratio, and prints per MoE layer the
    load of masked and of unmasked tokens per expert and the standard deviation of router logits over tokens."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from llada_jax.checkpoints import params_export
    from llada_jax.data import pipeline
    from llada_jax.models import moe_dispatch
    from llada_jax.models import registry as model_lib
    from llada_jax.objectives import masking

    graphdef, params, _ = params_export.load_model(params_dir)
    seen = []
    route = moe_dispatch.route

    def recording_route(x, router_w, bias, moe, valid=None):  # the dispatch's router, with its choices copied out
        routing = route(x, router_w, bias, moe, valid)
        jax.debug.callback(lambda e, lg: seen.append((np.asarray(e), np.asarray(lg))), routing.experts,
                           routing.logits)
        return routing

    batches, _, _ = pipeline.build(config, 0, 1)
    tokens = jnp.asarray(next(iter(batches))["tokens"])
    moe_dispatch.route = recording_route
    try:
        for ratio in ratios:
            seen.clear()
            noisy, masked, _ = masking.forward_process(jax.random.key(1), tokens, config.model.mask_token_id,
                                                       config.train.mask_eps, t=jnp.full(tokens.shape[:1], ratio))
            jax.block_until_ready(model_lib.apply_head(graphdef, params, noisy).hidden)
            is_masked = np.asarray(masked).reshape(-1)
            for layer, (experts, logits) in enumerate(seen):
                experts, logits = experts.reshape(is_masked.size, -1), logits.reshape(is_masked.size, -1)
                n = logits.shape[-1]
                by_mask = np.bincount(experts[is_masked].ravel(), minlength=n)
                by_clean = np.bincount(experts[~is_masked].ravel(), minlength=n)
                load = by_mask + by_clean
                print(f"  probe, {ratio:.0%} masked, MoE layer {layer}: max/mean {load.max() / load.mean():.2f} | "
                      f"masked tokens' experts {by_mask.tolist()} | unmasked {by_clean.tolist()} | router logit "
                      f"std over tokens: masked {logits[is_masked].std(0).mean():.3f}, "
                      f"unmasked {logits[~is_masked].std(0).mean():.3f}", flush=True)
    finally:
        moe_dispatch.route = route


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rate", type=float, default=0.01, help="model.moe.bias_update_rate of the balanced run")
    parser.add_argument("--tail", type=int, default=10, help="logged steps averaged for the end figure")
    parser.add_argument("--eval-batches", type=int, default=50,
                        help="training batches (from the stream's start) the final models route")
    parser.add_argument("--probe", action="store_true", help="route a batch of the balanced run's final model "
                        "at fixed mask ratios and print what masked and unmasked tokens chose")
    args, extra = parser.parse_known_args(argv)
    overrides = [o.removeprefix("--config.") for o in extra]
    import jax

    rows = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.global_batch_size=")), "16")
    print(f"toy MoE: 8 experts, top 2, sigmoid router, {args.steps} steps of {rows} x 64 tokens on "
          f"{jax.devices()[0].device_kind}" + (f" ({' '.join(overrides)})" if overrides else ""))
    for bias in (True, False):
        loads, final = run(args.steps, bias, args.rate, overrides, probe=args.probe and bias,
                           eval_batches=args.eval_batches)
        end = sum(loads[-args.tail:]) / len(loads[-args.tail:])
        name = f"expert bias (rate {args.rate:g})" if bias else "no balancing     "
        print(f"{name}: worst layer max/mean load at step 5 {loads[0]:.2f}, max over the run {max(loads):.2f}, "
              f"mean of the last {args.tail} logged steps {end:.3f}" + (
                  f"; final model on {args.eval_batches} batches: per batch {final[0]:.3f}, pooled {final[1]:.3f}"
                  if final else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
