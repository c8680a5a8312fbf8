"""No wasted compute: the compiled MoE train step's FLOPs (XLA's cost analysis) against the active-parameter model
FLOPs (6 x active params x tokens + attention, models/flops.py).

    python benchmarks/moe_flops.py [--experts=64 --top-k=8] [--kernel=tiled] [--topology=v5p:2x2x1]

Layers are unrolled (model.scan_layers=False), attention is the dense XLA kernel and the output head runs in one
chunk, because XLA's cost analysis counts the body of a loop (lax.scan) once. On CPU the grouped matmul is the
tiled kernel (the default there); with --topology the step is compiled ahead of time for that TPU slice (libtpu)
with the megablox kernel, whose FLOPs XLA takes from the Pallas kernel's own cost estimate. --kernel=ragged_dot on
CPU shows what JAX's decomposition of ragged_dot costs there (every row times every expert).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODEL = ["model.family=llada_moe", "model.d_model=256", "model.n_layers=4", "model.n_heads=4", "model.mlp_hidden=512",
         "model.moe.expert_hidden=128", "model.moe.router=softmax", "model.scan_layers=False", "model.attention=xla",
         "model.max_seq_len=256", "train.seq_len=256", "train.global_batch_size=8", "train.grad_accum_steps=1",
         "model.loss_chunk_tokens=4096", "mesh.fsdp=1", "mesh.data=1", "mesh.tensor=1", "mesh.expert=1"]


def measure(experts: int, top_k: int, kernel: str, topology: str = "", extra=()) -> dict:
    import jax

    from llada_jax import sharding
    from llada_jax.config import ModelConfig, load_config
    from llada_jax.models import flops
    from llada_jax.training import preflight
    from llada_jax.training.trainer import Trainer

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    overrides = MODEL + [f"model.moe.experts={experts}", f"model.moe.top_k={top_k}", f"model.moe.kernel={kernel}",
                         *extra]
    config = load_config(os.path.join(root, "configs", "tiny.py"), overrides)
    devices = preflight.topology_devices(topology)[:1] if topology else jax.devices()[:1]
    compiled = Trainer(config, sharding.make_mesh(config.mesh, devices)).compile_step()
    xla = float(compiled.cost_analysis()["flops"])
    t = config.train
    cfg = ModelConfig.from_config(config.model)
    model = flops.flops_per_token(cfg, t.seq_len) * t.global_batch_size * t.seq_len
    counts = flops.param_counts(cfg)
    return {"experts": experts, "top_k": top_k, "kernel": kernel, "device": devices[0].device_kind,
            "active_params": counts["matmul"], "total_params": counts["total"], "xla_flops": xla,
            "model_flops": model, "ratio": xla / model}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--kernel", default="auto", help="auto | tiled | ragged_dot | megablox")
    parser.add_argument("--topology", default="", help="compile ahead of time for this TPU slice (e.g. v5p:2x2x1)")
    args = parser.parse_args(argv)
    r = measure(args.experts, args.top_k, args.kernel, args.topology)
    print(f"{r['experts']} experts, top {r['top_k']}, kernel {r['kernel']} on {r['device']}: "
          f"{r['active_params'] / 1e6:.2f}M active of {r['total_params'] / 1e6:.2f}M params")
    print(f"XLA FLOPs {r['xla_flops']:.4g} | model FLOPs (6 x active params x tokens + attention) "
          f"{r['model_flops']:.4g} | ratio {r['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
