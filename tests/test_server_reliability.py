"""The server under stress: SIGTERM drains, queue deadlines, and clients that are slow, stall or never read.

The in-process tests use TestClient; the others start ``searchrl serve`` as a real process on the
tiny random model and talk to it over raw sockets, with deadlines of a second or two set through
ServerConfig (``--set``) so that each test runs in seconds.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient

from searchrl.serve.drain import Drain, DrainingServer
from searchrl.serve.server import ServerConfig, create_app

PRODUCT = {"id": "p1", "title": "Dell XPS 13 laptop", "brand": "Dell"}
SCORE = {"query": "laptop", "products": [PRODUCT]}


class CountingScorer:
    """Stands in for the model: records each micro-batch's queries; waits for ``release`` while it is clear."""

    def __init__(self):
        self.release = threading.Event()
        self.batches: list[list[str]] = []

    def score_many(self, requests):
        self.batches.append([q for q, _ in requests])
        self.release.wait(timeout=30)
        return [[{"probabilities": {f"L{g}": 0.25 for g in range(1, 5)}, "grade": 1, "tier": 1, "p_good": 0.5,
                  "expected_grade": 2.5} for _ in products] for _, products in requests]


# ---------------------------------------------------------------- in process

def test_draining_refuses_new_requests_and_healthz_says_so(monkeypatch):
    monkeypatch.delenv("SEARCHRL_API_KEY", raising=False)
    fake = CountingScorer()
    fake.release.set()
    with TestClient(create_app(fake)) as client:
        r = client.get("/healthz")
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["in_flight"] == 0
        assert client.post("/v1/relevance/score", json=SCORE).status_code == 200
        client.app.state.drain.begin()  # what the first SIGTERM does
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "draining"
        r = client.post("/v1/relevance/score", json=SCORE)
        assert r.status_code == 503 and "draining" in r.json()["detail"]
        assert r.headers["connection"] == "close" and r.headers["retry-after"] == "1"
    assert len(fake.batches) == 1  # the refused request never reached the scorer


def test_a_request_not_scored_within_queue_timeout_gets_503_and_is_skipped(monkeypatch):
    monkeypatch.delenv("SEARCHRL_API_KEY", raising=False)
    fake = CountingScorer()
    with TestClient(create_app(fake, ServerConfig(queue_timeout_s=0.5, max_wait_ms=0))) as client:
        def post(query):
            return client.post("/v1/relevance/score", json={"query": query, "products": [PRODUCT]})
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, "first")  # taken into a micro-batch that blocks
            while not fake.batches:
                time.sleep(0.01)
            second = pool.submit(post, "second")  # waits in the queue behind it
            responses = [first.result(timeout=30), second.result(timeout=30)]
        for r in responses:
            assert r.status_code == 503 and "not scored within 0.5 s" in r.json()["detail"], r.text
            assert r.headers["retry-after"] == "1"
        fake.release.set()
        assert post("third").status_code == 200
    assert fake.batches == [["first"], ["third"]]  # the timed-out queued request was skipped, not scored


def test_body_limit_and_config_checks(monkeypatch):
    monkeypatch.delenv("SEARCHRL_API_KEY", raising=False)
    fake = CountingScorer()
    fake.release.set()
    with TestClient(create_app(fake, ServerConfig(max_body_bytes=1000))) as client:
        big = {"query": "laptop", "products": [{"id": str(i), "title": "t" * 50} for i in range(30)]}
        r = client.post("/v1/relevance/score", json=big)
        assert r.status_code == 413 and "the limit is 1000" in r.json()["detail"]
        assert r.headers["connection"] == "close"
        assert client.post("/v1/relevance/score", json=SCORE).status_code == 200  # small bodies still pass
    assert len(fake.batches) == 1
    for field in ("queue_timeout_s", "body_timeout_s", "drain_timeout_s", "max_body_bytes"):
        with pytest.raises(ValueError, match=field):
            ServerConfig(**{field: 0})


def test_the_drain_ends_when_nothing_is_in_flight_or_its_time_is_up():
    import asyncio

    import uvicorn
    drain = Drain(timeout_s=60)
    server = DrainingServer(uvicorn.Config(lambda *a: None), drain)
    tick = lambda: asyncio.run(server.on_tick(1))  # noqa: E731
    drain.in_flight = 2
    assert not tick() and not drain.draining  # serving
    server.handle_exit(signal.SIGTERM, None)
    assert drain.draining and not server.should_exit  # the first signal only starts the drain
    assert not tick()  # requests still in flight: keep serving them
    drain.in_flight = 0
    assert tick()  # all answered: shut down
    late = DrainingServer(uvicorn.Config(lambda *a: None), Drain(timeout_s=60))
    late.drain.in_flight = 1
    late.handle_exit(signal.SIGTERM, None)
    late.drain.started -= 61
    assert asyncio.run(late.on_tick(1))  # out of time with a request still in flight: shut down anyway
    again = DrainingServer(uvicorn.Config(lambda *a: None), Drain(timeout_s=60))
    again.drain.in_flight = 1
    again.handle_exit(signal.SIGTERM, None)
    again.handle_exit(signal.SIGTERM, None)
    assert again.should_exit  # a second signal ends the drain early


# ---------------------------------------------------------------- a real server process

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_dir, log_path, *settings: str):
    """``searchrl serve`` on the tiny model, one torch thread, with ``--set`` overrides; yields (process, port)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SEARCHRL_API_KEY"}
    sets = [x for s in settings for x in ("--set", s)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "searchrl.cli", "serve", "--model", str(model_dir),
                                 "--port", str(port), "--threads", "1", *sets],
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"server did not start: {open(log_path).read()}")
            time.sleep(0.2)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _health(port: int) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)


def test_sigterm_drains_queued_and_running_requests_then_exits_0(tiny_model_dir, tmp_path):
    n, per_request = 8, 256  # 8 requests of 256 pairs: seconds of scoring, one micro-batch each
    body = {"query": "laptop", "products": [{"id": f"p{i}", "title": f"laptop {i}", "description": "fast " * 60}
                                            for i in range(per_request)]}
    log = tmp_path / "server.log"
    with running_server(tiny_model_dir, log, "drain_timeout_s=60", "queue_timeout_s=60") as (proc, port):
        base = f"http://127.0.0.1:{port}"
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(httpx.post, f"{base}/v1/relevance/score", json=body, timeout=120)
                       for _ in range(n)]
            deadline = time.time() + 60
            while (health := _health(port).json())["in_flight"] < n:
                assert time.time() < deadline, f"only {health['in_flight']} of {n} requests reached the server"
                time.sleep(0.02)
            assert health["queued"] >= 1  # some wait in the micro-batcher's queue: the drain must finish them too
            proc.send_signal(signal.SIGTERM)
            while (r := _health(port)).status_code == 200:  # the signal is handled at once, but asynchronously
                time.sleep(0.02)
            assert r.status_code == 503 and r.json()["status"] == "draining"
            assert r.json()["in_flight"] >= 1
            late = httpx.post(f"{base}/v1/relevance/score", json=SCORE, timeout=30)
            assert late.status_code == 503 and "draining" in late.json()["detail"]
            responses = [f.result(timeout=120) for f in futures]
        assert [r.status_code for r in responses] == [200] * n
        for r in responses:  # full bodies, not cut off
            assert [x["id"] for x in r.json()["results"]] == [p["id"] for p in body["products"]]
        assert proc.wait(timeout=60) == 0
    assert "draining" in log.read_text()


@pytest.fixture(scope="module")
def strict_server(tiny_model_dir, tmp_path_factory):
    """One server with deadlines of 1-3 s, shared by the slow-client tests."""
    log = tmp_path_factory.mktemp("strict") / "server.log"
    with running_server(tiny_model_dir, log, "keep_alive_s=1", "header_timeout_s=2", "body_timeout_s=2",
                        "write_timeout_s=3", "max_header_bytes=4096") as (proc, port):
        yield port


def _connect(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)  # timeout: a missing answer fails, not hangs
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (a reset counts as closed)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _trickle(port: int, head: bytes, trickle: bytes) -> tuple[bytes, float]:
    """Send ``head``, then ``trickle`` one byte per 0.2 s until the server answers; (answer, seconds taken)."""
    with _connect(port) as sock:
        t0 = time.monotonic()
        sock.sendall(head)
        sock.settimeout(0.2)
        answer = b""
        for byte in trickle:
            try:
                answer = sock.recv(65536)
                break  # the server spoke (or closed: b"")
            except TimeoutError:
                pass
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(10)
        answer += _read_all(sock)
        return answer, time.monotonic() - t0


def test_slow_clients_get_408_or_are_closed_while_others_are_served(strict_server):
    port = strict_server
    good = json.dumps(SCORE).encode()
    post = b"POST /v1/relevance/score HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
    slow = {  # name -> (what is sent at once, what is trickled after it at 1 byte / 0.2 s)
        "headers": (post, b"x-slow: " + b"a" * 100),
        "body": (post + b"content-length: %d\r\n\r\n" % len(good), good),
    }
    done_at = {}

    def run(name):
        answer, took = _trickle(port, *slow[name])
        done_at[name] = time.monotonic()
        return answer, took

    def idle():  # connects, never sends a byte
        with _connect(port) as sock:
            t0 = time.monotonic()
            return _read_all(sock), time.monotonic() - t0

    with ThreadPoolExecutor(4) as pool:
        futures = {name: pool.submit(run, name) for name in slow}
        idle_future = pool.submit(idle)
        time.sleep(0.3)  # the slow clients are connected and trickling
        r = httpx.post(f"http://127.0.0.1:{port}/v1/relevance/score", json=SCORE, timeout=30)
        served_at = time.monotonic()
        results = {name: f.result(timeout=60) for name, f in futures.items()}
        idle_answer, idle_took = idle_future.result(timeout=60)
    assert r.status_code == 200 and r.json()["results"][0]["id"] == "p1"
    assert all(served_at < t for t in done_at.values())  # served while the slow ones were still being waited for
    head_answer, head_took = results["headers"]
    assert head_answer.startswith(b"HTTP/1.1 408") and b"headers not received within 2 s" in head_answer
    body_answer, body_took = results["body"]
    assert body_answer.startswith(b"HTTP/1.1 408") and b"body not received within 2 s" in body_answer
    assert b"connection: close" in body_answer.lower()
    assert idle_answer == b""  # closed without a word after keep_alive_s
    # cut off near their deadlines (1-2 s), long before the trickles would have ended (20+ s)
    assert max(head_took, body_took, idle_took) < 10

    with _connect(port) as sock:  # an unfinished head over max_header_bytes (h11 bounds what it buffers)
        sock.sendall(post + b"x-big: " + b"a" * 8000)
        assert _read_all(sock).startswith(b"HTTP/1.1 400")
    assert _health(port).json()["in_flight"] == 0


def test_a_client_that_stops_reading_is_cut_off_and_others_are_served(strict_server):
    port = strict_server
    n = 8000  # pipelined GET /openapi.json (3.4 KB each, 27 MB): far more than the socket buffers hold (~4 MB)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # before connect: no receive-window autotuning
    sock.settimeout(1)
    sock.connect(("127.0.0.1", port))
    try:
        try:
            sock.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * n)
        except TimeoutError:
            pass  # the server stopped reading the pipeline: its send buffer is full, which is the point
        deadline = time.time() + 20
        # in_flight is 1 only while a response to it is stuck (between pipelined requests /healthz sees 0)
        while _health(port).json()["in_flight"] != 1:
            assert time.time() < deadline, "the server never stalled on the client that does not read"
            time.sleep(0.05)
        for _ in range(3):  # the stalled response (held for write_timeout_s=3) does not stop anyone else
            r = httpx.post(f"http://127.0.0.1:{port}/v1/relevance/score", json=SCORE, timeout=30)
            assert r.status_code == 200
        deadline = time.time() + 20
        while _health(port).json()["in_flight"]:  # then it is cut off: nothing held any more
            assert time.time() < deadline, "the stalled response was never given up"
            time.sleep(0.1)
        sock.settimeout(10)
        received = _read_all(sock)  # what was already buffered, then the end of the connection
        assert 0 < received.count(b"HTTP/1.1 200") < n
    finally:
        sock.close()
