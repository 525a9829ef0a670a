"""The figures of the run report (report.html), each returned as a PNG ``data:`` URI.

Every function takes plain Python data (the report input contract of
:mod:`searchrl.eval.report`, already checked there) and returns a string
``data:image/png;base64,...`` that the template puts in an ``<img src>``, so the page
needs no file beside it. Figures are drawn on :class:`matplotlib.figure.Figure` objects
with the Agg canvas (no pyplot global state, no display).

- :func:`grade_mix_figure`: share of each grade per split, stacked bars.
- :func:`confusion_figure`: 4x4 heatmap, rows = human grade, cols = predicted, counts annotated.
- :func:`calibration_bins` / :func:`reliability_figure`: binned predicted P(Good) against
  the observed share of Good pairs, with the diagonal and each bin's count.
- :func:`beta_figure`: tiering macro-F1 against beta, chosen beta marked.
- :func:`stage_curves_figure`: a training stage's metrics.jsonl rows, one small multiple per metric.
- :func:`retrieval_curves_figure`: nDCG@K and HitRate@K against K, one line per system.

Simplifications, on purpose: PNG at a fixed 100 dpi (small files, no vector zoom); the
reliability curve uses equal-width bins (empty bins are left out), not quantile bins;
learning curves are drawn raw (no smoothing; ``searchrl plot --smooth`` does that).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from searchrl.data.schema import GOOD_MIN_GRADE, GRADE_NAMES, GRADES
from searchrl.eval.plot import series

# One colour per grade, red (irrelevant) to green (excellent), the same in every figure.
GRADE_COLOURS = {1: "#c0392b", 2: "#e67e22", 3: "#7fb77e", 4: "#1e8449"}
DPI = 100


def to_data_uri(fig: Figure) -> str:
    """The figure as a base64 PNG data URI (the page embeds it, so it opens from disk alone)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def grade_mix_figure(grades_by_split: Mapping[str, Mapping[str, int]]) -> str:
    """Stacked horizontal bars: per split, the share of judgments at each grade."""
    splits = list(grades_by_split)
    fig = Figure(figsize=(6.5, 0.6 + 0.45 * len(splits)))
    ax = fig.subplots()
    left = np.zeros(len(splits))
    totals = np.array([max(sum(grades_by_split[s].values()), 1) for s in splits], dtype=float)
    for g in GRADES:
        share = np.array([grades_by_split[s].get(str(g), 0) for s in splits]) / totals
        ax.barh(splits, share, left=left, color=GRADE_COLOURS[g], label=GRADE_NAMES[g])
        left += share
    ax.set_xlim(0, 1)
    ax.invert_yaxis()  # splits top to bottom in the table's order
    ax.set_xlabel("share of judgments")
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.35 - 0.1 / max(len(splits), 1)),
              frameon=False)
    return to_data_uri(fig)


def confusion_figure(matrix: Sequence[Sequence[int]], system: str) -> str:
    """4x4 heatmap, coloured by row share (so a rare grade's row is as readable as a common one's)."""
    counts = np.asarray(matrix, dtype=float)  # [4, 4]: rows = human grade, cols = predicted
    row_share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(4.6, 4.0))
    ax = fig.subplots()
    im = ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for i in range(4):
        for j in range(4):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center",
                    color="white" if row_share[i, j] > 0.6 else "black", fontsize=10)
    labels = [f"L{g}" for g in GRADES]
    ax.set_xticks(range(4), labels)
    ax.set_yticks(range(4), labels)
    ax.set_xlabel("predicted grade")
    ax.set_ylabel("human grade")
    ax.set_title(f"confusion: {system}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    return to_data_uri(fig)


def calibration_bins(p_good: Sequence[float], gold: Sequence[int], bins: int = 10) -> list[dict]:
    """Equal-width bins of predicted P(Good) over [0, 1]: per non-empty bin its edges, count,
    mean predicted P(Good) and observed share of Good (gold grade >= 3) pairs."""
    p = np.asarray(p_good, dtype=float)
    good = np.asarray(gold, dtype=int) >= GOOD_MIN_GRADE
    # P(Good) = 1.0 belongs to the last bin, not to an eleventh one.
    idx = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        m = idx == b
        if m.any():
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(m.sum()),
                        "mean_p_good": float(p[m].mean()), "observed_good": float(good[m].mean())})
    return out


def reliability_figure(p_good: Sequence[float], gold: Sequence[int], system: str, bins: int = 10) -> str:
    """Reliability curve (top) and pairs per bin (bottom); points on the diagonal are calibrated."""
    rows = calibration_bins(p_good, gold, bins)
    fig = Figure(figsize=(4.6, 5.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    xs, ys = [r["mean_p_good"] for r in rows], [r["observed_good"] for r in rows]
    top.plot(xs, ys, marker="o", color="#1f5fa8", label=system)
    for r in rows:
        top.annotate(str(r["count"]), (r["mean_p_good"], r["observed_good"]), textcoords="offset points",
                     xytext=(0, 6), ha="center", fontsize=7, color="#444")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.1)  # headroom for the count labels of bins near 1
    top.set_ylabel("observed Good share")
    top.set_title("reliability of P(Good) (labels: pairs per bin)", fontsize=10)
    top.legend(fontsize=8, loc="upper left")
    top.grid(True, alpha=0.3)
    bottom.bar([(r["lo"] + r["hi"]) / 2 for r in rows], [r["count"] for r in rows], width=0.9 / bins,
               color="#9bb7d4")
    bottom.set_xlabel("predicted P(Good)")
    bottom.set_ylabel("pairs")
    return to_data_uri(fig)


def beta_figure(betas: Sequence[float], macro_f1: Sequence[float], chosen_beta: float) -> str:
    """Macro-F1 of cumulative-probability tiering over beta, with the chosen beta as a vertical line."""
    fig = Figure(figsize=(6.0, 3.4))
    ax = fig.subplots()
    ax.plot(betas, macro_f1, color="#1f5fa8")
    ax.axvline(chosen_beta, color="#c0392b", linestyle="--", linewidth=1.2, label=f"chosen beta = {chosen_beta:g}")
    ax.set_xlabel("beta")
    ax.set_ylabel("macro-F1")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return to_data_uri(fig)


def stage_curves_figure(rows: Sequence[Mapping], metrics: Sequence[str]) -> str:
    """One small multiple per metric of one stage's rows (x = step), three to a row; the page
    puts the stage's name above the figure."""
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    # constrained layout keeps one row's tick labels clear of the next row's titles
    fig = Figure(figsize=(3.3 * ncols, 2.5 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, key in zip(axes, metrics):
        steps, values = series(rows, key)
        # Eval metrics are logged every eval_every steps only: markers show where they were taken.
        sparse = len(steps) < len(rows) / 2
        ax.plot(steps, values, marker="o" if sparse else None, markersize=3, linewidth=1.3, color="#1f5fa8")
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("step", fontsize=8)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return to_data_uri(fig)


def retrieval_curves_figure(curves: Mapping[str, Mapping[str, Mapping[int, float]]]) -> str:
    """One panel per measure (``ndcg``, ``hitrate``) over K, one line per system; log-scaled K."""
    measures = [m for m in ("ndcg", "hitrate") if curves.get(m)]
    fig = Figure(figsize=(4.2 * len(measures), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(measures), squeeze=False)).ravel()
    for ax, measure in zip(axes, measures):
        for system, by_k in curves[measure].items():
            ks = sorted(by_k)
            ax.plot(ks, [by_k[k] for k in ks], marker="o", markersize=3, label=system)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_title({"ndcg": "nDCG@K", "hitrate": "HitRate@K"}[measure], fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return to_data_uri(fig)
