"""Render a sampling trace (the step at which each generated position was revealed) as a PNG grid.

matplotlib draws it (with a colour bar) when installed; otherwise a plain grid is encoded with zlib here,
so `--trace` works in a bare install.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

# Anchor colours of a dark-blue -> green -> yellow ramp (early -> late steps), interpolated linearly.
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
_UNREVEALED = (220, 220, 220)


def png_bytes(rgb: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> a PNG file (8-bit truecolour, no filtering)."""
    rgb = np.ascontiguousarray(rgb, np.uint8)
    height, width, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))  # filter byte 0 before each row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def grid_image(trace: np.ndarray, block_length: int, cell: int = 8) -> np.ndarray:
    """trace [B, G] -> [B*cell, G*cell, 3] uint8: colour = reveal step, grey = never revealed, white lines
    between blocks."""
    trace = np.asarray(trace)
    last = max(int(trace.max()), 1)
    t = np.clip(trace, 0, None) / last * (len(_RAMP) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
    frac = (t - lo)[..., None]
    colours = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
    colours[trace < 0] = _UNREVEALED
    image = np.repeat(np.repeat(colours.astype(np.uint8), cell, axis=0), cell, axis=1)
    for edge in range(block_length, trace.shape[1], block_length):
        image[:, edge * cell - 1] = 255
    return image


PLAIN_LEGEND = ("a plain grid without labels (matplotlib is not installed; pip install matplotlib for a labelled "
                "chart): one row per prompt, one column per generated position, colour = step revealed from dark "
                "blue (first) to yellow (last), grey = never revealed, white lines = block boundaries")


def save(trace: np.ndarray, path: str, block_length: int) -> str:
    """trace [B, G]: one row per prompt, one column per generated position, colour = reveal step.

    Returns how to read the picture: the plain grid has no axes, so the legend is said in words instead.
    """
    try:
        import matplotlib
    except ImportError:
        with open(path, "wb") as f:
            f.write(png_bytes(grid_image(trace, block_length)))
        return PLAIN_LEGEND
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = np.asarray(trace, float)
    fig, ax = plt.subplots(figsize=(max(6, trace.shape[1] / 8), 1 + 0.5 * trace.shape[0]))
    image = ax.imshow(np.ma.masked_less(trace, 0), aspect="auto", cmap="viridis", interpolation="nearest")
    for edge in range(block_length, trace.shape[1], block_length):
        ax.axvline(edge - 0.5, color="white", linewidth=1)
    ax.set_xlabel("generated position (white lines: block boundaries; blank: not revealed)")
    ax.set_yticks(range(trace.shape[0]))
    ax.set_ylabel("prompt")
    fig.colorbar(image, ax=ax, label="step revealed")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return "a chart with a colour bar of the step at which each position was revealed"
