"""Retriever training and search cost: R-GRPO's step split, time to the hardneg baseline, ANN search.

Three parts, all in one run on one machine (ratios only between figures of that run):

1. R-GRPO step split. The rgrpo run of part 2 logs, per step (metrics.jsonl), ``encode``
   (query encoding plus, on rebuild steps, re-encoding the catalogue and rebuilding the
   index), ``retrieve`` (top-K search), ``reward`` (relevance scorer + quality + BM25
   exclusivity) and the whole step; ``update`` = step - the three (policy and reference
   forward passes, backward, optimizer). Means over all steps, their shares, and the mean
   step with and without a catalogue rebuild (``rebuild_every`` is small so both occur).
2. Wall time to hardneg's nDCG@10. A shared SFT start (a few InfoNCE steps, not counted in
   either time), then A = hardneg (mining + training) and B = rgrpo, with the same steps and
   batch size and the library defaults otherwise. A's time = mining seconds + its step
   seconds; B's time at step s = the sum of its first s step seconds (its first step encodes
   the catalogue, the counterpart of mining). Model loading and checkpoint writing, paid by
   both alike, are left out (``*_wall_s`` include them). nDCG@10 on the valid split of a
   small derived dataset (some train queries, valid queries, their judged products and a
   seeded random fill, so that every catalogue encode is affordable on 2 cores) for A's
   final model and every checkpoint of B: ``rgrpo_final_ndcg@10``, ``rgrpo_reached_hardneg``
   (1/0: some trained checkpoint of B reaches A's figure), ``rgrpo_time_to_hardneg_s`` and
   ``rgrpo_vs_hardneg_time_ratio`` (A's time / B's time to the first such checkpoint), and
   ``start_matches_hardneg`` (1 when the shared start already scores as well as A). The
   relevance reward needs ``--relevance-model``; without it R-GRPO runs with w_rel = 0
   (``relevance_reward`` = 0). ``--quick`` skips SFT (the zero-shot MiniLM is the start) and
   runs 2 steps on 150 products: a smoke test of the code paths, not a comparison.
3. Search latency (FAISS through searchrl's FaissIndex): single-query p50/p99 and batched
   queries/s. Catalogue: the dataset's queries encoded by the zero-shot MiniLM (encode +
   search, and search only) over a flat index of the catalogue's size; its vectors are
   seeded random unit vectors, since exact search costs the same whatever the values and
   encoding 19k products takes minutes here. Synthetic: 1M vectors (``--quick``: 30k),
   dim 384, drawn from a seeded mixture of Gaussian clusters around random unit centres
   (uniform random vectors have no neighbourhood structure and are a worst case for
   IVF/HNSW recall), queries from the same mixture; flat vs IVF (nlist = sqrt(N): 4 sqrt(N)
   lists would spend about ten minutes in k-means on 2 cores; nprobe 16) vs HNSW (M 32,
   efConstruction 40, efSearch 64): build seconds, p50/p99, queries/s, recall@10 against
   flat, ``ivf_vs_flat_qps_ratio`` and ``hnsw_vs_flat_qps_ratio``.

Usage: ``python benchmarks/bench_retriever.py [--quick] [--json PATH] [--data DIR] [--relevance-model DIR]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("TQDM_DISABLE", "1")  # model-loading bars would drown the table

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from searchrl.config import load_config, save_config  # noqa: E402
from searchrl.data.schema import Dataset, load_dataset, write_dataset  # noqa: E402
from searchrl.lexical.bm25 import BM25Index  # noqa: E402
from searchrl.retrieval.config import RetrieverConfig  # noqa: E402
from searchrl.retrieval.encoder import build_encoder, embed, save_encoder  # noqa: E402
from searchrl.retrieval.evaluate import Retriever, evaluate_retrieval  # noqa: E402
from searchrl.retrieval.index import FaissIndex, IndexConfig  # noqa: E402
from searchrl.retrieval.rgrpo import train_rgrpo  # noqa: E402
from searchrl.retrieval.train_sft import train_contrastive  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_scoring import report  # noqa: E402  (the scoring benchmark's table / JSON writer)

DIM = 384  # MiniLM's embedding size
# training sizes: the derived dataset and the runs (quick: a smoke test of the same code paths)
# (sft_steps 0: the zero-shot MiniLM is the start; neg / hard: global random / mined negatives of sft and hardneg)
QUICK = SimpleNamespace(train_q=3, valid_q=3, products=150, seq=32, batch=2, k=4, neg=4, hard=2, sft_steps=0,
                        steps=2, rebuild=2, save_every=0, synth=30_000, synth_queries=200, single=20)
FULL = SimpleNamespace(train_q=20, valid_q=27, products=1200, seq=64, batch=8, k=8, neg=32, hard=4, sft_steps=10,
                       steps=12, rebuild=4, save_every=4, synth=1_000_000, synth_queries=200, single=100)


@contextmanager
def env(name: str, value: str):
    """Set an environment variable for the block (restored afterwards)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50) * 1000), float(np.percentile(seconds, 99) * 1000)


def small_dataset(ds: Dataset, p: SimpleNamespace, seed: int = 0) -> Dataset:
    """The first train_q train and valid_q valid queries, their judged products and a seeded fill to p.products."""
    q = ds.queries
    keep_q = q[((q["split"] == "train") & (q.groupby("split").cumcount() < p.train_q))
               | ((q["split"] == "valid") & (q.groupby("split").cumcount() < p.valid_q))]
    judg = ds.judgments[ds.judgments["query_id"].isin(keep_q["query_id"])]
    ids = ds.products["product_id"].astype(str)
    keep = ids.isin(set(judg["product_id"].astype(str))).to_numpy().copy()  # [N] bool
    rest = np.flatnonzero(~keep)
    keep[np.random.default_rng(seed).permutation(rest)[:max(0, p.products - int(keep.sum()))]] = True
    return Dataset(ds.products[keep].reset_index(drop=True), keep_q.reset_index(drop=True),
                   judg.reset_index(drop=True), dict(ds.card))


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def step_split(rows: list[dict]) -> dict:
    """Mean R-GRPO step seconds by part (module docstring, part 1) and the shares of the step."""
    sec = np.array([r["seconds"] for r in rows])  # [steps]
    parts = {name: np.array([r[f"{name}_seconds"] for r in rows]) for name in ("encode", "retrieve", "reward")}
    parts["update"] = sec - sum(parts.values())
    rebuild = np.array([r["index_age"] == 0 for r in rows])  # [steps] True where the catalogue was re-encoded
    f = {"rgrpo_steps": len(rows), "rgrpo_rebuild_steps": int(rebuild.sum()), "rgrpo_step_s": float(sec.mean())}
    for name, v in parts.items():
        f[f"rgrpo_{name}_s"] = float(v.mean())
    for name, v in parts.items():
        f[f"rgrpo_{name}_share"] = float(v.sum() / sec.sum())
    f["rgrpo_rebuild_step_s"] = float(sec[rebuild].mean())
    if (~rebuild).any():
        f["rgrpo_plain_step_s"] = float(sec[~rebuild].mean())
        f["rgrpo_plain_encode_s"] = float(parts["encode"][~rebuild].mean())
    return f


def pipelines(ds: Dataset, p: SimpleNamespace, relevance_model: str | None, work: Path) -> dict:
    """Parts 1 and 2: shared SFT start, then hardneg (A) and rgrpo (B); see the module docstring."""
    sub = small_dataset(ds, p)
    data_dir = write_dataset(sub, work / "data")
    reward = ([f"reward.relevance_model={relevance_model}"] if relevance_model else ["reward.w_rel=0"])

    def cfg(stage: str, *extra: str) -> RetrieverConfig:
        return load_config(RetrieverConfig, None, [
            f"stage={stage}", f"data_dir={data_dir}", f"run.output_dir={work / stage}", f"max_seq_length={p.seq}",
            f"batch_size={p.batch}", f"global_negatives={p.neg}", f"hard_negatives={p.hard}", "run.device=cpu",
            "run.progress=false", "run.seed=0", *extra])

    f = {"relevance_reward": int(bool(relevance_model)), "train_products": len(sub.products),
         "train_queries": int((sub.queries["split"] == "train").sum()),
         "valid_queries": int((sub.queries["split"] == "valid").sum()), "steps": p.steps, "batch_size": p.batch}
    t0 = time.perf_counter()
    if p.sft_steps:
        train_contrastive(cfg("sft", f"optim.max_steps={p.sft_steps}"))
        start = work / "sft" / "final"
    else:  # the zero-shot encoder, saved with its config so that evaluation encodes at the same seq length
        start = save_encoder(build_encoder(None, max_seq_length=p.seq), work / "start")
        save_config(cfg("sft"), start / "retriever_config.yaml")
    f["sft_steps"], f["sft_wall_s"] = p.sft_steps, time.perf_counter() - t0  # the shared start: in neither time

    # each pipeline gets an empty embedding cache of its own: otherwise B's first index would be read from the
    # encoding that A's mining left in the cache, and B's time would lack its counterpart of mining
    t0 = time.perf_counter()
    with env("SEARCHRL_HOME", str(work / "home_hardneg")):
        train_contrastive(cfg("hardneg", f"encoder={start}", f"optim.max_steps={p.steps}"))
    f["hardneg_wall_s"] = time.perf_counter() - t0
    mining = json.loads((work / "hardneg" / "mining.json").read_text())
    hn_steps = [r["seconds"] for r in read_metrics(work / "hardneg")]
    f["hardneg_mining_s"] = mining["mining_seconds"]
    f["hardneg_step_s"] = float(np.mean(hn_steps))
    f["hardneg_time_s"] = mining["mining_seconds"] + float(np.sum(hn_steps))

    b_cfg = cfg("rgrpo", f"encoder={start}", f"optim.max_steps={p.steps}", f"group_size={p.k}",
                f"rebuild_every={p.rebuild}", f"run.save_every={p.save_every}", *reward)
    t0 = time.perf_counter()
    with env("SEARCHRL_HOME", str(work / "home_rgrpo")):
        train_rgrpo(b_cfg)
    f["rgrpo_wall_s"] = time.perf_counter() - t0
    rows = read_metrics(work / "rgrpo")
    f.update(step_split(rows))
    elapsed = np.cumsum([r["seconds"] for r in rows])  # [steps] B's time at the end of each step

    # evaluation: a temporary SEARCHRL_HOME, so that the encodings of throwaway checkpoints stay out of the
    # user's embedding cache; BM25 over the same small catalogue (evaluate_retrieval would index the dataset's)
    bm25 = BM25Index(sub.products)
    with env("SEARCHRL_HOME", str(work / "home")):
        def ndcg(model_dir: Path) -> float:
            retriever = Retriever(model_dir, sub.products, index=IndexConfig(), progress=False)
            return float(evaluate_retrieval(retriever, sub, "valid", ks=(10,), bm25=bm25)["ndcg@10"])

        f["start_ndcg@10"] = ndcg(start)
        f["hardneg_ndcg@10"] = target = ndcg(work / "hardneg" / "final")
        every = p.save_every or p.steps  # no checkpoints: the final model only
        points = [(s, work / "rgrpo" / f"checkpoint-{s}") for s in range(every, p.steps, every)]
        points = [(0, start)] + points + [(p.steps, work / "rgrpo" / "final")]  # step 0: the shared start
        scores = {}  # step -> R-GRPO's nDCG@10 there (every checkpoint and the final model: the whole curve)
        for step, model_dir in points:
            scores[step] = f["start_ndcg@10"] if step == 0 else ndcg(model_dir)
    f["rgrpo_final_ndcg@10"] = scores[p.steps]
    f["rgrpo_best_ndcg@10"] = max(scores.values())
    # a start that already matches hardneg (mined negatives did not help) makes "time to reach it" 0 for anyone
    f["start_matches_hardneg"] = int(scores[0] >= target)
    reached = next((s for s in sorted(scores) if s and scores[s] >= target), None)  # first trained step
    f["rgrpo_reached_hardneg"] = int(reached is not None)
    if reached is not None:
        f["rgrpo_reached_at_step"] = reached
        f["rgrpo_time_to_hardneg_s"] = float(elapsed[reached - 1])
        f["rgrpo_vs_hardneg_time_ratio"] = f["hardneg_time_s"] / f["rgrpo_time_to_hardneg_s"]
    return f


def single_latency(search, queries: list) -> list[float]:
    """Seconds of one call per query (one query per call)."""
    out = []
    for q in queries:
        t0 = time.perf_counter()
        search(q)
        out.append(time.perf_counter() - t0)
    return out


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def catalogue_latency(ds: Dataset, p: SimpleNamespace) -> dict:
    """Part 3, catalogue: zero-shot MiniLM query encoding + flat search over a catalogue-sized index."""
    model = build_encoder(None, max_seq_length=128).eval()  # what `searchrl search` runs without a trained model
    ids = ds.products["product_id"].astype(str).tolist()
    vecs = unit_rows(np.random.default_rng(1).standard_normal((len(ids), DIM), dtype=np.float32))  # [N, D]
    index = FaissIndex(vecs, ids)
    texts = ds.queries["text"].tolist()
    texts = (texts * (p.single // len(texts) + 1))[:p.single]  # the dataset's queries, repeated up to p.single
    enc = lambda qs: embed(model, qs, 64).cpu().numpy()  # noqa: E731  [Q, D]
    index.search(enc(texts[:4]), 10)  # warm-up
    qembs = [enc([t]) for t in texts]  # [1, D] each
    both = single_latency(lambda t: index.search(enc([t]), 10), texts)
    only = single_latency(lambda q: index.search(q, 10), qembs)
    f = {"catalogue_products": len(ids)}
    f["catalogue_encode_search_p50_ms"], f["catalogue_encode_search_p99_ms"] = percentiles_ms(both)
    f["catalogue_search_p50_ms"], f["catalogue_search_p99_ms"] = percentiles_ms(only)
    t0 = time.perf_counter()
    q = enc(texts)
    t1 = time.perf_counter()
    index.search(q, 10)
    t2 = time.perf_counter()
    f["catalogue_encode_search_qps"] = len(texts) / (t2 - t0)
    f["catalogue_search_qps"] = len(texts) / (t2 - t1)
    return f


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """[n, D] unit vectors: a random centre plus isotropic noise of norm ~1 (cos to the centre ~0.7)."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for a in range(0, n, chunk):  # chunks: the noise of 1M rows at once would double the peak memory
        b = min(n, a + chunk)
        noise = rng.standard_normal((b - a, centres.shape[1]), dtype=np.float32) / np.sqrt(centres.shape[1])
        out[a:b] = unit_rows(centres[rng.integers(0, len(centres), b - a)] + noise)
    return out


def synthetic_latency(p: SimpleNamespace) -> dict:
    """Part 3, synthetic: flat vs IVF vs HNSW over p.synth clustered vectors (module docstring)."""
    rng = np.random.default_rng(2)
    centres = unit_rows(rng.standard_normal((max(16, p.synth // 1000), DIM), dtype=np.float32))  # [C, D]
    vecs = clustered(p.synth, rng, centres)  # [N, D]
    queries = clustered(p.synth_queries, rng, centres)  # [Q, D]
    ids = [str(i) for i in range(p.synth)]
    nlist = int(np.sqrt(p.synth))
    configs = {"flat": IndexConfig("flat"), "ivf": IndexConfig("ivf", nlist=nlist, nprobe=16),
               "hnsw": IndexConfig("hnsw", hnsw_m=32, ef_construction=40, ef_search=64)}
    f, exact = {"synthetic_vectors": p.synth, "ivf_nlist": nlist}, None
    for kind, config in configs.items():
        t0 = time.perf_counter()
        index = FaissIndex(vecs, ids, config)
        f[f"{kind}_build_s"] = time.perf_counter() - t0
        lat = single_latency(lambda q: index.search_rows(q, 10), [queries[i:i + 1] for i in range(p.single)])
        f[f"{kind}_p50_ms"], f[f"{kind}_p99_ms"] = percentiles_ms(lat)
        t0 = time.perf_counter()
        _, rows = index.search_rows(queries, 10)  # [Q, 10]
        f[f"{kind}_qps"] = len(queries) / (time.perf_counter() - t0)
        exact = rows if exact is None else exact  # flat runs first: the exact top 10
        f[f"{kind}_recall@10"] = float(np.mean([len(set(r) & set(e)) / 10 for r, e in zip(rows, exact)]))
        index = None
        gc.collect()  # one index of 1M vectors at a time
    f["ivf_vs_flat_qps_ratio"] = f["ivf_qps"] / f["flat_qps"]
    f["hnsw_vs_flat_qps_ratio"] = f["hnsw_qps"] / f["flat_qps"]
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny runs and a 30k-vector index; ends within a minute")
    ap.add_argument("--json", help="write {'figures': {...}} here")
    ap.add_argument("--data", default="runs/quickstart/data", help="prepared Chorus directory")
    ap.add_argument("--relevance-model", default="runs/quickstart/sft/final",
                    help="relevance model for R-GRPO's reward (w_rel = 0 when the directory does not exist)")
    ap.add_argument("--threads", type=int, default=2, help="torch and FAISS threads (default 2)")
    a = ap.parse_args()
    if not Path(a.data, "dataset.json").exists():
        raise SystemExit(f"{a.data}: no prepared dataset (run the quickstart, or pass --data DIR)")
    relevance_model = a.relevance_model if Path(a.relevance_model).is_dir() else None
    if relevance_model is None:
        print(f"note: no relevance model at {a.relevance_model}: R-GRPO runs with reward.w_rel=0")
    torch.set_num_threads(a.threads)
    faiss.omp_set_num_threads(a.threads)
    p = QUICK if a.quick else FULL
    ds = load_dataset(a.data)
    t0 = time.perf_counter()
    f = {"threads": a.threads}
    with tempfile.TemporaryDirectory() as work:
        f.update(pipelines(ds, p, relevance_model, Path(work)))
    f.update(catalogue_latency(ds, p))
    f.update(synthetic_latency(p))
    f["total_s"] = time.perf_counter() - t0
    report(f"Retriever: R-GRPO step split, time to hardneg's nDCG@10, search latency ({a.threads} threads"
           f"{', quick' if a.quick else ''})", f, a.json)


if __name__ == "__main__":
    main()
