"""Render a sampling trace (the step at which each generated position was revealed) as a PNG grid."""
from __future__ import annotations

import numpy as np


def save(trace: np.ndarray, path: str, block_length: int) -> None:
    """trace [B, G]: one row per prompt, one column per generated position, colour = reveal step."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--trace needs matplotlib: pip install 'llada-jax[sweep]' (or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = np.asarray(trace, float)
    fig, ax = plt.subplots(figsize=(max(6, trace.shape[1] / 8), 1 + 0.5 * trace.shape[0]))
    image = ax.imshow(np.ma.masked_less(trace, 0), aspect="auto", cmap="viridis", interpolation="nearest")
    for edge in range(block_length, trace.shape[1], block_length):
        ax.axvline(edge - 0.5, color="white", linewidth=1)
    ax.set_xlabel("generated position (white lines: block boundaries)")
    ax.set_ylabel("prompt")
    fig.colorbar(image, ax=ax, label="step revealed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
