"""The HTTP service: validation, limits, API key, back-pressure, and a load test on a real server process."""

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from searchrl.relevance.scoring.scorer import RelevanceScorer
from searchrl.serve.server import ServerConfig, create_app

PRODUCTS = [{"id": "p1", "title": "Dell XPS 13 laptop", "brand": "Dell"},
            {"id": "p2", "title": "Targus laptop bag 15.6 inch", "attributes": {"colour": "black", "size": 15.6}},
            {"id": "p3", "title": "Logitech wireless mouse", "category": "Mice"},
            {"id": "p4", "title": "JBL Flip 5 speaker", "description": "portable bluetooth speaker"},
            {"id": "p5", "title": "HP 301 black ink cartridge"}]
QUERIES = ["laptop", "laptop bag", "wireless mouse", "bluetooth speaker", "hp ink", "dell laptop 16gb"]


@pytest.fixture(scope="module")
def scorer(tiny_model_dir):
    return RelevanceScorer.load(tiny_model_dir)


def _probs(results):
    return np.array([[r["probabilities"][f"L{g}"] for g in range(1, 5)] for r in results])


def test_score_endpoint_matches_the_library_and_validates(scorer, monkeypatch):
    monkeypatch.delenv("SEARCHRL_API_KEY", raising=False)
    cfg = ServerConfig(max_products=3, max_text_chars=40)
    with TestClient(create_app(scorer, cfg, "tiny")) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert "/v1/relevance/score" in client.get("/openapi.json").json()["paths"]
        r = client.post("/v1/relevance/score", json={"query": "laptop", "products": PRODUCTS[:3]})
        assert r.status_code == 200
        body = r.json()
        assert body["model"] == "tiny" and [x["id"] for x in body["results"]] == ["p1", "p2", "p3"]
        expected = scorer.score("laptop", PRODUCTS[:3])
        np.testing.assert_allclose(_probs(body["results"]), _probs(expected), atol=1e-6)
        assert [x["tier"] for x in body["results"]] == [e["tier"] for e in expected]

        r = client.post("/v1/relevance/score", json={"query": "laptop", "products": [{"id": "p1"}]})
        assert r.status_code == 422 and "title" in r.text  # a missing field is named
        r = client.post("/v1/relevance/score", json={"query": "laptop", "products": [{"id": 1, "title": "x"}]})
        assert r.status_code == 422 and "id" in r.text  # a wrong type is named
        r = client.post("/v1/relevance/score", json={"query": "laptop", "products": PRODUCTS[:4]})
        assert r.status_code == 413 and "limit is 3" in r.json()["detail"]
        r = client.post("/v1/relevance/score", json={"query": "laptop", "products": [
            {"id": "p", "title": "t", "description": "x" * 41}]})
        assert r.status_code == 413 and "products[0].description" in r.json()["detail"]


def test_api_key_from_the_environment(scorer, monkeypatch):
    monkeypatch.setenv("SEARCHRL_API_KEY", "s3cret")
    with TestClient(create_app(scorer)) as client:
        req = {"query": "laptop", "products": PRODUCTS[:1]}
        assert client.post("/v1/relevance/score", json=req).status_code == 401
        assert client.post("/v1/relevance/score", json=req, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/v1/relevance/score", json=req, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/relevance/score", json=req, headers={"X-API-Key": "s3cret"}).status_code == 200


class BlockedScorer:
    """Stands in for the model so the queue can be filled: score_many waits until released."""

    def __init__(self):
        self.release = threading.Event()

    def score_many(self, requests):
        self.release.wait(timeout=30)
        return [[{"probabilities": {f"L{g}": 0.25 for g in range(1, 5)}, "grade": 1, "tier": 1, "p_good": 0.5,
                  "expected_grade": 2.5} for _ in products] for _, products in requests]


def test_a_full_queue_answers_503_instead_of_hanging(monkeypatch):
    monkeypatch.delenv("SEARCHRL_API_KEY", raising=False)
    fake = BlockedScorer()
    with TestClient(create_app(fake, ServerConfig(max_queue=2, max_wait_ms=0))) as client:
        def post(_):
            t0 = time.perf_counter()
            code = client.post("/v1/relevance/score", json={"query": "q", "products": PRODUCTS[:1]}).status_code
            return code, time.perf_counter() - t0
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, i) for i in range(8)]
            time.sleep(1.0)  # one request is being scored (blocked), two wait in the queue, the rest are refused
            fake.release.set()
            results = [f.result(timeout=30) for f in futures]
    codes = [c for c, _ in results]
    assert codes.count(503) >= 4 and codes.count(200) >= 1 and set(codes) <= {200, 503}
    assert max(t for c, t in results if c == 503) < 1.0  # refused at once, not after the blocked batch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_load_32_concurrent_clients_on_a_real_server(tiny_model_dir, scorer):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SEARCHRL_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "searchrl.cli", "serve", "--model", str(tiny_model_dir),
                             "--port", str(port), "--threads", "1", "--set", "max_batch_pairs=48"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"server did not start: {proc.stdout.read() if proc.poll() is not None else 'timeout'}")
            time.sleep(0.2)
        # 32 clients x 3 requests; request i asks about query i % 6 and 1..5 products
        work = [(QUERIES[i % len(QUERIES)], PRODUCTS[: 1 + i % 5]) for i in range(96)]

        def client(k):
            out = []
            with httpx.Client(base_url=base, timeout=60) as c:
                for i in range(k, len(work), 32):
                    q, prods = work[i]
                    r = c.post("/v1/relevance/score", json={"query": q, "products": prods})
                    out.append((i, r.status_code, r.json()))
            return out

        with ThreadPoolExecutor(32) as pool:
            responses = [x for f in [pool.submit(client, k) for k in range(32)] for x in f.result()]
        assert len(responses) == 96 and all(code == 200 for _, code, _ in responses)
        for i, _, body in responses:
            q, prods = work[i]
            expected = scorer.score(q, [{k: v for k, v in p.items() if k != "id"} for p in prods])
            assert [r["id"] for r in body["results"]] == [p["id"] for p in prods]
            np.testing.assert_allclose(_probs(body["results"]), _probs(expected), atol=1e-5)
            assert [r["grade"] for r in body["results"]] == [e["grade"] for e in expected]
        health = httpx.get(f"{base}/healthz").json()
        assert health["batches"] < 96  # concurrent requests shared forward passes
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---------------------------------------------------------------- POST /v1/search

@pytest.fixture(scope="module")
def search_service(tiny_data, tmp_path_factory):
    """The zero-shot MiniLM retriever over the 8-product tiny catalogue (embedding cache in a temp home)."""
    from searchrl.serve.search_api import SearchService
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEARCHRL_HOME", str(tmp_path_factory.mktemp("search_home")))
        service = SearchService.load(None, tiny_data, progress=False)
    return service


def test_search_endpoint_ranks_regrades_and_validates(scorer, search_service, monkeypatch):
    monkeypatch.delenv("SEARCHRL_API_KEY", raising=False)
    cfg = ServerConfig(max_k=8, max_text_chars=40)
    with TestClient(create_app(scorer, cfg, "tiny", retriever=search_service)) as client:
        health = client.get("/healthz").json()
        assert health["search"] is True and health["catalogue"] == 8
        assert "/v1/search" in client.get("/openapi.json").json()["paths"]

        r = client.post("/v1/search", json={"query": "bluetooth speaker", "k": 3, "route": "dense"})
        assert r.status_code == 200 and r.json()["route"] == "dense"
        hits = r.json()["results"]
        assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
        assert hits[0]["product_id"] == "p5" and hits[0]["title"] == "JBL Flip 5 bluetooth speaker"
        assert hits[0]["brand"] == "JBL"
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
        assert all(set(h) == {"product_id", "title", "brand", "score", "rank"} for h in hits)  # no grades unasked
        direct = search_service.retriever.search(["bluetooth speaker"], 3)[0]
        assert [h["product_id"] for h in hits] == [p for p, _ in direct]
        np.testing.assert_allclose([h["score"] for h in hits], [s for _, s in direct], atol=1e-5)
        assert len(client.post("/v1/search", json={"query": "laptop", "k": 8}).json()["results"]) == 8

        batches = client.app.state.batcher.batches
        r = client.post("/v1/search", json={"query": "laptop", "k": 4, "regrade": True})
        assert r.status_code == 200
        graded = r.json()["results"]
        assert client.app.state.batcher.batches == batches + 1  # re-graded through the shared micro-batcher
        plain = client.post("/v1/search", json={"query": "laptop", "k": 4}).json()["results"]
        assert sorted(h["product_id"] for h in graded) == sorted(h["product_id"] for h in plain)
        assert [h["rank"] for h in graded] == [1, 2, 3, 4]
        keys = [(-h["p_good"], -h["score"]) for h in graded]
        assert keys == sorted(keys)  # P(Good) first, then retrieval score
        expected = scorer.score("laptop", [search_service.by_id[h["product_id"]] for h in graded])
        np.testing.assert_allclose([h["p_good"] for h in graded], [e["p_good"] for e in expected], atol=1e-5)
        assert [(h["grade"], h["tier"]) for h in graded] == [(e["grade"], e["tier"]) for e in expected]

        for body, field in (({"k": 3}, "query"), ({"query": ""}, "query"), ({"query": "x", "k": 0}, "k"),
                            ({"query": "x", "k": "many"}, "k"), ({"query": "x", "regrade": "maybe"}, "regrade"),
                            ({"query": "x", "top": 3}, "top")):
            r = client.post("/v1/search", json=body)
            assert r.status_code == 422 and field in r.text, body
        r = client.post("/v1/search", json={"query": "x" * 41})
        assert r.status_code == 413 and "query" in r.json()["detail"] and "limit is 40" in r.json()["detail"]
        r = client.post("/v1/search", json={"query": "laptop", "k": 9})
        assert r.status_code == 413 and "limit is 8" in r.json()["detail"]


def test_search_serves_the_hybrid_by_default_and_each_route_on_request(scorer, search_service, monkeypatch):
    monkeypatch.delenv("SEARCHRL_API_KEY", raising=False)
    with TestClient(create_app(scorer, ServerConfig(max_k=8), "tiny", retriever=search_service)) as client:
        for query in ("laptop bag", "hp ink", "bluetooth speaker"):
            r = client.post("/v1/search", json={"query": query, "k": 5})
            assert r.status_code == 200 and r.json()["route"] == "hybrid"
            hits = r.json()["results"]
            fused = search_service.hybrid.search(query, 5)  # BM25 and the dense route, fused
            assert [h["product_id"] for h in hits] == [h.product_id for h in fused]
            np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in fused], rtol=1e-6)
            assert [h["routes"] for h in hits] == [list(h.routes) for h in fused]
            assert any(h["routes"] == ["bm25", "dense"] for h in hits)
            assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
            assert hits == client.post("/v1/search", json={"query": query, "k": 5, "route": "hybrid"}).json()["results"]

            dense = client.post("/v1/search", json={"query": query, "k": 5, "route": "dense"}).json()
            direct = search_service.retriever.search([query], 5)[0]
            assert dense["route"] == "dense" and [h["product_id"] for h in dense["results"]] == [p for p, _ in direct]
            assert all("routes" not in h for h in dense["results"])
            lexical = client.post("/v1/search", json={"query": query, "k": 5, "route": "bm25"}).json()["results"]
            alone = search_service.hybrid.bm25.search([query], 5)[0]
            assert [h["product_id"] for h in lexical] == [p for p, _ in alone]
        graded = client.post("/v1/search", json={"query": "laptop", "k": 4, "regrade": True}).json()["results"]
        assert all(h["routes"] and h["p_good"] is not None for h in graded)  # a re-graded hybrid keeps its routes
        r = client.post("/v1/search", json={"query": "laptop", "route": "both"})
        assert r.status_code == 422 and "route" in r.text


def test_search_api_key_and_default_k(scorer, search_service, monkeypatch):
    monkeypatch.setenv("SEARCHRL_API_KEY", "s3cret")
    with TestClient(create_app(scorer, retriever=search_service)) as client:
        req = {"query": "hp ink"}
        assert client.post("/v1/search", json=req).status_code == 401
        assert client.post("/v1/search", json=req, headers={"X-API-Key": "wrong"}).status_code == 401
        r = client.post("/v1/search", json=req, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and len(r.json()["results"]) == 8  # default k=10 > catalogue: all of it
        assert r.json()["results"][0]["product_id"] == "p8"


def test_search_is_absent_without_a_retriever(scorer, monkeypatch, tmp_path):
    from searchrl.serve.search_api import SearchService
    monkeypatch.delenv("SEARCHRL_API_KEY", raising=False)
    with TestClient(create_app(scorer)) as client:
        assert client.get("/healthz").json()["search"] is False
        assert client.post("/v1/search", json={"query": "laptop"}).status_code == 404
    with pytest.raises(ValueError, match="pass --data"):  # a plain encoder directory does not name its catalogue
        SearchService.load(tmp_path)
