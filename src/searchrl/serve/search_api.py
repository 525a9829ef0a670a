"""``POST /v1/search`` on the relevance server: top-k products from BM25 and a dense retriever fused (the
hybrid, by default), or from either route alone, optionally re-graded.

- :class:`SearchService`: a :class:`~searchrl.retrieval.hybrid.HybridRetriever` over a dataset's
  catalogue: a BM25 index and a dense :class:`~searchrl.retrieval.evaluate.Retriever`. The
  catalogue is encoded once, when the service is built (at server start-up), and the embeddings
  are cached on disk by (model, corpus) hash, so a restart does not re-encode.
- :func:`add_search_routes`: the endpoint. {query, k (default 10), route ("hybrid" (default),
  "dense" or "bm25"), regrade (default false)} -> {route, results: [{product_id, title, brand,
  score, rank, routes (hybrid only: which routes found it)}]}, best first. ``score`` is the fused
  score (hybrid: reciprocal-rank fusion by default), the cosine (dense) or the BM25 score. With
  ``regrade`` every hit is also scored by the server's relevance scorer *through its
  micro-batcher*, so re-grading shares forward passes with ``/v1/relevance/score`` requests, and
  gains grade (argmax), tier (tiered grade) and P(Good); the hits are then re-sorted by P(Good),
  ties by the route's score, and ``rank`` is the position in that final order.

Validation as for scoring: pydantic 422 names the field; a query longer than ``max_text_chars``
or ``k`` above ``max_k`` answers 413; the API key, when set, is checked first (401). A ``k``
larger than the catalogue returns the whole catalogue. Waiting is bounded as for scoring: at
most ``max_queue`` requests wait for the retriever's thread, each at most ``queue_timeout_s``
(else 503), and re-grading goes through the batcher's own bounds.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

Route = Literal["hybrid", "dense", "bm25"]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    k: int = Field(default=10, ge=1, description="products to return; at most the server's max_k (else 413)")
    route: Route = Field(default="hybrid", description="hybrid (BM25 and the dense route fused), dense or bm25")
    regrade: bool = Field(default=False, description="grade every hit with the relevance model and re-sort by P(Good)")


class SearchHit(BaseModel):
    product_id: str
    title: str
    brand: str | None = None
    score: float = Field(description="the route's score: fused (hybrid), cosine similarity (dense) or BM25 (bm25)")
    rank: int = Field(description="1-based position in this response (after re-grading, if asked)")
    routes: list[str] | None = Field(default=None, description="hybrid only: the routes that found it (bm25, dense)")
    grade: int | None = Field(default=None, description="argmax grade 1..4 (regrade only)")
    tier: int | None = Field(default=None, description="tiered grade with the model's beta (regrade only)")
    p_good: float | None = Field(default=None, description="P(L3) + P(L4) (regrade only)")


class SearchResponse(BaseModel):
    route: Route
    results: list[SearchHit]


def _clean(value):
    """None for the NaN pandas uses for a missing cell (JSON has no NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


class SearchService:
    """The hybrid retriever over a catalogue, with its rows by product id (the server runs ``hits`` off the event
    loop). ``retriever``: the dense :class:`~searchrl.retrieval.evaluate.Retriever` the hybrid fuses with BM25."""

    def __init__(self, retriever, fusion=None):
        from searchrl.retrieval.hybrid import HybridRetriever
        self.retriever = retriever  # the dense route
        self.hybrid = HybridRetriever(retriever, fusion=fusion)
        self.by_id = self.hybrid.by_id

    @classmethod
    def load(cls, retriever_dir: str | Path, data_dir: str | Path | None = None,
             progress: bool = True, fusion=None) -> "SearchService":
        """Load the encoder, encode the catalogue of ``data_dir`` (default: the one it was trained on) and index it
        for BM25. ``fusion``: a retrieval.hybrid.FusionConfig (default: its defaults)."""
        from searchrl.data.schema import load_dataset
        from searchrl.errors import ConfigError
        from searchrl.retrieval.evaluate import Retriever, saved_config
        data_dir = data_dir or saved_config(retriever_dir).get("data_dir")
        if not data_dir:
            raise ConfigError(f"{retriever_dir}: no data_dir in retriever_config.yaml; pass --data DIR")
        return cls(Retriever(retriever_dir, load_dataset(data_dir).products, progress=progress), fusion)

    def __len__(self) -> int:
        return len(self.by_id)

    def hits(self, query: str, k: int, route: str = "hybrid") -> list[dict]:
        """Top-k catalogue rows for ``query`` from ``route``, each with the route's score (and, for the hybrid, the
        routes that found it)."""
        out = []
        for h in self.hybrid.search(query, k, route=route, regrade=False):  # the server re-grades (batcher)
            out.append({**self.by_id[h.product_id], "score": h.score})
            if route == "hybrid":
                out[-1]["routes"] = list(h.routes)
        return out


def add_search_routes(app: FastAPI, service: SearchService, batcher, cfg, check_key, busy_response,
                      executor: ThreadPoolExecutor) -> None:
    """Register ``POST /v1/search``: retrieval on ``executor``, re-grading through ``batcher``.

    ``check_key(request)`` raises 401; ``busy_response(e)`` turns the batcher's Busy into its 503.
    """
    from searchrl.serve.batching import Busy
    waiting = 0  # requests waiting for (or on) the retriever's thread, whose own queue has no bound

    # exclude_unset: grade, tier and p_good appear only when re-graded (brand stays, null when unknown)
    @app.post("/v1/search", response_model=SearchResponse, response_model_exclude_unset=True)
    async def search(req: SearchRequest, request: Request) -> SearchResponse:
        check_key(request)
        if len(req.query) > cfg.max_text_chars:
            raise HTTPException(413, f"query: {len(req.query)} characters; the limit is {cfg.max_text_chars}")
        if req.k > cfg.max_k:
            raise HTTPException(413, f"k={req.k}; the limit is {cfg.max_k}")
        nonlocal waiting
        if waiting >= cfg.max_queue:
            raise HTTPException(503, f"server busy: {cfg.max_queue} searches already waiting; retry later",
                                headers={"Retry-After": "1"})
        waiting += 1
        try:
            async with asyncio.timeout(cfg.queue_timeout_s):  # cancels the search if it has not started
                hits = await asyncio.get_running_loop().run_in_executor(executor, service.hits, req.query, req.k,
                                                                        req.route)
        except TimeoutError:
            raise HTTPException(503, f"server busy: no search result within {cfg.queue_timeout_s:g} s "
                                     "(queue_timeout_s); retry later", headers={"Retry-After": "1"}) from None
        finally:
            waiting -= 1
        if req.regrade and hits:
            products = [{k: v for k, v in h.items() if k not in ("score", "routes")} for h in hits]
            try:
                graded = await batcher.submit(req.query, products)
            except Busy as e:
                raise busy_response(e) from None
            for h, g in zip(hits, graded):
                h.update(grade=g["grade"], tier=g["tier"], p_good=g["p_good"])
            hits.sort(key=lambda h: (-h["p_good"], -h["score"]))  # stable: equal keys keep retrieval order
        optional = ("routes", "grade", "tier", "p_good")  # set only when present: hybrid, re-graded
        return SearchResponse(route=req.route, results=[
            SearchHit(product_id=str(h["product_id"]), title=str(h["title"]), brand=_clean(h.get("brand")),
                      score=float(h["score"]), rank=i + 1, **{f: h[f] for f in optional if f in h})
            for i, h in enumerate(hits)])
