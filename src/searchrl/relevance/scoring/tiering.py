"""Four grade probabilities -> one grade: argmax, cumulative-probability tiering, per-grade thresholds.

TaoSR1 deploys with *cumulative probability tiering*: one threshold beta instead of
one per grade. Walk the grades from L4 down, adding their probabilities; the grade is
the first at which the sum reaches beta. A low beta favours high grades (recall of
Good items), a high beta favours precision. ``tune_beta`` picks beta for macro-F1 on
validation data; ``tune_grade_thresholds`` fits the per-grade alternative (L4 if
P(L4) >= t4, else L3 if P(L3) >= t3, ...) so the two can be compared side by side.

Simplifies: both are fitted by grid search (0.005 steps for beta, coordinate ascent
over a 0.05 grid for the three thresholds); ties go to the value nearest 0.5.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score

GRADES = np.array([1, 2, 3, 4])
BETA_GRID = np.round(np.arange(0.005, 1.0, 0.005), 3)
THRESHOLD_GRID = np.round(np.arange(0.05, 1.0, 0.05), 2)


def argmax_grades(probs: np.ndarray) -> np.ndarray:
    """[N] grades 1..4 of the most probable grade token. probs: [N, 4] over <L1>..<L4>."""
    return np.asarray(probs).argmax(1) + 1


def tiered_grades(probs: np.ndarray, beta: float) -> np.ndarray:
    """[N] grades by cumulative-probability tiering with threshold beta (see the module docstring)."""
    p = np.asarray(probs, dtype=np.float64)  # [N, 4]
    from_top = np.cumsum(p[:, ::-1], axis=1)  # [N, 4]: P(>=L4), P(>=L3), P(>=L2), P(>=L1)
    reached = from_top >= beta - 1e-12  # rounding must not keep a row from reaching beta at L1
    reached[:, -1] = True  # L1 always ends the walk: the four probabilities sum to one
    return 4 - reached.argmax(1)


def threshold_grades(probs: np.ndarray, thresholds) -> np.ndarray:
    """[N] grades from per-grade thresholds (t4, t3, t2): the highest grade whose probability passes its own."""
    p = np.asarray(probs, dtype=np.float64)  # [N, 4]
    t4, t3, t2 = thresholds
    return np.where(p[:, 3] >= t4, 4, np.where(p[:, 2] >= t3, 3, np.where(p[:, 1] >= t2, 2, 1)))


def _macro_f1(gold, pred) -> float:
    return float(f1_score(gold, pred, labels=GRADES, average="macro", zero_division=0))


def _best(values, scores) -> float:
    scores = np.asarray(scores)
    ties = np.flatnonzero(scores >= scores.max() - 1e-12)
    return float(values[min(ties, key=lambda i: abs(values[i] - 0.5))])


def beta_curve(probs: np.ndarray, gold) -> tuple[np.ndarray, list[float]]:
    """(BETA_GRID, macro-F1 of tiered_grades at each beta) on (probs, gold): the curve the report draws."""
    return BETA_GRID, [_macro_f1(gold, tiered_grades(probs, b)) for b in BETA_GRID]


def tune_beta(probs: np.ndarray, gold) -> tuple[float, float]:
    """(beta, macro-F1) maximising macro-F1 of tiered_grades on (probs, gold)."""
    betas, scores = beta_curve(probs, gold)
    return _best(betas, scores), max(scores)


def tune_grade_thresholds(probs: np.ndarray, gold, passes: int = 3) -> tuple[list[float], float]:
    """((t4, t3, t2), macro-F1) by coordinate ascent from (0.5, 0.5, 0.5)."""
    t = [0.5, 0.5, 0.5]
    best = _macro_f1(gold, threshold_grades(probs, t))
    for _ in range(passes):
        changed = False
        for i in range(3):
            scores = []
            for v in THRESHOLD_GRID:
                trial = t.copy()
                trial[i] = float(v)
                scores.append(_macro_f1(gold, threshold_grades(probs, trial)))
            v = _best(THRESHOLD_GRID, scores)
            if max(scores) > best + 1e-12:
                t[i], best, changed = v, max(scores), True
        if not changed:
            break
    return t, best
