"""Steady paths over time from noisy per-frame values (and measured steps)."""

from __future__ import annotations

import math

import numpy as np
from scipy.linalg import solveh_banded


def trend(
    values: np.ndarray,
    weights: np.ndarray,
    fps: float,
    period_s: float,
    order: int = 2,
    steps: np.ndarray | None = None,
    step_weight: float = 0.0,
) -> np.ndarray:
    """(n, k) per-frame values, (n,) weights (0 where a value is missing) → (n, k) float32.

    Whittaker's smoother: minimises Σ w_i (x_i − y_i)² + μ Σ (Δᵒx_i)², Δᵒ the difference
    of ``order`` 1 or 2. Order 2 (the Hodrick–Prescott trend) lets a straight line pass
    free, so a steady drift is followed without lag; order 1 favours a constant, so a
    still value stays still. Wobbles faster than ``period_s`` are averaged away (μ from
    the period in frames, (period / 2π)^(2·order)). Centred: no lag inside the series.

    ``steps`` (n, k): a measured x_i − x_{i−1} (NaN where none was), kept to with
    ``step_weight`` per frame: + Σ λ (x_i − x_{i−1} − s_i)². Where steps are precise (a
    tracker's motion) the path takes their detail and the values only its level.
    Needs two weighted frames; with fewer, the weighted mean is held.
    """
    n = len(values)
    w = weights.astype(np.float64)
    y = np.where(w[:, None] > 0, values, 0.0).astype(np.float64)
    if n < 3 or np.count_nonzero(w) < 2:
        mean = (w[:, None] * y).sum(axis=0) / max(w.sum(), 1e-9)
        return np.broadcast_to(mean, values.shape).astype(np.float32)
    mu = (period_s * fps / (2 * math.pi)) ** (2 * order)
    banded = np.zeros((3, n))  # solveh_banded's upper form: row 2 the diagonal
    rhs = w[:, None] * y
    if order == 1:
        _add_first_difference(banded, np.full(n - 1, mu))
    else:
        # μ·D²ᵀD², D² the second difference with rows (1, −2, 1): pentadiagonal.
        banded[2, :-2] += mu
        banded[2, 1:-1] += 4 * mu
        banded[2, 2:] += mu
        banded[1, 1:-1] -= 2 * mu
        banded[1, 2:] -= 2 * mu
        banded[0, 2:] += mu
    if steps is not None:
        measured = ~np.isnan(steps[1:, 0])
        lam = np.where(measured, step_weight, 0.0)
        _add_first_difference(banded, lam)
        s = np.where(measured[:, None], steps[1:], 0.0) * lam[:, None]
        rhs[:-1] -= s
        rhs[1:] += s
    banded[2] += w
    return solveh_banded(banded, rhs).astype(np.float32)


def _add_first_difference(banded: np.ndarray, lam: np.ndarray) -> None:
    """Add DᵀΛD to a banded matrix, D the first difference (rows (−1, 1)), Λ = diag(lam)."""
    banded[2, :-1] += lam
    banded[2, 1:] += lam
    banded[1, 1:] -= lam
