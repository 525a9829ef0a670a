"""Metrics checked against values worked out by hand below, not against the library."""

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from searchrl.metrics.measures import (
    classification_metrics,
    format_table,
    good_auc,
    print_table,
    read_metrics_json,
    retrieval_metrics,
    write_metrics_json,
)

L3 = math.log2(3)
L5 = math.log2(5)


# ---------------------------------------------------------------- classification

def test_good_auc_pooled_vs_per_query_by_hand(tmp_path):
    # query a: mostly Good and scored high, query b: mostly not Good and scored low, but within each
    # query the order is reversed: per-query AUC is 0, pooled AUC is not
    grades = [4, 4, 1, 1, 1, 4]
    score = [0.8, 0.9, 0.95, 0.1, 0.2, 0.05]
    qids = ["a", "a", "a", "b", "b", "b"]
    out = good_auc(grades, score, qids)
    assert out["x_good_auc_per_query"] == 0.0 and out["x_auc_queries"] == 2
    assert out["x_good_auc"] == pytest.approx(4 / 9)  # 9 (Good, not-Good) pairs, 4 ordered right
    one_class = good_auc([4, 4, 1], [0.1, 0.2, 0.3], ["a", "a", "b"])  # no query has both classes
    assert one_class == {"x_auc_queries": 0, "x_good_auc": 0.0}  # undefined AUCs are left out: JSON has no NaN
    write_metrics_json(tmp_path / "m.json", "relevance", "d", "test",
                       [{"system": "s", **classification_metrics([4, 4, 1], [4, 1, 1]), **one_class}])
    with pytest.raises(ValueError, match="differ in length"):
        good_auc([4, 1], [0.5], ["a", "a"])


def test_classification_by_hand():
    y_true = [1, 1, 2, 3, 4, 4]
    y_pred = [1, 3, 2, 3, 3, 1]
    m = classification_metrics(y_true, y_pred)
    # L1: TP=1 (i0), FP=1 (i5), FN=1 (i1)  -> P=1/2, R=1/2, F1=1/2
    # L2: TP=1 (i2), FP=0, FN=0            -> F1=1
    # L3: TP=1 (i3), FP=2 (i1,i4), FN=0    -> P=1/3, R=1, F1=2*(1/3)/(4/3)=1/2
    # L4: TP=0                             -> F1=0
    per = [Fraction(1, 2), Fraction(1), Fraction(1, 2), Fraction(0)]
    for g, f in zip((1, 2, 3, 4), per):
        assert m[f"f1_L{g}"] == pytest.approx(float(f))
    assert m["macro_f1"] == pytest.approx(float(sum(per) / 4))  # = 1/2
    assert m["accuracy"] == pytest.approx(3 / 6)  # i0, i2, i3 correct
    # Good (>=3): true F F F T T T, pred F T F T T F -> TP=2, FP=1, FN=1 -> F1 = 4/6
    assert m["good_f1"] == pytest.approx(2 / 3)
    assert m["good_accuracy"] == pytest.approx(4 / 6)  # wrong at i1 and i5
    assert m["n"] == 6 and isinstance(m["n"], int)
    assert m["confusion"] == [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]]
    assert all(type(v) is float for k, v in m.items() if k not in ("n", "confusion"))
    assert all(type(c) is int for row in m["confusion"] for c in row)


def test_classification_labels_fixed():
    # Only L1 ever appears: the three absent grades still count, as F1 = 0.
    m = classification_metrics([1, 1], [1, 1])
    assert m["f1_L1"] == 1.0 and m["f1_L2"] == m["f1_L3"] == m["f1_L4"] == 0.0
    assert m["macro_f1"] == pytest.approx(1 / 4)
    assert m["good_f1"] == 0.0 and m["good_accuracy"] == 1.0  # no Good anywhere: zero_division=0


@pytest.mark.parametrize("y_true,y_pred,msg", [
    ([1, 2], [1], "length"),
    ([], [], "empty"),
    ([1, 5], [1, 2], "1..4"),
    ([0, 2], [1, 2], "1..4"),
    ([1, 2], [1, 2.5], "1..4"),
    ([1, 2], [1, "2"], "1..4"),
])
def test_classification_bad_input(y_true, y_pred, msg):
    with pytest.raises(ValueError, match=msg):
        classification_metrics(y_true, y_pred)


# ---------------------------------------------------------------- retrieval

QRELS = {
    "q1": {"a": 4, "b": 1, "c": 3, "d": 2},  # Good: a, c
    "q2": {"x": 3, "y": 2},                  # Good: x
    "q3": {"m": 1, "n": 2},                  # no Good -> not evaluated
}
RUN = {"q1": ["b", "a", "u", "c"], "q2": ["y", "z", "x"], "q3": ["m"]}  # u, z unjudged

# Hand values. Gain = grade - 1; DCG@K = sum_{i<=K} gain_i / log2(i + 1).
# q1 ranking gains (b, a, u, c) = 0, 3, 0, 2; ideal gains 3, 2, 1.
Q1 = {
    "hitrate@2": 1 / 2, "hitrate@10": 1.0,        # a of {a, c} in top 2; both in top 10
    "mrr@2": 1 / 2, "mrr@10": 1 / 2,              # first Good (a) at rank 2
    "ndcg@2": (3 / L3) / (3 + 2 / L3),
    "ndcg@10": (3 / L3 + 2 / L5) / (3 + 2 / L3 + 1 / 2),  # c at rank 4: log2(5); ideal d at rank 3: log2(4)=2
}
# q2 ranking gains (y, z, x) = 1, 0, 2; ideal gains 2, 1.
Q2 = {
    "hitrate@2": 0.0, "hitrate@10": 1.0,
    "mrr@2": 0.0, "mrr@10": 1 / 3,                # x at rank 3
    "ndcg@2": 1 / (2 + 1 / L3),
    "ndcg@10": (1 + 2 / 2) / (2 + 1 / L3),        # x at rank 3: log2(4) = 2
}


def test_retrieval_by_hand():
    m = retrieval_metrics(RUN, QRELS, ks=(2, 10))
    assert m["n_queries"] == 2  # q3 has no Good judgment: excluded
    for key in Q1:
        assert m[key] == pytest.approx((Q1[key] + Q2[key]) / 2), key
    assert set(m) == set(Q1) | {"n_queries"}


def test_query_without_good_is_excluded():
    without = retrieval_metrics(RUN, {k: v for k, v in QRELS.items() if k != "q3"}, ks=(2, 10))
    assert without == retrieval_metrics(RUN, QRELS, ks=(2, 10))
    assert retrieval_metrics({"q3": ["m"]}, {"q3": QRELS["q3"]})["n_queries"] == 0


def test_query_missing_from_run_counts_zero():
    qrels = {**QRELS, "q4": {"p": 4}}  # judged, has a Good item, never answered
    for run in (RUN, {**RUN, "q4": []}):  # missing and empty ranking are the same thing
        m = retrieval_metrics(run, qrels, ks=(2, 10))
        assert m["n_queries"] == 3
        for key in Q1:
            assert m[key] == pytest.approx((Q1[key] + Q2[key] + 0.0) / 3), key


def test_score_dict_equals_ranked_list():
    scored = {"q1": {"c": 0.1, "u": 0.5, "a": 2.0, "b": 7.0}, "q2": {"x": -3, "z": 0, "y": 4}}
    assert retrieval_metrics(scored, QRELS, ks=(2, 10)) == retrieval_metrics(RUN, QRELS, ks=(2, 10))


def test_ties_keep_given_order():
    # Equal scores: the order given wins, for every metric alike (backends disagree otherwise).
    qrels = {"q": {"x": 3, "y": 2}}
    first = retrieval_metrics({"q": {"x": 1.0, "y": 1.0}}, qrels, ks=(1,))
    second = retrieval_metrics({"q": {"y": 1.0, "x": 1.0}}, qrels, ks=(1,))
    assert first["mrr@1"] == first["hitrate@1"] == first["ndcg@1"] == 1.0
    assert second["mrr@1"] == second["hitrate@1"] == 0.0
    assert second["ndcg@1"] == pytest.approx(1 / 2)  # gain 1 where 2 was possible


def test_non_string_ids():
    m = retrieval_metrics({1: [10, 20]}, {1: {20: 3, 10: 1}}, ks=(10,))
    assert m["mrr@10"] == pytest.approx(1 / 2) and m["n_queries"] == 1


@pytest.mark.parametrize("run,qrels,ks,msg", [
    ({"q": ["a"]}, {"q": {"a": 5}}, (10,), "1..4"),
    ({"q": ["a"]}, {"q": {"a": 0}}, (10,), "1..4"),
    ({"q": ["a", "b", "a"]}, {"q": {"a": 3}}, (10,), "more than once"),
    ({"q": {"a": float("nan")}}, {"q": {"a": 3}}, (10,), "finite"),
    ({"q": "abc"}, {"q": {"a": 3}}, (10,), "ranked list"),
    ({"q": ["a"]}, {"q": {"a": 3}}, (0,), "positive"),
])
def test_retrieval_bad_input(run, qrels, ks, msg):
    with pytest.raises(ValueError, match=msg):
        retrieval_metrics(run, qrels, ks=ks)


# ---------------------------------------------------------------- JSON

def test_json_round_trip(tmp_path):
    rel = {"system": "bm25-judge", **classification_metrics([1, 3, 4], [1, 4, 4]), "x_note": "any"}
    path = write_metrics_json(tmp_path / "a" / "b" / "m.json", "relevance", "esci", "test", [rel],
                              model="qwen", seed=0)
    doc = read_metrics_json(path)
    assert doc == {"task": "relevance", "dataset": "esci", "split": "test", "rows": [rel],
                   "model": "qwen", "seed": 0}
    ret = {"system": "dense", **retrieval_metrics(RUN, QRELS, ks=(2, 10))}
    path = write_metrics_json(tmp_path / "r.json", "retrieval", "esci", "valid", [ret])
    assert read_metrics_json(path)["rows"] == [ret]


@pytest.mark.parametrize("doc,field", [
    ({"task": "ranking", "dataset": "d", "split": "s", "rows": []}, "task"),
    ({"task": "relevance", "dataset": "d", "split": "s", "rows": [{"accuracy": 0.5}]}, "rows[0].system"),
    ({"task": "relevance", "dataset": "d", "split": "s", "rows": [{"system": "m", "recall": 0.5}]},
     "rows[0].recall"),
    ({"task": "retrieval", "dataset": "d", "split": "s", "rows": [{"system": "m", "ndcg@10": 1.5}]},
     "rows[0].ndcg@10"),
    ({"task": "relevance", "dataset": "d", "split": "s", "rows": [{"system": "m", "confusion": [[1]]}]},
     "rows[0].confusion"),
    ({"task": "retrieval", "dataset": 3, "split": "s", "rows": []}, "dataset"),
])
def test_bad_file_rejected(tmp_path, doc, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError) as e:
        read_metrics_json(path)
    assert str(path) in str(e.value) and field in str(e.value)
    with pytest.raises(ValueError, match="rows|task|dataset"):  # write validates too
        write_metrics_json(tmp_path / "out.json", doc["task"], doc["dataset"], doc["split"], doc["rows"])
    assert not (tmp_path / "out.json").exists()


def test_invalid_json_rejected(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        read_metrics_json(path)


# ---------------------------------------------------------------- table

def test_format_table(capsys):
    rows = [{"system": "bm25", "ndcg@10": 0.5, "n_queries": 12}, {"system": "dense-grpo", "ndcg@10": 0.61234}]
    expected = (
        "Retrieval\n"
        "\n"
        "| system     | ndcg@10 | n_queries |\n"
        "|------------|---------|-----------|\n"
        "| bm25       |  0.5000 |        12 |\n"
        "| dense-grpo |  0.6123 |         - |"
    )
    assert format_table(rows, ["ndcg@10", "n_queries"], title="Retrieval") == expected
    print_table(rows, ["ndcg@10", "n_queries"], title="Retrieval")
    assert capsys.readouterr().out == expected + "\n"
    assert format_table(rows).splitlines()[0] == "| system     | ndcg@10 | n_queries |"


def test_fast_scores_equal_classification_metrics_on_random_grades():
    from searchrl.metrics.measures import fast_scores
    rng = np.random.default_rng(0)
    for n in (1, 5, 40, 300):
        for _ in range(20):
            t, p = rng.integers(1, 5, n), rng.integers(1, 5, n)
            if rng.random() < 0.3:
                p[:] = rng.integers(1, 3)  # degenerate predictions: a class absent, no Good predicted
            ref = classification_metrics(t.tolist(), p.tolist())
            got = fast_scores(t, p)
            for m in ("accuracy", "macro_f1", "good_f1"):
                assert got[m] == pytest.approx(ref[m], abs=1e-12), (m, t, p)
