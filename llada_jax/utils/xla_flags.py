"""XLA flags llada_jax sets by default, each with the measurement that earned it. A flag already named in
XLA_FLAGS (with any value) is left as the user set it. Applied before JAX creates its backends (the CLI's
entry point, the benchmarks), since XLA reads XLA_FLAGS once, then."""
from __future__ import annotations

import os

DEFAULTS = {
    # cuBLAS instead of Triton for the matmuls on GPU: the 1B train step (configs/llada_1b.py, 4 x 4096 tokens)
    # on one H100 ran at 33.5% MFU instead of 28.1% (522.6 vs 622.2 ms per step; jax 0.11.2, 2026-11-26,
    # benchmarks/train_step.py). A GPU-only option: other backends accept and ignore it.
    "xla_gpu_enable_triton_gemm": "false",
}


def with_defaults(flags: str) -> str:
    """`flags` (an XLA_FLAGS value) plus every default it does not already name."""
    named = {part.lstrip("-").split("=", 1)[0] for part in flags.split()}
    extra = [f"--{name}={value}" for name, value in DEFAULTS.items() if name not in named]
    return " ".join([flags.strip()] + extra).strip()


def apply_defaults(environ=os.environ) -> None:
    environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""))
