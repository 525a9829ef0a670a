import numpy as np
import pytest

from searchrl.data.schema import load_dataset
from searchrl.eval.baselines import apply_thresholds, fit_thresholds, relevance_baselines


def test_thresholds_map_scores_to_grades():
    x = np.array([0.0, 0.2, 0.5, 0.9])
    assert apply_thresholds(x, (0.1, 0.4, 0.8)).tolist() == [1, 2, 3, 4]
    assert apply_thresholds(x, (0.5, 0.5, 0.5)).tolist() == [1, 1, 4, 4]


def test_fit_thresholds_recovers_separable_cutoffs():
    rng = np.random.default_rng(0)
    y = rng.integers(1, 5, size=400)
    x = (y - 1) / 3 + rng.uniform(-0.1, 0.1, size=400)  # grade bands separated by gaps
    t = fit_thresholds(x, y)
    assert (apply_thresholds(x, t) == y).mean() > 0.97


def test_relevance_baselines_on_chorus(chorus_dir):
    ds = load_dataset(chorus_dir)
    rows = {r["system"]: r for r in relevance_baselines(ds, "test")}
    test = ds.split("test").judgments
    majority = ds.split("train").judgments["grade"].mode().iloc[0]
    assert rows["majority"]["accuracy"] == pytest.approx((test["grade"] == majority).mean())
    assert rows["majority"]["n"] == len(test) == 802
    # lexical signal is real: both lexical baselines beat the majority class on macro-F1
    assert rows["bm25-thresholds"]["macro_f1"] > rows["majority"]["macro_f1"] + 0.1
    assert rows["lexical-logreg"]["macro_f1"] > rows["majority"]["macro_f1"] + 0.1
