"""Judges for Retrieval-GRPO's relevance term: who says how relevant a retrieved product is, in [0, 1].

Retrieval-GRPO's authors report that the judge decides: a 4-layer BERT relevance model as
the reward gave about no gain, their strong relevance LLM a large one. To test that, the
relevance term comes from a pluggable judge (``reward.judge``), each a callable
``judge(requests) -> [array of scores]`` for requests ``[(query, [product dicts])]``:

- ``model``: the trained relevance model (RelevanceScorer): P(Good), or the expected grade
  rescaled to [0, 1] -- the deployment setting;
- ``rules``: the rule engine's grade, (grade - 1) / 3;
- ``oracle``: the human label where the pair is judged ((grade - 1) / 3), the ``fallback``
  judge where it is not (an upper reference: labels are what the evaluation uses);
- ``bm25``: the product's BM25 score divided by the query's best over the catalogue -- a
  lexical judge, weak by design;
- ``random``: a uniform draw fixed per (query, product) -- no signal at all.

:func:`judge_quality` measures a judge the way the relevance model is measured: per-query
AUC of its score for Good (L3/L4) against the human labels of a split's judged pairs.

Simplifies: judges return one scalar per pair; the oracle's labels are those of every
split (training queries only ever meet their own).
"""

from __future__ import annotations

import hashlib

import numpy as np

from searchrl.data.schema import Dataset, pair_products
from searchrl.errors import ConfigError

JUDGES = ("model", "rules", "oracle", "bm25", "random")


class ModelJudge:
    def __init__(self, scorer, kind: str = "p_good"):
        self.scorer, self.kind = scorer, kind

    def __call__(self, requests):
        return [np.array([r["p_good"] if self.kind == "p_good" else (r["expected_grade"] - 1) / 3 for r in res])
                for res in self.scorer.score_many(requests)]


class RulesJudge:
    def __init__(self, engine=None):
        if engine is None:
            from searchrl.relevance.rules.engine import RuleEngine
            engine = RuleEngine.from_yaml()
        self.engine = engine

    def __call__(self, requests):
        return [np.array([(self.engine.judge(q, p).grade - 1) / 3 for p in prods]) for q, prods in requests]


class OracleJudge:
    """Human labels ({(query text, product id): grade}) where judged, else ``fallback``."""

    def __init__(self, labels: dict, fallback):
        self.labels, self.fallback = labels, fallback

    @classmethod
    def from_dataset(cls, ds: Dataset, fallback) -> "OracleJudge":
        pairs = ds.pairs()
        return cls({(str(q), str(p)): int(g) for q, p, g in zip(pairs["text"], pairs["product_id"], pairs["grade"])},
                   fallback)

    def __call__(self, requests):
        out = []
        for q, prods in requests:
            grades = [self.labels.get((q, str(p.get("product_id")))) for p in prods]
            missing = [p for p, g in zip(prods, grades) if g is None]
            fill = iter(self.fallback([(q, missing)])[0]) if missing else iter(())
            out.append(np.array([(g - 1) / 3 if g is not None else float(next(fill)) for g in grades]))
        return out


class BM25Judge:
    def __init__(self, bm25):
        self.bm25 = bm25

    def __call__(self, requests):
        out = []
        for q, prods in requests:
            scores = self.bm25.scores(q)
            best = max(float(scores.max()), 1e-9)
            out.append(np.asarray(self.bm25.pair_scores(q, [str(p.get("product_id")) for p in prods], scores)) / best)
        return out


class RandomJudge:
    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, requests):
        def draw(q, p):
            h = hashlib.sha256(f"{self.seed}|{q}|{p.get('product_id')}".encode()).digest()
            return int.from_bytes(h[:8], "little") / 2 ** 64
        return [np.array([draw(q, p) for p in prods]) for q, prods in requests]


def build_judge(kind: str, ds: Dataset, scorer=None, relevance: str = "p_good", fallback: str = "rules",
                bm25=None, seed: int = 0):
    """The judge ``kind`` names (module docstring); ``scorer`` is needed for ``model`` (and a model fallback)."""
    if kind not in JUDGES:
        raise ConfigError(f"judge must be one of {JUDGES}, got {kind!r}")
    if kind == "model" or (kind == "oracle" and fallback == "model"):
        if scorer is None:
            raise ConfigError(f"judge {kind!r} needs a relevance model (set reward.relevance_model)")
    if kind == "oracle":
        if fallback == "oracle":
            raise ConfigError("the oracle's fallback must be another judge")
        return OracleJudge.from_dataset(ds, build_judge(fallback, ds, scorer, relevance, bm25=bm25, seed=seed))
    if kind == "model":
        return ModelJudge(scorer, relevance)
    if kind == "rules":
        return RulesJudge()
    if kind == "bm25":
        if bm25 is None:
            from searchrl.lexical.bm25 import BM25Index
            bm25 = BM25Index(ds.products)
        return BM25Judge(bm25)
    return RandomJudge(seed)


def judge_quality(judge, ds: Dataset, split: str) -> dict:
    """Per-query AUC of the judge's score for Good on ``split``'s judged pairs, with its query-bootstrap interval."""
    from searchrl.metrics.measures import per_query_auc
    from searchrl.metrics.stats import query_bootstrap
    pairs = ds.split(split).pairs()
    products = pair_products(pairs)
    for p, pid in zip(products, pairs["product_id"]):
        p["product_id"] = str(pid)
    groups = pairs.groupby("text", sort=False).indices
    scores = np.zeros(len(pairs))
    for (q, idx), s in zip(groups.items(), judge([(q, [products[i] for i in idx]) for q, idx in groups.items()])):
        scores[idx] = s
    auc = per_query_auc(pairs["grade"].tolist(), scores, pairs["query_id"].tolist())
    iv = query_bootstrap(list(auc.values()))
    return {"auc_per_query": iv.mean, "lo": iv.lo, "hi": iv.hi, "queries": iv.n}
