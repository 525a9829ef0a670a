"""``searchrl serve``: the relevance scorer behind an HTTP API (FastAPI + uvicorn).

- ``POST /v1/relevance/score`` {query, products: [{id, title, brand?, category?,
  description?, attributes?}]} -> per product: grade (argmax), tier (cumulative
  probability tiering), probabilities, P(Good), expected grade.
- ``POST /v1/search`` {query, k, regrade} -> top-k catalogue products from a dense retriever,
  optionally re-graded by the same scorer (search_api.py); registered only when the server
  is given a retriever (``searchrl serve --retriever DIR``), else 404.
- ``GET /healthz`` -> status ("ok", or "draining" with HTTP 503 during a SIGTERM drain), model,
  requests in flight, queue length, whether search is available. OpenAPI docs at ``/docs``.

Requests are validated by pydantic (422 names the field). Limits on products per
request, on text length, on the body's size and on search's ``k`` answer 413; with
``$SEARCHRL_API_KEY`` set, a request without that key (``Authorization: Bearer KEY`` or
``X-API-Key: KEY``) gets 401.

:class:`MicroBatcher` is why throughput grows with concurrency: requests wait in a
bounded queue; one worker takes everything queued (up to ``max_batch_pairs`` pairs,
waiting at most ``max_wait_ms`` for more) and scores it in shared forward passes on a
worker thread, so the event loop keeps accepting requests meanwhile. A full queue
answers 503 at once instead of letting clients hang, and a request not scored within
``queue_timeout_s`` gets 503 too (the worker then skips it rather than score it for nobody).

Every other wait a client controls is bounded as well (timeouts.py: idle connections, slow
headers, slow bodies, clients that stop reading), and SIGTERM drains the requests in flight before
the process exits 0 (drain.py).

Simplifies: one model, one worker thread, one process; scale out with more processes.
"""

from __future__ import annotations

import hmac
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from searchrl.serve.batching import Busy, MicroBatcher, busy_response

API_KEY_ENV = "SEARCHRL_API_KEY"


@dataclass
class ServerConfig:
    max_products: int = 256  # products per request; more -> 413
    max_text_chars: int = 4096  # characters in the query or in any product field; more -> 413
    max_batch_pairs: int = 64  # pairs scored together in one micro-batch (shared forward passes)
    max_wait_ms: float = 2.0  # how long a micro-batch waits for more requests before it runs
    max_queue: int = 128  # requests waiting to be scored; more -> 503
    batch_size: int = 32  # rows per forward pass inside a micro-batch
    max_k: int = 100  # products one /v1/search request may ask for; more -> 413
    max_body_bytes: int = 8 * 2**20  # bytes in one request body; more -> 413 (256 products of 4 long fields fit)
    max_header_bytes: int = 16384  # bytes of an unfinished request line + headers buffered (h11's limit); more -> 400
    max_connections: int = 1000  # open connections (uvicorn's limit_concurrency); a request beyond -> 503
    queue_timeout_s: float = 30.0  # longest wait for the scorer (queue + micro-batch) or the retriever; then 503
    keep_alive_s: float = 5.0  # an idle connection, or a new one that sends nothing, is closed after this
    header_timeout_s: float = 10.0  # a request's line and headers must arrive within this of their first byte; else 408
    body_timeout_s: float = 10.0  # a request's whole body must arrive within this of its headers; else 408
    write_timeout_s: float = 10.0  # a client that reads nothing for this long while its send buffer is full is cut off
    drain_timeout_s: float = 25.0  # SIGTERM: longest wait for requests in flight (queued too) before exiting

    def __post_init__(self):
        positive = ("max_products", "max_text_chars", "max_batch_pairs", "max_queue", "batch_size", "max_k",
                    "max_body_bytes", "max_header_bytes", "max_connections", "queue_timeout_s", "keep_alive_s",
                    "header_timeout_s", "body_timeout_s", "write_timeout_s", "drain_timeout_s")
        bad = [f for f in positive if not getattr(self, f) > 0] + (["max_wait_ms"] if self.max_wait_ms < 0 else [])
        if bad:  # a zero or negative limit would refuse everything, or wait for nothing
            raise ValueError(f"ServerConfig: {', '.join(bad)} must be > 0 (max_wait_ms >= 0)")


class Product(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(description="your product id, echoed back")
    title: str = Field(min_length=1)
    brand: str | None = None
    category: str | None = None
    description: str | None = None
    attributes: dict[str, str | int | float | bool] | None = Field(default=None, description="name -> value")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1)
    products: list[Product] = Field(min_length=1)


class ProductScore(BaseModel):
    id: str
    grade: int = Field(description="argmax grade, 1..4")
    tier: int = Field(description="grade by cumulative-probability tiering with the model's beta")
    probabilities: dict[str, float] = Field(description="P(L1)..P(L4)")
    p_good: float = Field(description="P(L3) + P(L4)")
    expected_grade: float


class ScoreResponse(BaseModel):
    model: str
    results: list[ProductScore]


def _check_key(request: Request, key: str | None) -> None:
    if not key:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise HTTPException(401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')")


def _check_limits(req: ScoreRequest, cfg: ServerConfig) -> None:
    if len(req.products) > cfg.max_products:
        raise HTTPException(413, f"{len(req.products)} products in one request; the limit is {cfg.max_products}")
    texts = [("query", req.query)]
    for i, p in enumerate(req.products):
        texts += [(f"products[{i}].{k}", v) for k, v in p.model_dump(exclude_none=True).items() if k != "attributes"]
        texts += [(f"products[{i}].attributes.{k}", str(v)) for k, v in (p.attributes or {}).items()]
    for where, text in texts:
        if isinstance(text, str) and len(text) > cfg.max_text_chars:
            raise HTTPException(413, f"{where}: {len(text)} characters; the limit is {cfg.max_text_chars}")


def create_app(scorer, cfg: ServerConfig | None = None, model_name: str = "relevance",
               api_key: str | None = None, retriever=None) -> FastAPI:
    """The FastAPI app around a RelevanceScorer (``api_key`` None: read ``$SEARCHRL_API_KEY``).

    ``retriever``: a :class:`~searchrl.serve.search_api.SearchService` (catalogue already encoded)
    to also serve ``POST /v1/search``; None leaves that route out.
    """
    from contextlib import asynccontextmanager

    from searchrl.serve.drain import Drain, DrainMiddleware
    from searchrl.serve.timeouts import BodyLimitMiddleware
    cfg = cfg or ServerConfig()
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    batcher = MicroBatcher(scorer.score_many, cfg.max_batch_pairs, cfg.max_wait_ms, cfg.max_queue,
                           cfg.queue_timeout_s)
    drain = Drain(cfg.drain_timeout_s)
    # query encoding gets its own thread: it is short and must not wait behind a scoring micro-batch
    search_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retriever") \
        if retriever is not None else None

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()
        if search_executor is not None:
            search_executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="searchrl relevance", lifespan=lifespan,
                  description="Grades (query, product) pairs L1-L4 with a relevance LLM (prefill only).")
    app.state.batcher, app.state.drain = batcher, drain
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes, timeout_s=cfg.body_timeout_s)
    app.add_middleware(DrainMiddleware, drain=drain)  # added last = outermost: a body being read counts as in flight

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 {"status": "ok", ...}; 503 {"status": "draining", ...} once SIGTERM has started a drain."""
        body = {"status": "draining" if drain.draining else "ok", "model": model_name, "in_flight": drain.in_flight,
                "queued": batcher.queue.qsize(), "batches": batcher.batches, "search": retriever is not None,
                "catalogue": len(retriever) if retriever is not None else 0}
        return JSONResponse(body, status_code=503 if drain.draining else 200)

    @app.post("/v1/relevance/score", response_model=ScoreResponse)
    async def score(req: ScoreRequest, request: Request) -> ScoreResponse:
        _check_key(request, key)
        _check_limits(req, cfg)
        products = [p.model_dump(exclude_none=True) for p in req.products]
        try:
            results = await batcher.submit(req.query, products)
        except Busy as e:
            raise busy_response(e) from None
        return ScoreResponse(model=model_name, results=[ProductScore(id=p["id"], **r) for p, r in zip(products, results)])

    if retriever is not None:
        from searchrl.serve.search_api import add_search_routes
        add_search_routes(app, retriever, batcher, cfg, lambda request: _check_key(request, key), busy_response,
                          search_executor)
    return app


def serve(model_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, cfg: ServerConfig | None = None,
          threads: int | None = None, retriever_dir: str | Path | None = None,
          data_dir: str | Path | None = None) -> None:
    """Load the model (and the retriever, encoding its catalogue once) and run uvicorn until SIGTERM/SIGINT.

    The first signal drains the requests in flight (drain.py); the connection deadlines come from ``cfg`` (timeouts.py).
    """
    import torch
    import uvicorn

    from searchrl.relevance.scoring.scorer import RelevanceScorer
    from searchrl.serve.drain import DrainingServer
    from searchrl.serve.timeouts import bounded_h11_protocol
    cfg = cfg or ServerConfig()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    scorer = RelevanceScorer.load(model_dir, batch_size=cfg.batch_size)
    service = None
    if retriever_dir:
        from searchrl.serve.search_api import SearchService
        service = SearchService.load(retriever_dir, data_dir)
    search = f"; /v1/search over {len(service)} products" if service is not None else ""
    print(f"serve: loaded {model_dir}{search} in {time.perf_counter() - t0:.1f}s; listening on http://{host}:{port} "
          f"(docs at /docs){'; API key required' if os.environ.get(API_KEY_ENV) else ''}", flush=True)
    app = create_app(scorer, cfg, Path(model_dir).name, retriever=service)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning",
        http=bounded_h11_protocol(cfg.header_timeout_s, cfg.write_timeout_s),  # h11, with header and write deadlines
        timeout_keep_alive=cfg.keep_alive_s, h11_max_incomplete_event_size=cfg.max_header_bytes,
        limit_concurrency=cfg.max_connections,
        # uvicorn's own graceful shutdown runs after our drain, when nothing should be left in flight:
        # it only closes the idle connections (and, if the drain ran out of time, cancels what is left)
        timeout_graceful_shutdown=2)
    DrainingServer(config, app.state.drain).run()
