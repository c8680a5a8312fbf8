"""Mixtures of prepared datasets: `data.mixture = "folder_a:0.7,folder_b:0.3"`.

Weights are shares of training rows (hence of tokens); they need not sum to 1. The draw of which dataset
feeds the next row is grain's deterministic weighted mix, so a mixture is reproducible by seed and resumes
exactly from its iterator state.
"""
from __future__ import annotations

import numpy as np

from llada_jax.config import ConfigError


def parse(spec: str) -> list[tuple[str, float]]:
    """'a:0.7,b:0.3' -> [('a', 0.7), ('b', 0.3)]; a part without ':weight' gets weight 1."""
    out = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        path, weight = part, "1"
        if ":" in part:
            head, tail = part.rsplit(":", 1)
            try:
                float(tail)
                path, weight = head, tail
            except ValueError:
                pass
        w = float(weight)
        if not w > 0:
            raise ConfigError(f"data.mixture weight {weight!r} for {path!r} must be positive")
        out.append((path, w))
    if not out:
        raise ConfigError("data.mixture is empty; write it as 'folder_a:0.7,folder_b:0.3'")
    return out


def normalized(weights) -> list[float]:
    w = np.asarray(weights, np.float64)
    return list(w / w.sum())


def mixed_entropy(count_dicts: list[dict], weights: list[float]) -> float:
    """Unigram entropy (nats/token) of the weighted mixture of the datasets' token distributions."""
    total: dict[str, float] = {}
    for counts, w in zip(count_dicts, normalized(weights)):
        n = sum(counts.values())
        for k, v in counts.items():
            total[k] = total.get(k, 0.0) + w * v / max(n, 1)
    p = np.asarray([v for v in total.values() if v > 0])
    return float(-(p * np.log(p)).sum()) if p.size else float("nan")
