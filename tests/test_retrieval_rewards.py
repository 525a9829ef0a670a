"""The R-GRPO reward terms: quality proxy, exclusivity (BM25 / overlap), cached relevance, weighting."""

import numpy as np
import pandas as pd
import pytest

from searchrl.data.schema import load_dataset
from searchrl.retrieval.rewards import RetrievalReward, RewardConfig, product_quality, term_overlap


def test_quality_column_wins_else_completeness():
    products = pd.DataFrame({"product_id": ["a", "b"], "title": ["x", "y"], "brand": ["B", ""],
                             "category": ["c", ""], "description": ["d", None], "attributes": ['{"k": 1}', "{}"],
                             "price": [1.0, None], "quality": [0.3, None]})
    q = product_quality(products)
    assert q["a"] == pytest.approx(0.3) and q["b"] == pytest.approx(1 / 6)  # only the title is filled


def test_exclusivity_bm25_and_overlap(tiny_data):
    ds = load_dataset(tiny_data)
    r = RetrievalReward(RewardConfig(w_rel=0.0, w_q=0.0, w_x=1.0, bm25_k=2), ds.products)
    lexical = r.lexical_top("laptop bag")
    assert "p3" in lexical and len(lexical) <= 2
    total, parts = r(["laptop bag"], [["p3", "p5"]])
    assert total[0].tolist() == [0.0, 1.0] and parts["reward_exclusivity"] == 0.5
    assert term_overlap("wireless mice", "Logitech wireless mouse") == 0.5  # "mice" does not stem to "mous"
    o = RetrievalReward(RewardConfig(w_rel=0.0, w_q=0.0, w_x=1.0, exclusivity="overlap"), ds.products)
    assert o.exclusivity("speaker", ["p5", "p6"]).tolist() == [0.0, 1.0]


def test_relevance_is_scored_once_per_pair_and_weighted(tiny_data, tiny_model_dir, tmp_path):
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    ds = load_dataset(tiny_data)
    scorer = RelevanceScorer.load(tiny_model_dir)
    calls = []
    real = scorer.score_many
    scorer.score_many = lambda reqs: calls.append(sum(len(p) for _, p in reqs)) or real(reqs)
    cfg = RewardConfig(w_rel=2.0, w_q=0.5, w_x=0.0)
    r = RetrievalReward(cfg, ds.products, scorer)
    total, parts = r(["laptop", "laptop"], [["p1", "p2"], ["p2", "p3"]])
    assert calls == [3]  # p2 for "laptop" only once
    direct = [x["p_good"] for x in scorer.score("laptop", [r.products["p1"], r.products["p2"]])]
    np.testing.assert_allclose(total[0], 2.0 * np.array(direct) + 0.5 * 0.5, rtol=1e-5)  # quality proxy: 3/6
    r(["laptop"], [["p1", "p3"]])
    assert calls == [3]  # all cached
    r.save_cache(tmp_path / "cache.jsonl")
    fresh = RetrievalReward(cfg, ds.products, scorer)
    assert fresh.load_cache(tmp_path / "cache.jsonl") == 3 and fresh.cache == r.cache
    with pytest.raises(ValueError, match="relevance scorer"):
        RetrievalReward(cfg, ds.products, None)


def test_judges_of_known_quality_rank_as_expected(tiny_data):
    """oracle (human labels) is perfect on judged pairs, random carries no signal, and every judge plugs into the
    reward; the oracle falls back to another judge for unjudged pairs."""
    from searchrl.data.schema import load_dataset
    from searchrl.retrieval.judges import OracleJudge, RandomJudge, build_judge, judge_quality
    from searchrl.retrieval.rewards import RetrievalReward, RewardConfig
    ds = load_dataset(tiny_data)
    oracle = build_judge("oracle", ds)
    q = judge_quality(oracle, ds, "train")
    assert q["auc_per_query"] == 1.0 and q["queries"] > 0
    rules, bm25 = judge_quality(build_judge("rules", ds), ds, "train"), judge_quality(build_judge("bm25", ds), ds, "train")
    assert 0.5 < rules["auc_per_query"] <= 1.0 and 0.0 <= bm25["auc_per_query"] <= 1.0
    rnd = RandomJudge(seed=3)
    a = rnd([("laptop", [{"product_id": "p1"}, {"product_id": "p2"}])])[0]
    assert (a == rnd([("laptop", [{"product_id": "p1"}, {"product_id": "p2"}])])[0]).all()  # fixed per pair
    assert not (a == RandomJudge(seed=4)([("laptop", [{"product_id": "p1"}, {"product_id": "p2"}])])[0]).all()
    calls = []
    fallback = lambda reqs: calls.append(reqs) or [[0.5] * len(p) for _, p in reqs]  # noqa: E731
    labelled = OracleJudge({("laptop", "p1"): 4, ("laptop", "p3"): 2}, fallback)
    out = labelled([("laptop", [{"product_id": "p1"}, {"product_id": "p9"}, {"product_id": "p3"}])])[0]
    assert out.tolist() == pytest.approx([1.0, 0.5, 1 / 3]) and [p["product_id"] for p in calls[0][0][1]] == ["p9"]
    reward = RetrievalReward(RewardConfig(judge="rules", w_q=0, w_x=0), ds.products, judge=build_judge("rules", ds))
    total, parts = reward(["laptop"], [["p1", "p4"]])
    assert total[0][0] == 1.0 and total[0][1] < 0.5 and parts["reward_relevance"] == pytest.approx(total[0].mean())
    with pytest.raises(ValueError, match="judge"):
        RewardConfig(judge="crowd")
