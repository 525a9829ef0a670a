"""Cumulative-probability tiering, per-grade thresholds and their tuning."""

import numpy as np

from searchrl.relevance.scoring.tiering import (
    argmax_grades,
    threshold_grades,
    tiered_grades,
    tune_beta,
    tune_grade_thresholds,
)

P = np.array([[0.1, 0.2, 0.3, 0.4],   # from L4: 0.4, 0.7, 0.9, 1.0
              [0.7, 0.1, 0.1, 0.1],   # 0.1, 0.2, 0.3, 1.0
              [0.0, 0.0, 0.0, 1.0]])


def test_tiering_walks_down_from_l4_until_the_sum_reaches_beta():
    assert tiered_grades(P, 0.4).tolist() == [4, 1, 4]
    assert tiered_grades(P, 0.5).tolist() == [3, 1, 4]
    assert tiered_grades(P, 0.8).tolist() == [2, 1, 4]
    assert tiered_grades(P, 0.15).tolist() == [4, 3, 4]
    assert tiered_grades(P, 1.0).tolist() == [1, 1, 4]  # everyone reaches 1 at L1 at the latest


def test_tiering_differs_from_argmax_and_rounding_never_blocks_l1():
    assert argmax_grades(P).tolist() == [4, 1, 4]
    almost = np.array([[0.25, 0.25, 0.25, 0.25 - 1e-15]])
    assert tiered_grades(almost, 1.0).tolist() == [1]


def test_threshold_grades_take_the_highest_grade_passing_its_own_threshold():
    assert threshold_grades(P, (0.5, 0.25, 0.15)).tolist() == [3, 1, 4]
    assert threshold_grades(P, (0.35, 0.9, 0.9)).tolist() == [4, 1, 4]


def test_tuned_beta_beats_argmax_when_the_model_under_grades():
    rng = np.random.default_rng(0)
    gold = rng.integers(1, 5, size=400)
    # the grade below the right one is always a little more probable: argmax under-grades,
    # a beta just below P(right grade and above) recovers the right one
    probs = np.full((400, 4), 0.04)
    probs[np.arange(400), gold - 1] += 0.40
    probs[np.arange(400), np.maximum(gold - 2, 0)] += 0.44
    probs /= probs.sum(1, keepdims=True)
    from sklearn.metrics import f1_score
    argmax_f1 = f1_score(gold, argmax_grades(probs), average="macro")
    beta, f1 = tune_beta(probs, gold)
    assert argmax_f1 < 0.3 and f1 > 0.95 and 0.3 < beta < 0.6
    assert np.isclose(f1, f1_score(gold, tiered_grades(probs, beta), average="macro"))
    thresholds, f1_t = tune_grade_thresholds(probs, gold)
    assert len(thresholds) == 3 and f1_t > 0.95
