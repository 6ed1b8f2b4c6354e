"""Intervals the project reports: over images (many, a normal approximation) and over seeds (few, Student t)."""
from __future__ import annotations

import math

import torch


def mean_ci(values: torch.Tensor) -> dict[str, float]:
    """Mean and the 95% normal-approximation half-width over per-image values (many images; over a few seeds
    use `t_interval`)."""
    v = values.double()
    half = 1.96 * v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": v.mean().item(), "ci95": half}


def t_interval(values: list[float], level: float = 0.95) -> dict:
    """Mean and the half-width of a Student-t confidence interval over independent runs (seeds)."""
    from scipy import stats
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "ci95": float("nan"), "n": n}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "ci95": float(half), "n": n}


def ratio_interval(ratios: list[float], level: float = 0.95) -> dict:
    """Geometric mean and 95% interval of positive ratios over independent runs: the t-interval of their logarithms,
    exponentiated (a ratio's interval is multiplicative; an arithmetic one could even reach below zero)."""
    logs = t_interval([math.log(r) for r in ratios], level)
    out = {"mean": math.exp(logs["mean"]), "n": logs["n"], "low": float("nan"), "high": float("nan")}
    if not math.isnan(logs["ci95"]):
        out.update(low=math.exp(logs["mean"] - logs["ci95"]), high=math.exp(logs["mean"] + logs["ci95"]))
    return out


def steps_to_reach(curve: list[dict], target: float, key: str) -> float | None:
    """The first step at which a lower-is-better metric reaches `target`, linearly interpolated between the measured
    points (the first point's step when it is reached there already; None when it is never reached)."""
    prev = None
    for p in curve:
        if p[key] <= target:
            if prev is None or prev[1] == p[key]:
                return float(p["step"])
            s0, v0 = prev
            return s0 + (v0 - target) / (v0 - p[key]) * (p["step"] - s0)
        prev = (p["step"], p[key])
    return None


def rank_correlation(x: list[float], y: list[float]) -> dict | None:
    """Spearman's rank correlation of paired values (ties averaged) with its two-sided permutation p-value: exact
    (every ordering of `x` against `y`) up to 8 pairs, else from 100,000 random orderings. {"rho", "p", "n",
    "exact"}; None with fewer than 3 pairs or when either side is constant (no order to correlate)."""
    import numpy as np
    from scipy import stats
    if len(x) != len(y):
        raise ValueError(f"rank correlation needs paired values, got {len(x)} and {len(y)}")
    if len(x) < 3 or len(set(x)) == 1 or len(set(y)) == 1:
        return None
    ry = stats.rankdata(y)

    def rho(a, axis=-1):  # Spearman's rho of every row of `a` with y: Pearson's r of the ranks
        ra = stats.rankdata(a, axis=axis)
        ra, dy = ra - ra.mean(axis=axis, keepdims=True), ry - ry.mean()
        return (ra * dy).sum(axis=axis) / np.sqrt((ra ** 2).sum(axis=axis) * (dy ** 2).sum())
    exact = len(x) <= 8  # 8! = 40,320 orderings
    test = stats.permutation_test((list(x),), rho, permutation_type="pairings", vectorized=True,
                                  n_resamples=np.inf if exact else 100_000, rng=0)
    return {"rho": float(test.statistic), "p": float(test.pvalue), "n": len(x), "exact": exact}
