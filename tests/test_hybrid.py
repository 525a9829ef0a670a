"""Hybrid retrieval: the pure fusion (ties, short routes, duplicates), the route-added metrics on hand-made runs,
and HybridRetriever / the Python API over the tiny catalogue."""

import math

import numpy as np
import pytest

from searchrl.errors import ConfigError
from searchrl.metrics.measures import (
    added_recall,
    added_recall_per_query,
    bm25_overlap,
    bm25_overlap_per_query,
    lost_recall,
    retrieval_metrics,
    retrieval_metrics_per_query,
)
from searchrl.retrieval.hybrid import FUSION_GRID, FusionConfig, Hit, fuse, fuse_config, regrade_hits


def ids(hits):
    return [h.product_id for h in hits]


# ---------------------------------------------------------------- fuse

def test_rrf_sums_reciprocal_ranks_of_the_routes_that_found_an_item():
    runs = {"bm25": [("a", 9.0), ("b", 5.0), ("c", 1.0)], "dense": [("b", 0.9), ("d", 0.8), ("a", 0.1)]}
    hits = fuse(runs, 10, rrf_k=60)
    score = {h.product_id: h.score for h in hits}
    assert score["a"] == pytest.approx(1 / 61 + 1 / 63) and score["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert score["c"] == pytest.approx(1 / 63) and score["d"] == pytest.approx(1 / 62)
    assert ids(hits) == ["b", "a", "d", "c"]
    by = {h.product_id: h for h in hits}
    assert by["a"].routes == ("bm25", "dense") and by["a"].ranks == {"bm25": 1, "dense": 3}
    assert by["c"].routes == ("bm25",) and by["d"].routes == ("dense",)
    assert ids(fuse(runs, 2)) == ["b", "a"]  # cut to k after fusing


def test_weights_move_the_ranking_towards_a_route():
    runs = {"bm25": [("a", 2.0), ("b", 1.0)], "dense": [("b", 0.9), ("a", 0.8)]}
    assert ids(fuse(runs, 2, weights={"bm25": 1.0, "dense": 2.0})) == ["b", "a"]
    assert ids(fuse(runs, 2, weights={"bm25": 2.0, "dense": 1.0})) == ["a", "b"]


def test_ties_break_by_best_single_route_rank_then_id():
    # score fusion: every item normalises to 1 (b and a2 share the dense top score), so all three tie on score
    runs = {"bm25": [("c", 5.0)], "dense": [("b", 0.9), ("a2", 0.9)]}
    hits = fuse(runs, 3, method="score")
    assert [h.score for h in hits] == [1.0, 1.0, 1.0]
    assert ids(hits) == ["b", "c", "a2"]  # b and c are rank 1 somewhere (b < c by id); a2 is rank 2 at best
    # RRF: one item first in each route ties exactly; the id decides
    assert ids(fuse({"bm25": [("z", 1.0)], "dense": [("y", 1.0)]}, 2)) == ["y", "z"]


def test_route_order_cannot_change_the_result():
    runs = {"bm25": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "dense": [("c", 0.5), ("a", 0.4), ("b", 0.3)],
            "third": [("b", 7.0), ("c", 6.0), ("a", 5.0)]}
    for method in ("rrf", "score"):
        forward = fuse(runs, 3, method=method)
        backward = fuse(dict(reversed(list(runs.items()))), 3, method=method)
        assert ids(forward) == ids(backward) and [h.score for h in forward] == [h.score for h in backward]


def test_sums_are_exact_rounded_so_a_tie_stays_a_tie():
    # 0.1 + 0.2 + 0.3 summed left to right is 0.6000000000000001, right to left 0.6: only an exactly rounded sum
    # (math.fsum) gives z the 0.6 that b has, whatever the order of the routes; the tie then goes to the id
    runs = {"r1": [("z", 1.0)], "r2": [("z", 1.0)], "r3": [("z", 1.0)], "r4": [("b", 1.0)]}
    weights = {"r1": 0.1, "r2": 0.2, "r3": 0.3, "r4": 0.6}
    for order in (runs, dict(reversed(list(runs.items())))):
        hits = fuse(order, 2, method="score", weights=weights)
        assert ids(hits) == ["b", "z"] and [h.score for h in hits] == [0.6, 0.6]


def test_a_route_with_fewer_than_k_or_nothing_contributes_what_it_has():
    hits = fuse({"bm25": [("a", 1.0)], "dense": [("b", 0.9), ("c", 0.8)]}, 10)
    assert ids(hits) == ["a", "b", "c"]  # three candidates in all: fewer than k, none invented
    only_dense = fuse({"bm25": [], "dense": [("b", 0.9), ("c", 0.8)]}, 5, method="score")
    assert ids(only_dense) == ["b", "c"] and [h.routes for h in only_dense] == [("dense",), ("dense",)]
    assert fuse({"bm25": [], "dense": []}, 3) == []


def test_duplicates_within_a_route_keep_their_best_rank():
    hits = fuse({"bm25": [("a", 3.0), ("b", 2.0), ("a", 1.5), ("c", 1.0)]}, 10)
    by = {h.product_id: h for h in hits}
    assert by["a"].ranks == {"bm25": 1} and by["c"].ranks == {"bm25": 3}  # the copy is dropped before ranking
    assert by["c"].score == pytest.approx(1 / 63) and len(hits) == 3


def test_depth_cuts_each_route_before_fusing():
    runs = {"bm25": [("a", 3.0), ("b", 2.0), ("c", 1.0)], "dense": [("c", 0.9), ("d", 0.1)]}
    hits = fuse(runs, 10, depths={"bm25": 2, "dense": 2})
    assert ids(hits) == ["a", "c", "b", "d"] and {h.product_id: h for h in hits}["c"].routes == ("dense",)
    # fuse_config never cuts a route below the k asked for
    cfg = FusionConfig(depth_bm25=1, depth_dense=1)
    assert len(fuse_config({"bm25": runs["bm25"], "dense": runs["dense"]}, 4, cfg)) == 4


def test_score_fusion_min_max_normalises_each_route():
    runs = {"bm25": [("a", 10.0), ("b", 6.0), ("c", 2.0)], "dense": [("c", 0.9), ("b", 0.5), ("d", 0.1)]}
    hits = fuse(runs, 4, method="score", weights={"bm25": 0.5, "dense": 0.5})
    score = {h.product_id: h.score for h in hits}
    assert score == pytest.approx({"a": 0.5, "b": 0.5 * 0.5 + 0.5 * 0.5, "c": 0.5, "d": 0.0})
    assert ids(hits) == ["a", "c", "b", "d"]  # a, c tie at 0.5 (both rank 1 somewhere) -> id; then b (0.5: rank 2)


def test_bad_fusion_inputs_are_refused():
    runs = {"bm25": [("a", 1.0)]}
    for kwargs in ({"k": 0}, {"k": 2, "method": "borda"}, {"k": 2, "rrf_k": -1.0},
                   {"k": 2, "weights": {"bm25": -1.0}}, {"k": 2, "depths": {"bm25": 0}}):
        with pytest.raises(ValueError):
            fuse(runs, **kwargs)
    with pytest.raises(ValueError, match="finite"):
        fuse({"bm25": [("a", float("nan"))]}, 2, method="score")
    assert ids(fuse({"bm25": [("a", float("nan"))]}, 2)) == ["a"]  # RRF reads ranks only
    with pytest.raises(ConfigError):
        FusionConfig(method="max")
    with pytest.raises(ConfigError):
        FusionConfig(w_dense=float("inf"))


def test_fusion_leaves_its_inputs_alone_and_is_repeatable():
    runs = {"bm25": [("a", 3.0), ("a", 1.0)], "dense": [("b", 0.9)]}
    before = {r: list(v) for r, v in runs.items()}
    assert fuse(runs, 3) == fuse(runs, 3) and runs == before


def test_the_grid_holds_the_documented_settings():
    assert len(FUSION_GRID) == 9 and FusionConfig() in FUSION_GRID
    assert {c.method for c in FUSION_GRID} == {"rrf", "score"}


def test_regrade_sorts_by_p_good_then_score():
    class Scorer:
        def score_many(self, requests):
            return [[{"p_good": {"a": 0.2, "b": 0.9, "c": 0.2}[p["product_id"]], "grade": 1, "tier": 2}
                     for p in prods] for _, prods in requests]
    hits = [Hit("a", 0.5, {"bm25": 1}), Hit("b", 0.4, {"dense": 1}), Hit("c", 0.6, {"dense": 2})]
    by_id = {p: {"product_id": p, "title": p} for p in "abc"}
    out = regrade_hits([("q", hits), ("empty", [])], Scorer(), by_id)
    assert ids(out[0]) == ["b", "c", "a"] and out[1] == [] and out[0][0].p_good == 0.9


# ---------------------------------------------------------------- metrics of what a route adds

QRELS = {"q1": {"a": 4, "b": 3, "c": 4, "d": 4, "x": 1}, "q2": {"a": 2, "x": 1}, "q3": {"c": 4, "e": 3}}
BM25 = {"q1": ["a", "x", "c"], "q2": ["a"], "q3": ["e", "z"]}
HYBRID = {"q1": ["b", "a", "d"], "q2": ["x", "a"], "q3": ["c", "e"]}


def test_added_recall_counts_good_items_bm25_misses_over_all_good_items():
    at2 = added_recall_per_query(HYBRID, BM25, QRELS, 2)
    # q1: Good {a,b,c,d}; hybrid top 2 {b,a}, BM25 top 2 {a,x}: b is added -> 1/4. q2 has no Good item: left out.
    # q3: Good {c,e}; hybrid {c,e}, BM25 {e,z}: c is added -> 1/2
    assert at2 == {"q1": 0.25, "q3": 0.5}
    assert added_recall(HYBRID, BM25, QRELS, 2) == pytest.approx(0.375)
    assert added_recall_per_query(HYBRID, BM25, QRELS, 3)["q1"] == pytest.approx(2 / 4)  # b, d (c is BM25's @3)
    assert added_recall(BM25, BM25, QRELS, 3) == 0.0  # a route adds nothing to itself
    assert added_recall_per_query({}, BM25, QRELS, 2) == {"q1": 0.0, "q3": 0.0}  # no answer adds nothing
    qrels = {"a": {"x": 4}, "b": {"y": 4}, "c": {"z": 4, "w": 4, "v": 3, "u": 4}}
    run = {"a": ["x"], "b": ["n"], "c": ["z", "w"]}
    assert added_recall(run, {"c": ["w"]}, qrels, 2) == pytest.approx((1 + 0 + 1 / 4) / 3)  # a mean over queries


def test_hitrate_difference_is_added_minus_lost_recall():
    for k in (1, 2, 3):
        hitrate = f"hitrate@{k}"
        gain = retrieval_metrics(HYBRID, QRELS, (k,))[hitrate] - retrieval_metrics(BM25, QRELS, (k,))[hitrate]
        assert gain == pytest.approx(added_recall(HYBRID, BM25, QRELS, k) - lost_recall(HYBRID, BM25, QRELS, k))
    assert lost_recall(HYBRID, BM25, QRELS, 3) == pytest.approx((1 / 4 + 0) / 2)  # q1 loses c


def test_bm25_overlap_is_the_share_of_the_routes_top_k_that_bm25_returns():
    assert bm25_overlap_per_query(HYBRID, BM25, 2) == {"q1": 0.5, "q2": 0.5, "q3": 0.5}
    short = {"q1": ["a"], "q2": [], "q3": ["c", "e", "z"]}
    # q1: a run shorter than K divides by its own length; q2 retrieved nothing and is left out
    assert bm25_overlap_per_query(short, BM25, 3) == {"q1": 1.0, "q3": pytest.approx(2 / 3)}
    assert bm25_overlap(short, BM25, 3) == pytest.approx((1 + 2 / 3) / 2)
    assert bm25_overlap({"q": {"a": 0.1, "b": 0.9}}, {"q": ["b"]}, 1) == 1.0  # a scored run is ranked by score
    assert bm25_overlap({}, BM25, 3) == 0.0


def test_per_query_retrieval_metrics_average_to_the_macro_mean():
    per = retrieval_metrics_per_query(HYBRID, QRELS, (1, 3))
    means = retrieval_metrics(HYBRID, QRELS, (1, 3))
    assert set(per["ndcg@3"]) == {"q1", "q3"}
    for key, values in per.items():
        assert np.mean(list(values.values())) == pytest.approx(means[key]), key
    assert per["hitrate@1"] == {"q1": 0.25, "q3": 0.5}


def test_route_metrics_refuse_bad_input():
    for bad_k in (0, 2.5, "3", True):
        with pytest.raises(ValueError):
            added_recall(HYBRID, BM25, QRELS, bad_k)
    with pytest.raises(ValueError, match="more than once"):
        bm25_overlap({"q1": ["a", "a"]}, BM25, 2)
    with pytest.raises(ValueError, match="grade"):
        added_recall(HYBRID, BM25, {"q1": {"a": 5}}, 2)


# ---------------------------------------------------------------- HybridRetriever on the tiny catalogue

@pytest.fixture(scope="module")
def tiny_hybrid(tiny_data, tmp_path_factory):
    from searchrl.data.schema import load_dataset
    from searchrl.retrieval.hybrid import HybridRetriever
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEARCHRL_HOME", str(tmp_path_factory.mktemp("hybrid_home")))
        ds = load_dataset(tiny_data)
        return HybridRetriever(None, ds, progress=False), ds


def test_hybrid_retriever_fuses_its_two_routes(tiny_hybrid):
    hybrid, _ = tiny_hybrid
    queries = ["bluetooth speaker", "hp ink", "laptop bag"]
    batch = hybrid.search_batch(queries, 5)
    for q, hits in zip(queries, batch):
        bm25, dense = hybrid.bm25.search([q], 100)[0], hybrid.dense.search([q], 100)[0]
        expected = fuse({"bm25": bm25, "dense": dense}, 5)
        assert ids(hits) == ids(expected) and [h.score for h in hits] == pytest.approx([h.score for h in expected])
        assert ids(hybrid.search(q, 5)) == ids(hits)
        lexical = {p for p, _ in bm25}
        for h in hits:
            assert ("bm25" in h.routes) == (h.product_id in lexical) and "dense" in h.routes  # 8 products < depth
        for route, alone in (("dense", dense), ("bm25", bm25)):
            served = hybrid.search(q, 3, route=route)
            assert ids(served) == [p for p, _ in alone[:3]] and all(h.routes == (route,) for h in served)
            assert [h.score for h in served] == pytest.approx([s for _, s in alone[:3]])
    assert hybrid.search("hp ink", 1)[0].product_id == "p8"
    with pytest.raises(ConfigError, match="route"):
        hybrid.search("hp ink", 3, route="both")
    with pytest.raises(ConfigError, match="scorer"):
        hybrid.search("hp ink", 3, regrade=True)


def test_hybrid_retriever_checks_its_catalogue(tiny_hybrid):
    from searchrl.lexical.bm25 import BM25Index
    from searchrl.retrieval.hybrid import HybridRetriever
    hybrid, ds = tiny_hybrid
    with pytest.raises(ConfigError, match="another catalogue"):
        HybridRetriever(hybrid.dense, ds.products.iloc[:4])
    with pytest.raises(ConfigError, match="another catalogue"):
        HybridRetriever(hybrid.dense, bm25=BM25Index(ds.products.iloc[:4]))
    with pytest.raises(ConfigError, match="scorer"):
        HybridRetriever(hybrid.dense, fusion=FusionConfig(regrade=True))


def test_evaluate_retrieval_scores_the_hybrid_and_what_it_adds(tiny_hybrid):
    from searchrl.retrieval.evaluate import evaluate_retrieval
    hybrid, ds = tiny_hybrid
    split = next(s for s in ("test", "valid", "train") if len(ds.split(s).queries))
    row = evaluate_retrieval(hybrid, ds, split, (5,), system="hybrid")
    lexical = evaluate_retrieval(hybrid.bm25, ds, split, (5,), bm25=hybrid.bm25, system="bm25")
    assert lexical["added_recall@5"] == 0.0 and lexical["bm25_overlap@5"] == pytest.approx(1.0)
    for key in ("hitrate@5", "ndcg@10", "added_recall@5", "bm25_overlap@5"):
        assert 0.0 <= row[key] <= 1.0 and not math.isnan(row[key])


def test_python_search_serves_the_hybrid_by_default(tiny_data, monkeypatch, tmp_path):
    from searchrl.retrieval.hybrid import search
    monkeypatch.setenv("SEARCHRL_HOME", str(tmp_path))
    hybrid = search("all-MiniLM-L6-v2", "laptop bag", 4, tiny_data, progress=False)
    dense = search("all-MiniLM-L6-v2", "laptop bag", 4, tiny_data, progress=False, route="dense")
    bm25 = search("all-MiniLM-L6-v2", "laptop bag", 4, tiny_data, progress=False, route="bm25")
    assert [r["rank"] for r in hybrid] == [1, 2, 3, 4] and hybrid[0]["product_id"] == "p3"
    assert any(len(r["routes"]) == 2 for r in hybrid) and all(r["routes"] == ["dense"] for r in dense)
    assert all(r["routes"] == ["bm25"] for r in bm25)
    assert [r["product_id"] for r in hybrid] != [r["product_id"] for r in dense] or \
        [r["score"] for r in hybrid] != [r["score"] for r in dense]  # fused scores, not the cosine


def test_the_search_command_takes_a_route(tiny_data, monkeypatch, tmp_path, capsys):
    from searchrl.cli import main
    monkeypatch.setenv("SEARCHRL_HOME", str(tmp_path))
    base = ["search", "laptop bag", "--retriever", "all-MiniLM-L6-v2", "--data", str(tiny_data), "--k", "3"]
    assert main(base) in (0, None)
    hybrid = capsys.readouterr().out.strip().splitlines()
    assert len(hybrid) == 3 and hybrid[0].startswith("1.") and "p3" in hybrid[0] and "(bm25+dense)" in hybrid[0]
    assert main(base + ["--route", "dense"]) in (0, None)
    dense = capsys.readouterr().out.strip().splitlines()
    assert len(dense) == 3 and all(line.endswith("(dense)") for line in dense)
    with pytest.raises(SystemExit):
        main(base + ["--route", "sparse"])


def test_a_retriever_without_a_catalogue_is_a_user_error_naming_the_directory(tmp_path):
    from searchrl.errors import UserError
    from searchrl.serve.search_api import SearchService
    with pytest.raises(UserError, match=f"{tmp_path}: no data_dir in retriever_config.yaml; pass --data DIR"):
        SearchService.load(tmp_path)
