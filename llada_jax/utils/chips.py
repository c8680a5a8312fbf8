"""What each accelerator offers: dense bf16 peak FLOP/s (for MFU) and the HBM a program may use (for preflight)."""
from __future__ import annotations

# Dense bf16 peak TFLOP/s per chip, for MFU.
PEAK_TFLOPS = {
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,  # v5e
    "tpu v5e": 197.0,
    "tpu v5p": 459.0,
    "tpu v5": 459.0,
    "tpu v6 lite": 918.0,  # v6e (Trillium)
    "tpu v6e": 918.0,
    "h100": 989.0,
    "h200": 989.0,
}


def peak_tflops(device_kind: str) -> float | None:
    kind = device_kind.lower()
    for name in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if name in kind:
            return PEAK_TFLOPS[name]
    return None


# HBM per chip that XLA lets a program use, by device_kind, as libtpu's compile-time out-of-memory check states
# it (v5p reports "TPU v5", v6e "TPU v6 lite", v5e "TPU v5 lite"); v4 and v5e are the nominal sizes.
TPU_HBM_BYTES = {
    "TPU v4": 32 * 2**30,
    "TPU v5 lite": 16 * 2**30,
    "TPU v5": int(95.73 * 2**30),
    "TPU v6 lite": int(31.24 * 2**30),
}
