"""Scaling-law fits of a finished sweep: IsoFLOP parabolas per budget, then power laws in the compute budget."""
from __future__ import annotations

import numpy as np


def fit_parabola(log_n: np.ndarray, loss: np.ndarray) -> dict | None:
    """Loss = a x^2 + b x + c in x = log10 N; the minimum gives N* and L* for one IsoFLOP curve."""
    if len(log_n) < 3:
        return None
    a, b, c = np.polyfit(log_n, loss, 2)
    x = -b / (2 * a) if a > 0 else None
    if x is None or not np.min(log_n) <= x <= np.max(log_n):
        return None  # no interior minimum: the budget's sizes do not bracket the optimum (do not extrapolate)
    return {"a": float(a), "b": float(b), "c": float(c), "n_opt": float(10 ** x), "loss_opt": float(c - b * b / (4 * a))}


def fit_power_law(x, y) -> dict:
    """y = k * x^e by least squares in log-log space."""
    e, log_k = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return {"k": float(np.exp(log_k)), "exponent": float(e)}


def fit_scaling(results: list[dict]) -> dict:
    """Per objective: IsoFLOP parabolas per budget, then N* ~ C^a, D* ~ C^b (D* = C / 6 N*) and L* ~ C^c."""
    out = {}
    for objective in sorted({r["objective"] for r in results}):
        curves = {}
        for budget in sorted({r["budget"] for r in results if r["objective"] == objective}):
            rows = [r for r in results if r["objective"] == objective and r["budget"] == budget]
            fit = fit_parabola(np.log10([r["non_embedding_params"] for r in rows]), np.array([r["eval_loss"] for r in rows]))
            if fit:
                curves[budget] = fit
        entry = {"isoflop": {str(b): f for b, f in curves.items()}}
        if len(curves) >= 2:
            budgets = sorted(curves)
            n_opt = [curves[b]["n_opt"] for b in budgets]
            entry["n_opt"] = fit_power_law(budgets, n_opt)
            entry["d_opt"] = fit_power_law(budgets, [b / (6 * n) for b, n in zip(budgets, n_opt)])
            entry["loss"] = fit_power_law(budgets, [curves[b]["loss_opt"] for b in budgets])
        out[objective] = entry
    return out
