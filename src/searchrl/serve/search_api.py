"""``POST /v1/search`` on the relevance server: top-k products from a dense retriever, optionally re-graded.

- :class:`SearchService`: a :class:`~searchrl.retrieval.evaluate.Retriever` over a dataset's
  catalogue. The catalogue is encoded once, when the service is built (at server start-up), and
  the embeddings are cached on disk by (model, corpus) hash, so a restart does not re-encode.
- :func:`add_search_routes`: the endpoint. {query, k (default 10), regrade (default false)} ->
  {results: [{product_id, title, brand, score, rank}]}, best first. With ``regrade`` every hit is
  also scored by the server's relevance scorer *through its micro-batcher*, so re-grading shares
  forward passes with ``/v1/relevance/score`` requests, and gains grade (argmax), tier (tiered
  grade) and P(Good); the hits are then re-sorted by P(Good), ties by retrieval score, and
  ``rank`` is the position in that final order.

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

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    k: int = Field(default=10, ge=1, description="products to return; at most the server's max_k (else 413)")
    regrade: bool = Field(default=False, description="grade every hit with the relevance model and re-sort by P(Good)")


class SearchHit(BaseModel):
    product_id: str
    title: str
    brand: str | None = None
    score: float = Field(description="retriever similarity (inner product of unit vectors)")
    rank: int = Field(description="1-based position in this response (after re-grading, if asked)")
    grade: int | None = Field(default=None, description="argmax grade 1..4 (regrade only)")
    tier: int | None = Field(default=None, description="tiered grade with the model's beta (regrade only)")
    p_good: float | None = Field(default=None, description="P(L3) + P(L4) (regrade only)")


class SearchResponse(BaseModel):
    results: list[SearchHit]


def _clean(value):
    """None for the NaN pandas uses for a missing cell (JSON has no NaN)."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


class SearchService:
    """A retriever over a catalogue, with its rows by product id (the server runs ``hits`` off the event loop)."""

    def __init__(self, retriever):
        self.retriever = retriever
        self.by_id = {str(r["product_id"]): r for r in retriever.products.to_dict("records")}

    @classmethod
    def load(cls, retriever_dir: str | Path, data_dir: str | Path | None = None,
             progress: bool = True) -> "SearchService":
        """Load the encoder and encode the catalogue of ``data_dir`` (default: the one it was trained on)."""
        from searchrl.data.schema import load_dataset
        from searchrl.retrieval.evaluate import Retriever, saved_config
        data_dir = data_dir or saved_config(retriever_dir).get("data_dir")
        if not data_dir:
            raise ValueError(f"{retriever_dir}: no data_dir in retriever_config.yaml; pass --data DIR")
        return cls(Retriever(retriever_dir, load_dataset(data_dir).products, progress=progress))

    def __len__(self) -> int:
        return len(self.by_id)

    def hits(self, query: str, k: int) -> list[dict]:
        """Top-k catalogue rows for ``query``, each with its retrieval score."""
        return [{**self.by_id[p], "score": s} for p, s in self.retriever.search([query], k)[0]]


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
                hits = await asyncio.get_running_loop().run_in_executor(executor, service.hits, req.query, req.k)
        except TimeoutError:
            raise HTTPException(503, f"server busy: no search result within {cfg.queue_timeout_s:g} s "
                                     "(queue_timeout_s); retry later", headers={"Retry-After": "1"}) from None
        finally:
            waiting -= 1
        if req.regrade and hits:
            products = [{k: v for k, v in h.items() if k != "score"} for h in hits]
            try:
                graded = await batcher.submit(req.query, products)
            except Busy as e:
                raise busy_response(e) from None
            for h, g in zip(hits, graded):
                h.update(grade=g["grade"], tier=g["tier"], p_good=g["p_good"])
            hits.sort(key=lambda h: (-h["p_good"], -h["score"]))  # stable: equal keys keep retrieval order
        graded_fields = ("grade", "tier", "p_good")
        return SearchResponse(results=[
            SearchHit(product_id=str(h["product_id"]), title=str(h["title"]), brand=_clean(h.get("brand")),
                      score=float(h["score"]), rank=i + 1, **{f: h[f] for f in graded_fields if f in h})
            for i, h in enumerate(hits)])
