"""Mixture of experts ahead of time on a TPU slice (libtpu, from this CPU): per-chip memory and the largest batch
(`llada-jax preflight`'s report), then what the compiled step moves and holds: its all-to-all ops over the
`expert` mesh axis, and its largest buffers against the rows one device routes (sequences x length x top_k).

    python benchmarks/moe_preflight.py --config=configs/llada2_mini.py --topology=v5p:4x4x2 --per-chip=4 \\
        [--config.model.moe.capacity_factor=1.25 ...]

A buffer counts as "routed rows" if it has the model width as its last dimension and at least as many rows as one
device routes; each is printed with its size relative to those rows. Dropless expert parallelism reserves, per
destination device, every row a device could send there (tokens x min(top_k, local experts)), so its exchange
buffers are expert/... times the routed rows; a capacity factor c bounds them at c x the routed rows.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPE = re.compile(r"\b(bf16|f32|s32|f16)\[([0-9,]+)\]")


def routed_buffers(hlo: str, width: int, routed_rows: int, layers=(), top: int = 5) -> list[tuple[str, float]]:
    """The largest distinct [.., width] buffers with at least `routed_rows` rows per layer: (shape, rows / routed
    rows). A leading dimension equal to a layer count is a stack of per-layer buffers (scan residuals) and is not
    counted."""
    found = {}
    for dtype, dims in SHAPE.findall(hlo):
        shape = tuple(int(d) for d in dims.split(","))
        per_layer = shape[1:] if len(shape) > 2 and shape[0] in layers else shape
        rows = 1
        for d in per_layer[:-1]:
            rows *= d
        if shape[-1] == width and rows >= routed_rows:
            found[f"{dtype}[{dims}]"] = rows / routed_rows
    return sorted(found.items(), key=lambda kv: -kv[1])[:top]


def expert_all_to_alls(hlo: str) -> list[str]:
    """The replica groups of every all-to-all in the compiled step (one entry per op)."""
    return [m.group(1) for m in re.finditer(r"all-to-all\([^)]*\)[^\n]*?replica_groups=(\{[^ ]*\})", hlo)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--topology", required=True)
    parser.add_argument("--per-chip", type=int, required=True, help="sequences per chip (sets the global batch)")
    args, overrides = parser.parse_known_args(argv)
    from llada_jax.config import load_config
    from llada_jax.training import preflight

    devices = preflight.topology_devices(args.topology)
    config = load_config(args.config, [o.removeprefix("--config.") for o in overrides])
    config.train.global_batch_size = args.per_chip * len(devices) * config.train.grad_accum_steps
    start = time.perf_counter()
    report, compiled = preflight.analyse_compiled(config, devices)
    hlo = compiled.as_text()
    m, t = config.model, config.train
    routed = args.per_chip * t.seq_len * m.moe.top_k
    groups = expert_all_to_alls(hlo)
    print(preflight.format_report(report))
    print(f"compile            {time.perf_counter() - start:.0f} s on this machine")
    print(f"all-to-all         {len(groups)} ops; replica groups (first) {groups[0] if groups else '-'}")
    print(f"routed rows        {routed:,} per device ({args.per_chip} x {t.seq_len} x top {m.moe.top_k})")
    layers = (m.n_layers, m.n_layers - m.moe.first_dense_layers, m.moe.first_dense_layers)
    largest = routed_buffers(hlo, m.d_model, routed, layers)
    for shape, ratio in largest:
        print(f"  buffer {shape:<28} {ratio:.2f} x the routed rows per layer")
    print(json.dumps({**report, "all_to_all_ops": len(groups), "routed_rows": routed, "largest_routed_buffers": largest}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
