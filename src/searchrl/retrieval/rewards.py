"""The multi-objective reward of Retrieval-GRPO, per (query, retrieved product).

reward = w_rel * relevance + w_q * quality + w_x * exclusivity, each term in [0, 1]:

- relevance: a judge's score of the pair (judges.py, ``judge``): by default the deployment
  relevance scorer (relevance.scorer.RelevanceScorer), P(Good) = P(L3) + P(L4), or the
  expected grade rescaled, (E[grade] - 1) / 3; or the rule engine, human labels (oracle),
  BM25, or random -- judges of known quality for the "the judge decides" experiment.
  Cached per (query text, product id), so a product retrieved again costs nothing; the
  cache can be saved and reloaded (JSON lines).
- quality: the product's ``quality`` column where set. Chorus (Icecat) has no ratings or
  sales, so where it is null a documented proxy is used: catalogue completeness, the share
  of six fields that are filled (title, brand, category, description, attributes, price).
  Better-documented listings are, as a rule, the ones a shop wants to show.
- exclusivity: how far the item lies outside the lexical route. ``bm25`` (default): 1 if the
  product is not among BM25's top K' for the query, else 0 (the paper's "items the inverted
  index would not retrieve"). ``overlap``: 1 - the share of the query's (stemmed) terms that
  occur in the product text (the paper's approximation, needs no index).

Simplifies: the terms are summed with fixed weights (no per-term normalisation across the
batch); relevance is P(Good) of one scorer call per pair, with no CoT.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import Stemmer

from searchrl.data.schema import product_text
from searchrl.errors import ConfigError

RELEVANCE_KINDS = ("p_good", "expected_grade")
EXCLUSIVITY_KINDS = ("bm25", "overlap")
COMPLETENESS_FIELDS = ("title", "brand", "category", "description", "attributes", "price")
_WORD = re.compile(r"\w+")
_STEMMER = Stemmer.Stemmer("english")


@dataclass
class RewardConfig:
    w_rel: float = 1.0  # weight of relevance (the judge's score of the pair)
    judge: str = "model"  # who scores relevance: model | rules | oracle (human labels, else oracle_fallback) |
    #   bm25 | random (judges.py)
    oracle_fallback: str = "rules"  # judge=oracle: the judge of pairs without a human label (model | rules | bm25 | random)
    relevance_model: str = ""  # relevance model directory for RelevanceScorer.load; needed by judge=model
    relevance: str = "p_good"  # judge=model: p_good = P(L3) + P(L4) | expected_grade = (E[grade] - 1) / 3
    scorer_batch_size: int = 32  # pairs per scorer forward pass
    w_q: float = 0.1  # weight of product quality (quality column, else the completeness proxy)
    w_x: float = 0.1  # weight of exclusivity (items the lexical route would not retrieve)
    exclusivity: str = "bm25"  # bm25 = 1 if not in BM25's top bm25_k | overlap = 1 - query-term share in the product
    bm25_k: int = 100  # K': depth of the BM25 route that exclusivity is measured against

    def __post_init__(self):
        from searchrl.retrieval.judges import JUDGES
        if self.judge not in JUDGES or self.oracle_fallback not in JUDGES:
            raise ConfigError(f"judge and oracle_fallback must be one of {JUDGES}, got {self.judge!r}, "
                              f"{self.oracle_fallback!r}")
        if self.relevance not in RELEVANCE_KINDS:
            raise ConfigError(f"relevance must be one of {RELEVANCE_KINDS}, got {self.relevance!r}")
        if self.exclusivity not in EXCLUSIVITY_KINDS:
            raise ConfigError(f"exclusivity must be one of {EXCLUSIVITY_KINDS}, got {self.exclusivity!r}")

    @property
    def needs_model(self) -> bool:
        """Whether the reward needs a trained relevance model (judge=model, or model as the oracle's fallback)."""
        return bool(self.w_rel) and (self.judge == "model" or (self.judge == "oracle" and self.oracle_fallback == "model"))


def _filled(v) -> bool:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return False
    return str(v).strip() not in ("", "{}", "[]")


def product_quality(products: pd.DataFrame) -> dict[str, float]:
    """product_id -> quality in [0, 1]: the ``quality`` column where set, else field completeness."""
    out = {}
    for r in products.to_dict("records"):
        q = r.get("quality")
        if _filled(q):
            out[str(r["product_id"])] = float(np.clip(float(q), 0.0, 1.0))
        else:
            out[str(r["product_id"])] = sum(_filled(r.get(f)) for f in COMPLETENESS_FIELDS) / len(COMPLETENESS_FIELDS)
    return out


def terms(text: str) -> set[str]:
    """Lower-cased, Snowball-stemmed word set (the overlap measure's notion of a term)."""
    return set(_STEMMER.stemWords(_WORD.findall(str(text).lower())))


def term_overlap(query: str, text: str) -> float:
    """Share of the query's terms found in ``text`` (0 for an empty query)."""
    q = terms(query)
    return len(q & terms(text)) / len(q) if q else 0.0



class RetrievalReward:
    """Reward of (query, product id) pairs; see the module docstring. ``judge``: a judges.py judge; or ``scorer``, a
    RelevanceScorer used as the model judge."""

    def __init__(self, cfg: RewardConfig, products: pd.DataFrame, scorer=None, bm25=None, judge=None):
        if judge is None and scorer is not None:
            from searchrl.retrieval.judges import ModelJudge
            judge = ModelJudge(scorer, cfg.relevance)
        if cfg.w_rel and judge is None:
            raise ConfigError("w_rel > 0 needs a judge: a relevance scorer (reward.relevance_model) or reward.judge="
                              "rules|oracle|bm25|random")
        if cfg.w_x and cfg.exclusivity == "bm25" and bm25 is None:
            from searchrl.lexical.bm25 import BM25Index
            bm25 = BM25Index(products)
        self.cfg, self.judge, self.bm25 = cfg, judge, bm25
        self.products = {str(r["product_id"]): r for r in products.to_dict("records")}
        self.quality = product_quality(products)
        self.cache: dict[tuple[str, str], float] = {}  # (query, product id) -> relevance in [0, 1]
        self._lexical: dict[str, set[str]] = {}  # query -> BM25 top-K' product ids

    # ---------------------------------------------------------------- terms

    def relevance(self, queries: list[str], pids: list[list[str]]) -> list[np.ndarray]:
        """Per query, [K] relevance of its products; only pairs not yet cached are scored."""
        todo: dict[str, list[str]] = {}
        for q, ps in zip(queries, pids):
            for p in ps:
                if (q, p) not in self.cache and p not in todo.setdefault(q, []):
                    todo[q].append(p)
        requests = [(q, [self.products[p] for p in ps]) for q, ps in todo.items() if ps]
        if requests:
            for (q, prods), values in zip(requests, self.judge(requests)):
                for prod, v in zip(prods, values):
                    self.cache[(q, str(prod["product_id"]))] = float(v)
        return [np.array([self.cache[(q, p)] for p in ps]) for q, ps in zip(queries, pids)]

    def lexical_top(self, query: str) -> set[str]:
        if query not in self._lexical:
            self._lexical[query] = {p for p, _ in self.bm25.search([query], k=self.cfg.bm25_k)[0]}
        return self._lexical[query]

    def exclusivity(self, query: str, pids: list[str]) -> np.ndarray:
        if self.cfg.exclusivity == "bm25":
            top = self.lexical_top(query)
            return np.array([0.0 if p in top else 1.0 for p in pids])
        return np.array([1.0 - term_overlap(query, product_text(self.products[p])) for p in pids])

    # ---------------------------------------------------------------- total

    def __call__(self, queries: list[str], pids: list[list[str]]) -> tuple[list[np.ndarray], dict[str, float]]:
        """(per query [K] total rewards, batch means of each term for logging)."""
        zeros = [np.zeros(len(ps)) for ps in pids]
        rel = self.relevance(queries, pids) if self.cfg.w_rel else zeros
        qual = [np.array([self.quality[p] for p in ps]) for ps in pids]
        excl = [self.exclusivity(q, ps) for q, ps in zip(queries, pids)] if self.cfg.w_x else zeros
        total = [self.cfg.w_rel * r + self.cfg.w_q * q + self.cfg.w_x * x for r, q, x in zip(rel, qual, excl)]
        mean = lambda xs: float(np.mean(np.concatenate(xs))) if xs else 0.0  # noqa: E731
        return total, {"reward": mean(total), "reward_relevance": mean(rel), "reward_quality": mean(qual),
                       "reward_exclusivity": mean(excl)}

    # ---------------------------------------------------------------- cache file

    def save_cache(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({"query": q, "product_id": p, "relevance": v}) + "\n"
                               for (q, p), v in self.cache.items()))
        tmp.replace(path)

    def load_cache(self, path: str | Path) -> int:
        """Add the pairs of a saved cache; returns how many were read (0 when the file does not exist)."""
        path = Path(path)
        if not path.exists():
            return 0
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for r in rows:
            self.cache[(r["query"], str(r["product_id"]))] = float(r["relevance"])
        return len(rows)
