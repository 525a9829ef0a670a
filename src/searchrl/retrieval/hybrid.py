"""Hybrid retrieval: the lexical route (BM25) and the dense route fused into one ranking.

A dense retriever is judged by what it adds to BM25, so it is served and evaluated beside it:
:class:`HybridRetriever` holds a :class:`~searchrl.lexical.bm25.BM25Index` and a dense
:class:`~searchrl.retrieval.evaluate.Retriever` over the same catalogue, takes each route's top
``depth`` candidates, fuses them with :func:`fuse` and, optionally, re-grades the fused top k
with the relevance model (P(Good) first, then the fused score, as ``/v1/search`` re-grades).
It also serves either route alone (``route="dense" | "bm25"``); :func:`search` is ``searchrl search``
and the Python API's one-query call (the hybrid by default).

:func:`fuse` is pure and defined for any input:

- a route's list is ranked best first; an id listed twice keeps its first (best) place, and the
  later copies are dropped before ranks are counted (ranks 1..n without gaps); only the first
  ``depth`` ids of a route count;
- ``rrf`` (reciprocal-rank fusion): fused(d) = sum over the routes r that found d of
  w_r / (rrf_k + rank_r(d));
- ``score`` (weighted score fusion): each route's scores are min-max normalised over its own
  candidates for the query, (s - min) / (max - min) (all equal, or one candidate: 1), and
  fused(d) = sum_r w_r * norm_r(d); a route's last candidate thus adds 0, as a route that did not
  find d does;
- a route that returns fewer than its depth (BM25 leaves zero-score items out) simply
  contributes fewer candidates; the fused list holds at most k ids;
- ties: higher fused score first, then the best (smallest) single-route rank, then the id.
  Sums are exact-rounded (math.fsum), so the order of the routes cannot break a tie.

:func:`choose_fusion` scores a small grid of fusion settings (:data:`FUSION_GRID`) on a split's
queries; the :class:`FusionConfig` defaults are its choice on Chorus's valid split.

Simplifies: two routes with fixed weights (no per-query routing or learned fusion); min-max
normalisation per query (no score calibration across queries); re-grading covers the fused top
k only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from searchrl.data.schema import Dataset, load_dataset
from searchrl.errors import ConfigError
from searchrl.lexical.bm25 import BM25Index
from searchrl.metrics.measures import retrieval_metrics
from searchrl.retrieval.evaluate import Retriever, saved_config

FUSION_METHODS = ("rrf", "score")
ROUTES = ("hybrid", "dense", "bm25")  # what HybridRetriever.search serves


@dataclass
class FusionConfig:
    # Defaults chosen on Chorus's valid split (27 queries, whole catalogue; zero-shot and SFT dense routes) by
    # `python -m experiments.hybrid_retrieval_cv --choose-fusion --data DIR` over FUSION_GRID: RRF k=60, equal
    # weights, nDCG@10 0.790 averaged over the two (BM25 alone 0.730; docs/results/hybrid_fusion.md).
    method: str = "rrf"  # rrf = reciprocal-rank fusion | score = weighted sum of min-max normalised scores
    rrf_k: float = 60.0  # rrf: the rank constant k in w / (k + rank); larger = flatter over ranks
    w_bm25: float = 1.0  # weight of the BM25 route
    w_dense: float = 1.0  # weight of the dense route
    depth_bm25: int = 100  # candidates BM25 contributes per query (at least the k asked for)
    depth_dense: int = 100  # candidates the dense route contributes per query (at least the k asked for)
    regrade: bool = False  # re-sort the fused top k by the relevance model's P(Good) (needs a scorer)

    def __post_init__(self):
        if self.method not in FUSION_METHODS:
            raise ConfigError(f"fusion method must be one of {FUSION_METHODS}, got {self.method!r}")
        for name in ("rrf_k", "w_bm25", "w_dense"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"fusion {name} must be a finite number >= 0, got {v!r}")
        if self.depth_bm25 < 1 or self.depth_dense < 1:
            raise ConfigError(f"fusion depths must be >= 1, got {self.depth_bm25}, {self.depth_dense}")

    def label(self) -> str:
        if self.method == "rrf":
            return f"rrf k={self.rrf_k:g} w_dense={self.w_dense:g}"
        return f"score w_bm25={self.w_bm25:g} w_dense={self.w_dense:g}"


# The grid choose_fusion scores (depths fixed at 100 each, the main table's deepest cut-off): RRF with k in
# {10, 60} and the dense weight in {0.5, 1, 2} (BM25's 1), and score fusion with the dense share in {0.3, 0.5, 0.7}.
FUSION_GRID = tuple([FusionConfig("rrf", k, 1.0, w) for k in (10.0, 60.0) for w in (0.5, 1.0, 2.0)]
                    + [FusionConfig("score", 60.0, round(1 - w, 2), w) for w in (0.3, 0.5, 0.7)])


@dataclass
class Hit:
    """One result: the product, its score (fused, or the route's own), and its rank in each route that found it."""
    product_id: str
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # route -> 1-based rank in that route's list
    p_good: float | None = None  # re-graded only
    grade: int | None = None
    tier: int | None = None

    @property
    def routes(self) -> tuple[str, ...]:
        return tuple(self.ranks)


def _first_places(hits: Sequence, depth: int | None) -> list[tuple[str, float]]:
    """The route's (id, score) list without later copies of an id, cut to ``depth``."""
    seen, out = set(), []
    for pid, score in hits:
        pid = str(pid)
        if pid not in seen:
            seen.add(pid)
            out.append((pid, score))
            if depth is not None and len(out) == depth:
                break
    return out


def _minmax(scores: list[float]) -> list[float]:
    for s in scores:
        if not isinstance(s, (int, float, np.number)) or not math.isfinite(float(s)):
            raise ValueError(f"score fusion needs finite scores, got {s!r}")
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 0.0)
    return [1.0 if hi <= lo else (float(s) - lo) / (hi - lo) for s in scores]


def fuse(runs: Mapping[str, Sequence[tuple[str, float]]], k: int, method: str = "rrf", rrf_k: float = 60.0,
         weights: Mapping[str, float] | None = None, depths: Mapping[str, int] | None = None) -> list[Hit]:
    """The fused top ``k`` of one query's route lists ``{route: [(id, score), ...] best first}`` (module
    docstring). ``weights``/``depths``: per route (default weight 1, depth: the whole list)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if method not in FUSION_METHODS:
        raise ValueError(f"method must be one of {FUSION_METHODS}, got {method!r}")
    if not math.isfinite(rrf_k) or rrf_k < 0:
        raise ValueError(f"rrf_k must be a finite number >= 0, got {rrf_k!r}")
    weights, depths = weights or {}, depths or {}
    parts: dict[str, list[float]] = {}
    ranks: dict[str, dict[str, int]] = {}
    for route, hits in runs.items():
        w, depth = float(weights.get(route, 1.0)), depths.get(route)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weight of route {route!r} must be a finite number >= 0, got {w!r}")
        if depth is not None and depth < 1:
            raise ValueError(f"depth of route {route!r} must be >= 1, got {depth!r}")
        ranked = _first_places(hits, depth)
        norm = _minmax([s for _, s in ranked]) if method == "score" else None
        for i, (pid, _) in enumerate(ranked):
            ranks.setdefault(pid, {})[route] = i + 1
            parts.setdefault(pid, []).append(w / (rrf_k + i + 1) if norm is None else w * norm[i])
    fused = [Hit(pid, math.fsum(parts[pid]), ranks[pid]) for pid in ranks]
    fused.sort(key=lambda h: (-h.score, min(h.ranks.values()), h.product_id))
    return fused[:k]


def fuse_config(runs: Mapping[str, Sequence[tuple[str, float]]], k: int, cfg: FusionConfig) -> list[Hit]:
    """:func:`fuse` of ``{"bm25": [...], "dense": [...]}`` with a FusionConfig's settings (depths at least k)."""
    return fuse(runs, k, cfg.method, cfg.rrf_k, {"bm25": cfg.w_bm25, "dense": cfg.w_dense},
                {"bm25": max(cfg.depth_bm25, k), "dense": max(cfg.depth_dense, k)})


def regrade_hits(requests: list[tuple[str, list[Hit]]], scorer, by_id: Mapping[str, dict]) -> list[list[Hit]]:
    """Each query's hits graded by ``scorer`` (RelevanceScorer.score_many) and re-sorted: P(Good) first, then the
    score, then the order they came in."""
    todo = [(q, [by_id[h.product_id] for h in hits]) for q, hits in requests if hits]
    graded = iter(scorer.score_many(todo)) if todo else iter(())
    out = []
    for _, hits in requests:
        if not hits:
            out.append([])
            continue
        hits = [dataclasses.replace(h, p_good=float(g["p_good"]), grade=int(g["grade"]), tier=int(g["tier"]))
                for h, g in zip(hits, next(graded))]
        order = sorted(range(len(hits)), key=lambda i: (-hits[i].p_good, -hits[i].score, i))
        out.append([hits[i] for i in order])
    return out


class HybridRetriever:
    """BM25 and a dense retriever over one catalogue, fused (module docstring).

    ``dense``: a :class:`Retriever`, or the encoder directory to build one from (None: the zero-shot MiniLM;
    ``retriever_kwargs`` go to Retriever). ``catalogue``: a Dataset or its products table (default: the dense
    retriever's). ``bm25``: an index over the same catalogue to share; ``scorer``: a RelevanceScorer, needed
    when ``fusion.regrade`` or ``search(..., regrade=True)``.
    """

    def __init__(self, dense: Retriever | str | Path | None, catalogue: Dataset | pd.DataFrame | None = None,
                 fusion: FusionConfig | None = None, bm25: BM25Index | None = None, scorer=None, **retriever_kwargs):
        products = catalogue.products if isinstance(catalogue, Dataset) else catalogue
        if isinstance(dense, Retriever):
            if products is not None and dense.ids != products["product_id"].astype(str).tolist():
                raise ConfigError("the dense retriever searches another catalogue than the one given")
            self.dense = dense
        else:
            if products is None:
                raise ConfigError("HybridRetriever needs the catalogue to build the dense retriever over")
            self.dense = Retriever(dense, products, **retriever_kwargs)
        self.products, self.ids = self.dense.products, self.dense.ids
        if bm25 is not None and sorted(bm25.product_ids) != sorted(self.ids):
            raise ConfigError("the BM25 index covers another catalogue than the dense retriever")
        self.bm25 = bm25 or BM25Index(self.products)
        self.fusion = fusion or FusionConfig()
        self.scorer = scorer
        if self.fusion.regrade and scorer is None:
            raise ConfigError("fusion.regrade needs a relevance scorer")
        self._by_id = None

    @property
    def by_id(self) -> dict[str, dict]:
        if self._by_id is None:
            self._by_id = {str(r["product_id"]): r for r in self.products.to_dict("records")}
        return self._by_id

    def route_runs(self, queries: list[str], k: int) -> dict[str, list[list[tuple[str, float]]]]:
        """{"bm25" | "dense": [Q] lists of (id, score)}: each route's candidates at its depth (at least k)."""
        return {"bm25": self.bm25.search(queries, max(self.fusion.depth_bm25, k)),
                "dense": self.dense.search(queries, max(self.fusion.depth_dense, k))}

    def search_batch(self, queries: list[str], k: int = 10, route: str = "hybrid",
                     regrade: bool | None = None) -> list[list[Hit]]:
        """[Q] lists of at most ``k`` hits, best first, from ``route`` (hybrid | dense | bm25); ``regrade`` (default:
        fusion.regrade) re-sorts them by the scorer's P(Good)."""
        if route not in ROUTES:
            raise ConfigError(f"route must be one of {ROUTES}, got {route!r}")
        if route == "hybrid":
            runs = self.route_runs(queries, k)
            hits = [fuse_config({"bm25": b, "dense": d}, k, self.fusion) for b, d in zip(runs["bm25"], runs["dense"])]
        else:
            found = (self.bm25 if route == "bm25" else self.dense).search(queries, k)
            hits = [[Hit(p, s, {route: i + 1}) for i, (p, s) in enumerate(h)] for h in found]
        if self.fusion.regrade if regrade is None else regrade:
            if self.scorer is None:
                raise ConfigError("re-grading needs a relevance scorer (HybridRetriever(..., scorer=...))")
            hits = regrade_hits(list(zip(queries, hits)), self.scorer, self.by_id)
        return hits

    def search(self, query: str, k: int = 10, route: str = "hybrid", regrade: bool | None = None) -> list[Hit]:
        """The top ``k`` hits of one query (see :meth:`search_batch`)."""
        return self.search_batch([query], k, route, regrade)[0]


def choose_fusion(dense: Mapping[str, Retriever], ds: Dataset, split: str = "valid",
                  grid: Sequence[FusionConfig] = FUSION_GRID, bm25: BM25Index | None = None,
                  ks=(10, 100)) -> tuple[FusionConfig, list[dict]]:
    """(the chosen setting, rows) on ``split``: first each route alone (setting "alone"), then one row per (setting,
    dense model) and a "mean" row per setting.

    The choice: the highest nDCG@10 averaged over the dense models, then hitrate@{max ks}, then grid order
    (the first, simplest setting wins a tie). Route lists are retrieved once per model, at the deepest depth."""
    sub = ds.split(split)
    qids, texts = sub.queries["query_id"].astype(str).tolist(), sub.queries["text"].tolist()
    qrels = {q: dict(zip(g["product_id"].astype(str), g["grade"].astype(int)))
             for q, g in sub.judgments.groupby(sub.judgments["query_id"].astype(str))}
    kmax = max(ks)
    depth = max(max(c.depth_bm25, c.depth_dense, kmax) for c in grid)
    bm25 = bm25 or BM25Index(next(iter(dense.values())).products)
    lexical = bm25.search(texts, depth)
    dense_runs = {name: retriever.search(texts, depth) for name, retriever in dense.items()}  # [Q] lists each

    def scored(runs):  # [Q] lists of Hits or of (id, score)
        return retrieval_metrics({q: [h.product_id if isinstance(h, Hit) else h[0] for h in r]
                                  for q, r in zip(qids, runs)}, qrels, ks)
    rows = [{"setting": "alone", "dense": name, **scored(runs)}
            for name, runs in {"bm25": lexical, **dense_runs}.items()]
    best, best_key = None, None
    for i, cfg in enumerate(grid):
        per_model = []
        for name, runs in dense_runs.items():
            fused = [fuse_config({"bm25": b, "dense": d}, kmax, cfg) for b, d in zip(lexical, runs)]
            per_model.append({"setting": cfg.label(), "dense": name, **scored(fused)})
        mean = {key: float(np.mean([r[key] for r in per_model])) for key in per_model[0]
                if key not in ("setting", "dense")}
        rows += per_model + [{"setting": cfg.label(), "dense": "mean", **mean}]
        key = (round(mean["ndcg@10"], 12), round(mean[f"hitrate@{kmax}"], 12), -i)
        if best_key is None or key > best_key:
            best, best_key = cfg, key
    return best, rows


def search(retriever_dir: str | Path, query: str, k: int = 10, data_dir: str | Path | None = None,
           scorer=None, progress: bool = True, route: str = "hybrid", fusion: FusionConfig | None = None) -> list[dict]:
    """Top-k products for one query from ``route`` (hybrid: BM25 and the dense retriever fused, the default;
    dense; bm25): rank, product_id, score, routes (which routes found it), title, brand (and the scorer's grade
    if given; the order stays the route's). ``fusion``: a retrieval.hybrid.FusionConfig (default: its defaults)."""
    data_dir = data_dir or saved_config(retriever_dir).get("data_dir")
    if not data_dir:
        raise ConfigError(f"{retriever_dir}: no data_dir in retriever_config.yaml; pass --data DIR")
    ds = load_dataset(data_dir)
    hybrid = HybridRetriever(retriever_dir, ds.products, fusion, progress=progress)
    hits = hybrid.search(query, k, route=route)
    by_id = hybrid.by_id
    out = [{"rank": i + 1, "product_id": h.product_id, "score": h.score, "routes": list(h.routes),
            "title": by_id[h.product_id]["title"], "brand": by_id[h.product_id]["brand"]} for i, h in enumerate(hits)]
    if scorer is not None and out:
        for row, res in zip(out, scorer.score(query, [by_id[r["product_id"]] for r in out])):
            row.update(p_good=res["p_good"], grade=res["tier"])
    return out
