"""Relevance scoring speed: prefill-only shared-prefix scorer vs its baselines, and the HTTP server.

All figures come from one run on one model and the same Chorus test pairs (about 27
candidates per query), so the ratios hold on a noisy machine:

- ``prefill_vs_decode_ratio``: pairs/s of the prefill-only scorer as deployed (``deployed_shared_prefix``:
  1 = shared-prefix, 0 = plain: the scorer's default for the model's prompt layout) over
  decoding the whole label-first CoT as every decode runs (greedy, KV cache, batched, under the
  completion grammar, to its end) and parsing its grade.
- ``shared_vs_plain_ratio``: shared-prefix vs plain batched prefill of whole prompts, with
  the default model's prompt (segments: only the query segment is shared, a few tokens);
  ``shared_vs_plain_long_prompt_ratio``: the same for a decoder (minilm-qwen2) with the
  long default instruction, where the shared part is most of the prompt.
- ``mfu``: the scorer's achieved FLOP/s (FLOPs counted by torch's FlopCounterMode on
  the same run) over a 2048^3 fp32 matmul's FLOP/s on this machine.
- server throughput at concurrency 1, 8, 32 (``searchrl serve`` as a real process,
  the default model and prompt): pairs/s, p50 and p99 latency, for requests of
  1 ("one") and 4 ("small") candidates and, outside ``--quick``, of one query's whole
  candidate list ("query"); ``server_*_c32_vs_c1_ratio`` is what micro-batching buys.

The model is the default relevance model (SFTConfig(): minilm-prefix, block mask, sim readout, the
completion's adapters, copy term and grade conditioning: MiniLM's weights, untrained head) unless ``--model DIR`` is given; speed does not depend on the
training. ``--quick`` measures the same quantities on fewer queries, with the decode
baseline over whole batches as in the full run (an unfilled batch decodes slower per pair
and inflated the ratio). Usage: ``python benchmarks/bench_scoring.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from searchrl.data.schema import load_dataset, pair_products
from searchrl.relevance.format.parser import parse_completion
from searchrl.relevance.format.prompt import PromptConfig
from searchrl.relevance.model.builds import MINILM_QWEN2
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.scorer_config import ScorerConfig, load_scorer_config, save_scorer_config
from searchrl.relevance.model.tokenizer import encode_prompt
from searchrl.relevance.rules.engine import RuleEngine, pair_slugs
from searchrl.relevance.rules.kb import completion_grammar
from searchrl.relevance.rules.teacher import RuleTeacher
from searchrl.relevance.scoring.evaluate import decode_completions
from searchrl.relevance.scoring.scorer import RelevanceScorer
from searchrl.relevance.train.examples import build_examples
from searchrl.relevance.train.sft import SFTConfig

LONG_PROMPT = PromptConfig()  # a decoder's prompt with the full task description: the shared part is long


def chorus_dir(data: str | None) -> str:
    """``data``, or Chorus prepared once from the mirror into the cache."""
    if data is None:
        from searchrl.data.prepare import prepare
        mirror = os.environ.get("SEARCHRL_DATA_MIRROR") or str(Path(__file__).resolve().parents[1].parent / "shared/data")
        data = str(Path(os.environ.get("SEARCHRL_HOME", Path.home() / ".cache/searchrl")) / "bench_chorus")
        if not Path(data, "dataset.json").exists():
            prepare("chorus", data, mirror)
    return data


def chorus_requests(data: str | None, n_queries: int) -> tuple[list[tuple[str, list[dict]]], object]:
    pairs = load_dataset(chorus_dir(data)).split("test").pairs()
    qids = list(dict.fromkeys(pairs["query_id"]))[:n_queries]
    pairs = pairs[pairs["query_id"].isin(qids)]
    products = pair_products(pairs)
    groups = pairs.groupby("query_id", sort=False).indices
    return [(pairs["text"].iloc[ix[0]], [products[i] for i in ix]) for ix in groups.values()], pairs


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    return 2 * n ** 3 / timed(lambda: torch.mm(a, b), repeats)


def counted_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def decode_pairs_per_s(scorer: RelevanceScorer, pairs_df, n: int) -> tuple[float, float]:
    """(pairs/s, mean new tokens) decoding the whole CoT of the first n pairs under the completion grammar (as
    evaluation and the report decode) and parsing the grade; the token cap is twice the rule teacher's longest."""
    cfg = scorer.config.prompt
    examples, _ = build_examples(pairs_df.head(n), RuleTeacher(RuleEngine.from_yaml(), cfg), cfg)
    tok = scorer.tokenizer
    cap = 2 * max(len(tok(e["completion"], add_special_tokens=False)["input_ids"]) + 1 for e in examples)
    queries, products = [str(q) for q in pairs_df.head(n)["text"]], pair_products(pairs_df.head(n))
    prompts = [scorer.prompt(q, p) for q, p in zip(queries, products)]
    grammar, new_tokens = completion_grammar(tok, cfg), []
    t0 = time.perf_counter()
    for start in range(0, n, scorer.batch_size):
        end = start + scorer.batch_size  # linking each pair's type-step candidates is part of decoding's cost
        texts = decode_completions(scorer.model, tok, prompts[start:end], cap, scorer.batch_size, progress=False,
                                   grammar=grammar, linked=pair_slugs(cfg, queries[start:end], products[start:end]))
        [parse_completion(t, cfg.order) for t in texts]
        new_tokens += [len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    return n / (time.perf_counter() - t0), float(np.mean(new_tokens))


def _body(query: str, products: list[dict]) -> dict:
    clean = []
    for i, p in enumerate(products):
        item = {"id": str(i)}
        for k, v in p.items():
            if v is None or v != v or v == "":
                continue
            item[k] = json.loads(v) if k == "attributes" and isinstance(v, str) else v
        clean.append(item)
    return {"query": query, "products": clean}


def _load(base: str, bodies: list[dict], concurrency: int, n_requests: int) -> tuple[float, list[float]]:
    """(pairs/s, latencies) of n_requests POSTs from `concurrency` concurrent clients.

    The clients are asyncio tasks on one thread: 32 client threads would compete with
    the server for this machine's two cores and measure the load generator instead.
    """
    import asyncio

    import httpx

    async def run():
        latencies, pairs = [], 0
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as cl:
            async def client(k):
                nonlocal pairs
                for i in range(k, n_requests, concurrency):
                    b = bodies[i % len(bodies)]
                    t0 = time.perf_counter()
                    (await cl.post("/v1/relevance/score", json=b)).raise_for_status()
                    latencies.append(time.perf_counter() - t0)
                    pairs += len(b["products"])
            t0 = time.perf_counter()
            await asyncio.gather(*(client(k) for k in range(concurrency)))
            return pairs / (time.perf_counter() - t0), latencies
    return asyncio.run(run())


def server_figures(model_dir: Path, shapes: dict[str, tuple[list[dict], int]], levels, threads: int) -> dict:
    """For each request shape (bodies, requests per level) and concurrency: pairs/s, p50 and p99 latency."""
    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "SEARCHRL_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "searchrl.cli", "serve", "--model", str(model_dir), "--port",
                             str(port), "--threads", str(threads), "--set", "max_batch_pairs=64"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base, out = f"http://127.0.0.1:{port}", {}
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        for shape, (bodies, n_requests) in shapes.items():
            httpx.post(f"{base}/v1/relevance/score", json=bodies[0], timeout=600)  # warm-up
            for c in levels:
                pps, lat = _load(base, bodies, c, n_requests)
                out[f"server_{shape}_c{c}_pairs_per_s"] = pps
                out[f"server_{shape}_c{c}_p50_ms"] = float(np.percentile(lat, 50) * 1000)
                out[f"server_{shape}_c{c}_p99_ms"] = float(np.percentile(lat, 99) * 1000)
            out[f"server_{shape}_c{levels[-1]}_vs_c1_ratio"] = (out[f"server_{shape}_c{levels[-1]}_pairs_per_s"]
                                                               / out[f"server_{shape}_c1_pairs_per_s"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer pairs; ends within a minute")
    ap.add_argument("--json", help="write {'figures': {...}} here")
    ap.add_argument("--data", help="prepared Chorus directory (default: prepared from the mirror)")
    ap.add_argument("--model", help="trained model directory (default: the quickstart architecture, random weights)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-server", action="store_true", help="scorer figures only (e.g. for a --model too slow to serve)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n_queries, repeats, n_decode = (8, 1, 2 * a.batch_size) if a.quick else (40, 2, 4 * a.batch_size)
    requests, pairs_df = chorus_requests(a.data, n_queries)
    n_pairs = sum(len(p) for _, p in requests)
    if a.model:
        model, tok = load_relevance_model(a.model)
        prompt = load_scorer_config(a.model).prompt
    else:
        default = SFTConfig()  # the default relevance model's build and prompt, untrained
        model, tok = load_relevance_model(default.model, prefix=default.prefix)
        prompt = default.prompt
    shared = RelevanceScorer(model, tok, ScorerConfig(prompt=prompt), a.batch_size, shared_prefix=True)
    plain = RelevanceScorer(model, tok, ScorerConfig(prompt=prompt), a.batch_size, shared_prefix=False)
    shared.grade_probs(requests[:1])  # warm-up
    f = {"pairs": n_pairs, "queries": len(requests), "threads": a.threads,
         "mean_prompt_tokens": float(np.mean([len(encode_prompt(tok, shared.prompt(q, p)))
                                               for q, ps in requests for p in ps]))}
    f["matmul_gflops"] = matmul_flops() / 1e9
    t_shared = timed(lambda: shared.grade_probs(requests), repeats)
    f["shared_pairs_per_s"] = n_pairs / t_shared
    f["plain_pairs_per_s"] = n_pairs / timed(lambda: plain.grade_probs(requests), repeats)
    f["shared_vs_plain_ratio"] = f["shared_pairs_per_s"] / f["plain_pairs_per_s"]
    deployed = RelevanceScorer(model, tok, ScorerConfig(prompt=prompt), a.batch_size)  # the scorer's own choice
    f["deployed_shared_prefix"] = int(deployed.shared_prefix)  # 1 = shared-prefix path, 0 = plain prefill
    f["prefill_pairs_per_s"] = f["shared_pairs_per_s" if deployed.shared_prefix else "plain_pairs_per_s"]
    f["scorer_gflops"] = counted_flops(lambda: deployed.grade_probs(requests)) / (n_pairs / f["prefill_pairs_per_s"]) / 1e9
    f["mfu"] = f["scorer_gflops"] / f["matmul_gflops"]
    decoder, dtok = load_relevance_model(MINILM_QWEN2)
    long = [RelevanceScorer(decoder, dtok, ScorerConfig(prompt=LONG_PROMPT), a.batch_size, shared_prefix=s)
            for s in (True, False)]
    t_long = [timed(lambda s=s: s.grade_probs(requests), repeats) for s in long]
    f["shared_long_prompt_pairs_per_s"] = n_pairs / t_long[0]
    f["shared_vs_plain_long_prompt_ratio"] = t_long[1] / t_long[0]
    f["decode_pairs_per_s"], f["decode_new_tokens"] = decode_pairs_per_s(deployed, pairs_df, min(n_decode, n_pairs))
    f["prefill_vs_decode_ratio"] = f["prefill_pairs_per_s"] / f["decode_pairs_per_s"]
    shapes = {  # batching across requests pays where one request is too small to fill a forward pass
        "one": ([_body(q, prods[i:i + 1]) for q, prods in requests for i in range(len(prods))], 64),
        "small": ([_body(q, prods[i:i + 4]) for q, prods in requests for i in range(0, len(prods), 4)], 64)}
    if not a.quick:  # whole candidate lists (~27 per request): one request already fills a forward pass
        shapes["query"] = ([_body(q, p) for q, p in requests], 96)
    if not a.no_server:
        with tempfile.TemporaryDirectory() as d:
            model.save_pretrained(d)
            tok.save_pretrained(d)
            save_scorer_config(d, ScorerConfig(prompt=prompt))  # the server runs the deployed model's prompt
            f.update(server_figures(Path(d), shapes, (1, 8, 32), a.threads))

    report(f"Relevance scoring, Chorus test: {n_pairs} pairs, {len(requests)} queries, "
           f"{f['mean_prompt_tokens']:.0f} prompt tokens/pair, {a.threads} threads", f, a.json)


def report(title: str, figures: dict, json_path: str | None) -> None:
    """Print the figures as a table; with a path, also write them as {"figures": {...}}."""
    print(f"\n{title}")
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        print(f"  {k:<{width}}  {v:,.3f}" if isinstance(v, float) else f"  {k:<{width}}  {v}")
    if json_path:
        Path(json_path).write_text(json.dumps({"figures": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
