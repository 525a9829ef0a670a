"""Intervals that say whether a difference is real: bootstraps over queries (and seeds), and paired bootstraps.

Chorus has 27 test queries and its labels are noisy, so a figure without its spread
says little. Queries are the unit of resampling: pairs of one query share a rater and a
candidate list, so resampling pairs would understate the spread.

- :func:`query_bootstrap`: mean and percentile interval of a metric over queries. The
  metric is either a per-query value averaged over queries (per-query AUC), or any
  function of the pooled pairs of the resampled queries (macro-F1, Good-F1) --
  ``metric(indices) -> float`` over row indices.
- :func:`paired_bootstrap`: the same for the *difference* of two systems scored on the same
  queries, resampled together (the comparison the README's verdicts rest on); also the
  share of resamples where the difference is <= 0 (a one-sided bootstrap p-value).
- Several seeds: pass one value per (seed, query) as a [S, Q] array; each resample draws
  queries and seeds with replacement, so the interval carries both spreads.
- :func:`verdict`, :func:`format_interval`, :func:`format_difference`: the one verdict rule and
  the one interval format every table and results page uses.

Simplifies: percentile intervals (no BCa); queries without a defined value (a per-query
AUC needs both classes) are left out, never counted as 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Interval:
    mean: float  # the statistic on the full sample
    lo: float  # 2.5th percentile of the bootstrap distribution (for level 0.95)
    hi: float  # 97.5th percentile
    n: int  # queries (units resampled)
    p_le_zero: float | None = None  # paired only: share of resamples with difference <= 0

    def as_dict(self, prefix: str = "") -> dict:
        out = {f"{prefix}mean": self.mean, f"{prefix}lo": self.lo, f"{prefix}hi": self.hi, f"{prefix}n": self.n}
        if self.p_le_zero is not None:
            out[f"{prefix}p_le_zero"] = self.p_le_zero
        return out

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def __str__(self) -> str:
        return format_interval(self)


def _as_seeds_by_queries(values) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[None, :] if v.ndim == 1 else v  # [S, Q]


def _draws(rng: np.random.Generator, n_seeds: int, n_queries: int, n_boot: int):
    for _ in range(n_boot):
        yield rng.integers(0, n_seeds, n_seeds), rng.integers(0, n_queries, n_queries)


def query_bootstrap(values=None, metric: Callable[[np.ndarray], float] | None = None, groups=None,
                    n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Interval of the mean of per-query ``values`` ([Q] or [S, Q]; NaN = undefined, left out), or of
    ``metric(row_indices)`` where ``groups`` gives each row's query (pooled metrics such as macro-F1)."""
    rng = np.random.default_rng(seed)
    if metric is not None:
        groups = np.asarray(groups)
        queries = np.unique(groups)
        rows_of = [np.flatnonzero(groups == q) for q in queries]
        full = float(metric(np.arange(len(groups))))
        stats = [metric(np.concatenate([rows_of[i] for i in rng.integers(0, len(queries), len(queries))]))
                 for _ in range(n_boot)]
        return _interval(full, stats, level, len(queries))
    v = _as_seeds_by_queries(values)
    v = v[~np.isnan(v).all(1)]  # a seed with no defined value (e.g. nothing parsed) is left out, as a query is
    keep = ~np.isnan(v).all(0)
    v = v[:, keep]
    if v.shape[1] == 0:
        raise ValueError("no query has a defined value")
    full = float(np.nanmean(v))
    stats = [float(np.nanmean(v[np.ix_(s, q)])) for s, q in _draws(rng, *v.shape, n_boot)]
    return _interval(full, stats, level, v.shape[1])


def paired_bootstrap(a, b, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Interval of mean(a) - mean(b) for per-query values of two systems on the same queries ([Q] or [S, Q]
    each, same shape); queries, and seeds, undefined for either system are left out."""
    a, b = _as_seeds_by_queries(a), _as_seeds_by_queries(b)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} vs {b.shape}")
    seeds = ~(np.isnan(a).all(1) | np.isnan(b).all(1))  # seeds undefined for either system are left out
    a, b = a[seeds], b[seeds]
    keep = ~(np.isnan(a).all(0) | np.isnan(b).all(0))
    d = a[:, keep] - b[:, keep]  # [S, Q]
    if d.shape[1] == 0:
        raise ValueError("no query has a defined value for both systems")
    rng = np.random.default_rng(seed)
    stats = np.array([float(np.nanmean(d[np.ix_(s, q)])) for s, q in _draws(rng, *d.shape, n_boot)])
    out = _interval(float(np.nanmean(d)), stats, level, d.shape[1])
    out.p_le_zero = float((stats <= 0).mean())
    return out


def paired_metric_bootstrap(metric_a: Callable[[np.ndarray], float], metric_b: Callable[[np.ndarray], float],
                            groups, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Interval of metric_a(rows) - metric_b(rows) over query resamples (pooled metrics, same rows for both)."""
    groups = np.asarray(groups)
    queries = np.unique(groups)
    rows_of = [np.flatnonzero(groups == q) for q in queries]
    rng = np.random.default_rng(seed)
    allrows = np.arange(len(groups))
    stats = []
    for _ in range(n_boot):
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(queries), len(queries))])
        stats.append(metric_a(rows) - metric_b(rows))
    out = _interval(float(metric_a(allrows) - metric_b(allrows)), stats, level, len(queries))
    out.p_le_zero = float((np.asarray(stats) <= 0).mean())
    return out


def _interval(full: float, stats, level: float, n: int) -> Interval:
    lo, hi = np.percentile(np.asarray(stats, dtype=float), [50 * (1 - level), 50 * (1 + level)])
    return Interval(full, float(lo), float(hi), n)


def _mean_lo_hi(interval) -> tuple[float, float, float]:
    """(mean, lo, hi) of an Interval, a dict with mean/lo/hi, or a [mean, lo, hi] sequence (mean may be absent
    from a dict: NaN)."""
    if isinstance(interval, Interval):
        return interval.mean, interval.lo, interval.hi
    if isinstance(interval, dict):
        return interval.get("mean", float("nan")), interval["lo"], interval["hi"]
    mean, lo, hi = interval
    return mean, lo, hi


def verdict(interval, higher: str = "better", lower: str = "worse") -> str:
    """The one verdict rule: ``higher`` when the 95% interval of a paired difference lies above 0, ``lower``
    when it lies below, else "no difference"; "undefined" when an end is NaN (no query had a value).
    ``interval``: an Interval, a dict with lo and hi, or [mean, lo, hi]."""
    _, lo, hi = _mean_lo_hi(interval)
    if np.isnan(lo) or np.isnan(hi):
        return "undefined"
    if lo > 0:
        return higher
    if hi < 0:
        return lower
    return "no difference"


def format_interval(interval, digits: int = 3, signed: bool = False) -> str:
    """The one interval format: "0.376 [0.290, 0.446]", or with ``signed`` "+0.013 [-0.096, +0.129]" (an
    Interval, a dict with mean, lo, hi, or [mean, lo, hi])."""
    spec = f"{'+' if signed else ''}.{digits}f"
    mean, lo, hi = _mean_lo_hi(interval)
    return f"{mean:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def format_difference(interval, digits: int = 3) -> str:
    """A signed difference and its interval: "+0.013 [-0.096, +0.129]" (format_interval, signed)."""
    return format_interval(interval, digits, signed=True)
