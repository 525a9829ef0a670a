"""Query bootstraps: coverage of a known mean, paired differences, pooled metrics, seeds x queries."""

import numpy as np
import pytest

from searchrl.metrics.measures import classification_metrics, per_query_auc
from searchrl.metrics.stats import paired_bootstrap, paired_metric_bootstrap, query_bootstrap


def test_interval_of_a_mean_holds_the_truth_and_narrows_with_more_queries():
    rng = np.random.default_rng(0)
    small = query_bootstrap(rng.normal(0.7, 0.1, 25), seed=1)
    large = query_bootstrap(rng.normal(0.7, 0.1, 400), seed=1)
    assert small.lo < 0.7 < small.hi and large.lo < 0.7 < large.hi
    assert (large.hi - large.lo) < 0.5 * (small.hi - small.lo)
    with_nan = query_bootstrap([0.5, np.nan, 0.7], seed=0)
    assert with_nan.n == 2 and with_nan.mean == pytest.approx(0.6)  # undefined queries are left out, not 0.5


def test_paired_bootstrap_sees_a_small_consistent_gain_that_unpaired_intervals_miss():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 1.0, 27)  # queries differ a lot in difficulty
    a, b = base + 0.03 + rng.normal(0, 0.01, 27), base
    ia, ib = query_bootstrap(a), query_bootstrap(b)
    assert ia.lo < ib.hi  # unpaired intervals overlap
    d = paired_bootstrap(a, b)
    assert d.excludes_zero() and d.lo > 0 and d.p_le_zero == 0.0 and d.mean == pytest.approx(np.mean(a - b))
    same = paired_bootstrap(b + rng.normal(0, 0.02, 27), b)
    assert not same.excludes_zero()  # noise only: "no difference"
    with pytest.raises(ValueError, match="shape"):
        paired_bootstrap(a, b[:5])


def test_seeds_by_queries_carry_the_seed_spread():
    rng = np.random.default_rng(0)
    per_query = rng.uniform(0.5, 0.9, 30)
    one_seed = query_bootstrap(per_query)
    seeds = per_query[None, :] + rng.normal(0, 0.2, (5, 1))  # seeds shift every query together
    many = query_bootstrap(seeds)
    assert (many.hi - many.lo) > (one_seed.hi - one_seed.lo)


def test_a_seed_with_no_defined_value_is_left_out_not_made_nan():
    rng = np.random.default_rng(0)
    v = rng.uniform(0.4, 0.8, (3, 20))
    holed = v.copy()
    holed[2] = np.nan  # e.g. rule adherence of a seed whose completions never parse
    iv = query_bootstrap(holed)
    assert np.isfinite([iv.lo, iv.hi]).all() and iv.mean == pytest.approx(v[:2].mean())
    d = paired_bootstrap(holed, v - 0.1)  # the seed is left out of both sides, so the pairs stay aligned
    assert d.mean == pytest.approx(0.1) and d.excludes_zero()
    with pytest.raises(ValueError, match="no query"):
        query_bootstrap(np.full((2, 5), np.nan))


def test_pooled_metric_bootstrap_and_paired_pooled():
    gold = np.array([4, 1, 1, 4, 1, 4, 3, 1] * 5)
    groups = np.repeat(np.arange(10), 4)
    good = np.where(gold >= 3, 4, 1)
    bad = np.ones_like(gold)
    f1 = lambda pred: (lambda rows: classification_metrics(gold[rows].tolist(), pred[rows].tolist())["good_f1"])
    iv = query_bootstrap(metric=f1(good), groups=groups)
    assert iv.mean == 1.0 and iv.lo == 1.0
    d = paired_metric_bootstrap(f1(good), f1(bad), groups)
    assert d.mean == 1.0 and d.excludes_zero()


def test_per_query_auc_leaves_out_one_class_queries():
    auc = per_query_auc([4, 1, 4, 1, 1], [0.9, 0.1, 0.2, 0.8, 0.3], ["a", "a", "b", "b", "c"])
    assert auc == {"a": 1.0, "b": 0.0}
