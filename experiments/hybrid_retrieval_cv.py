"""What each dense retriever adds to BM25, with power: every Chorus query tested once by query cross-validation.

    python -m experiments.hybrid_retrieval_cv --data DIR [--cv 5] [--folds 0,1,2,3,4] [--max-products 0]
        [--systems bm25,zero-shot,sft,hardneg,rgrpo,rgrpo-nox] [--judge oracle] [--relevance-model DIR]
        [--set KEY=VALUE ...] [--out runs/hybrid_cv] [--results-dir docs/results] [--quick]
    python -m experiments.hybrid_retrieval_cv --choose-fusion --data DIR   # the FusionConfig default, on valid

(``python experiments/hybrid_retrieval_cv.py ...`` works too: the file imports only the searchrl package.)

The 135 queries are dealt into ``--cv`` folds (searchrl.eval.crossval.query_folds, seed 0). On each fold the
retriever's own stages (searchrl.retrieval.chain.run_stage on the packaged retriever_quickstart.yaml: 12 steps a
stage, R-GRPO's index rebuilt every 6) train on every query outside the test fold (crossval's valid fold trains
too: nothing is tuned per fold): SFT from MiniLM, hardneg from SFT, R-GRPO from SFT with exclusivity (w_x 0.1)
and without (``rgrpo-nox``, w_x 0). Every system is evaluated on the fold's test queries over one catalogue
(``--max-products``; 0 = all 19,406 products): BM25 alone, each dense model alone, and each fused with BM25
(searchrl.retrieval.hybrid, default fusion). Per system and K in 10, 100, 1000: hitrate@K, nDCG@10, added
recall@K (Good items in the top K that BM25's top K misses, over all the query's Good items), lost recall@K
(the reverse) and BM25 overlap@K, each with a query-bootstrap 95% interval over all tested queries, and paired
differences: what each hybrid and each dense route adds to BM25; trained vs zero-shot inside the hybrid;
R-GRPO vs SFT and hardneg; exclusivity on vs off. It writes docs/results/hybrid.md (ResultsPage: command, date,
machine, wall time) and hybrid.json (with every per-query value), and prints each stage's wall time and the
re-encoding cost of each R-GRPO index rebuild. Finished stages are reused (same config), so a re-run only
evaluates.

R-GRPO's relevance judge (``--judge``) is ``oracle`` by default: the fold's labels of its own training queries,
and the rule engine for unlabelled pairs. R-GRPO only ever scores training queries, so no test label reaches
training. A relevance model trained on Chorus's default split (``--judge model --relevance-model DIR``) has seen
the labels of other folds' test queries. (The rules were written with every query in view, so the oracle's
fallback is itself an upper reference.)

``--choose-fusion`` scores retrieval.hybrid.FUSION_GRID on the dataset's valid split (never test) with the
zero-shot and an SFT dense route (SFT trained on the train split) and writes docs/results/hybrid_fusion.md; the
FusionConfig defaults are its choice. 16 minutes the first time beside another job (two catalogue encodings),
seconds once they are cached.

Wall time. ``--quick`` (20 queries and their 484 judged products, fold 0 of 5, 2 steps a stage, 16-token texts)
takes about 30 s on 2 cores (25-30 s measured beside another job). The default (5 folds, 19,406 products) is
sized to about 90 minutes on 2 idle CPU cores -- estimated from measured rates, not run:
1. encoding the catalogue (MiniLM, 32 tokens) ran at 115-130 products/s here, 150-170 s a pass, and the run makes
   31 passes: zero-shot once; per fold SFT's (at hardneg mining; R-GRPO's first index and SFT's evaluation reuse
   it from the cache), hardneg's, and per R-GRPO run one rebuild and the final encoder's: 78-87 min;
2. training: SFT's 12 steps on the whole catalogue took 93 s beside another job; hardneg and each R-GRPO run
   about a minute more (benchmarks/results_retriever.json: ~1.5 and ~2.7 s a step): ~3 min a fold, ~14 min;
3. BM25, the fold's data, per-query metrics and bootstraps: under a minute a fold.
About 95 minutes in all. With another job on the two cores encoding falls to 40-60 products/s (measured) and the
run takes 3-4 hours. ``--systems bm25,zero-shot,sft,rgrpo`` saves 2 passes and ~1.5 min of training a fold.

Simplifies: one seed; folds of queries, not balanced by grade; training and evaluation share one catalogue;
unjudged products count as not relevant (Chorus's judgments were collected on lexical result lists, so BM25
has a home advantage that added recall understates the dense routes against).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import searchrl
from searchrl.config import load_config
from searchrl.data.schema import Dataset, load_dataset, write_dataset
from searchrl.eval.crossval import fold_dataset, query_folds
from searchrl.eval.results_page import ResultsPage
from searchrl.lexical.bm25 import BM25Index
from searchrl.metrics.measures import (
    added_recall_per_query,
    bm25_overlap_per_query,
    lost_recall_per_query,
    retrieval_metrics_per_query,
)
from searchrl.metrics.stats import format_difference, paired_bootstrap, query_bootstrap, verdict
from searchrl.retrieval.chain import catalogue_subset, run_stage, stage_config
from searchrl.retrieval.config import RetrieverConfig
from searchrl.retrieval.evaluate import Retriever
from searchrl.retrieval.hybrid import FUSION_GRID, FusionConfig, HybridRetriever, choose_fusion
from searchrl.retrieval.judges import JUDGES

CONFIG = Path(searchrl.__file__).resolve().parent / "configs" / "retriever_quickstart.yaml"
KS = (10, 100, 1000)
DENSE = ("zero-shot", "sft", "hardneg", "rgrpo", "rgrpo-nox")
SYSTEMS = ("bm25", *DENSE)
TRAINED = {"sft": "sft", "hardneg": "hardneg", "rgrpo": "rgrpo", "rgrpo-nox": "rgrpo"}  # system -> stage
QUICK = {"folds": "0", "max_queries": 20, "max_products": 400, "n_boot": 200,  # 2 steps a stage, one R-GRPO rebuild
         "set": ["optim.max_steps=2", "rebuild_every=1", "batch_size=8", "global_negatives=8", "mine_depth=20",
                 "max_seq_length=16"]}


# ---------------------------------------------------------------- data and training

def query_subset(ds: Dataset, n: int, seed: int = 0) -> Dataset:
    """``ds`` with a seeded sample of ``n`` of its queries and their judgments (0 = all)."""
    if not n or n >= len(ds.queries):
        return ds
    keep = ds.queries.iloc[np.sort(np.random.default_rng([seed, 31]).permutation(len(ds.queries))[:n])]
    judged = ds.judgments[ds.judgments["query_id"].isin(set(keep["query_id"]))]
    return dataclasses.replace(ds, queries=keep.reset_index(drop=True), judgments=judged.reset_index(drop=True))


def base_config(sets: list[str]) -> RetrieverConfig:
    """The packaged retriever_quickstart.yaml with ``sets``; the catalogue is the one written per fold."""
    cfg = load_config(RetrieverConfig, CONFIG, sets)
    return dataclasses.replace(cfg, max_products=0, run=dataclasses.replace(cfg.run, progress=False, resume=True))


def train_fold(base: RetrieverConfig, data_dir: Path, out: Path, systems: list[str], judge: str,
               relevance_model: str) -> tuple[dict[str, Path], dict[str, float]]:
    """({system: final dir}, {stage: train seconds}) on one fold: only the stages ``systems`` need (SFT for any)."""
    wanted = [s for s in systems if s in TRAINED]
    if not wanted:
        return {}, {}
    reward = dataclasses.replace(base.reward, judge=judge, relevance_model=relevance_model if judge == "model" else "")
    sft = stage_config(base, out / "ret_sft", stage="sft", data_dir=str(data_dir), reward=reward)
    dirs, seconds = {}, {}
    dirs["sft"], seconds["sft"] = run_stage(sft)
    for name in wanted:
        if name == "sft":
            continue
        extra = {"reward": dataclasses.replace(reward, w_x=0.0)} if name == "rgrpo-nox" else {}
        cfg = stage_config(sft, out / f"ret_{name}", stage=TRAINED[name], encoder=str(dirs["sft"]), **extra)
        dirs[name], seconds[name] = run_stage(cfg)
        if TRAINED[name] == "rgrpo":
            seconds[f"{name} rebuild"] = rebuild_seconds(out / f"ret_{name}" / "metrics.jsonl")
    return {s: dirs[s] for s in wanted}, seconds


def rebuild_seconds(metrics: Path) -> float:
    """Mean seconds of R-GRPO's index rebuilds after the first (catalogue re-encoded, index rebuilt, queries
    encoded), from the last run in its metrics.jsonl; NaN when it had none."""
    if not metrics.exists():
        return float("nan")
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    starts = [i for i, r in enumerate(rows) if r.get("step") == 1]
    rows = rows[starts[-1]:] if starts else rows
    costs = [r["encode_seconds"] for r in rows if r.get("index_age") == 0 and r.get("step", 1) > 1]
    return float(np.mean(costs)) if costs else float("nan")


# ---------------------------------------------------------------- evaluation

def fold_values(dense: dict[str, Retriever], bm25: BM25Index, test: Dataset, fusion: FusionConfig,
                ks=KS) -> dict[str, dict[str, dict[str, float]]]:
    """{system: {metric: {query id: value}}} on ``test``'s queries: BM25, each dense model and its hybrid."""
    qids, texts = test.queries["query_id"].astype(str).tolist(), test.queries["text"].tolist()
    qrels = {str(q): dict(zip(g["product_id"].astype(str), g["grade"].astype(int)))
             for q, g in test.judgments.groupby("query_id")}
    cuts = sorted(set(ks) | {10})
    lexical = dict(zip(qids, [[p for p, _ in h] for h in bm25.search(texts, max(cuts))]))
    runs = {"bm25": dict.fromkeys(cuts, lexical)}  # {system: {K: {query: ids}}}
    for name, retriever in dense.items():
        hits = dict(zip(qids, [[p for p, _ in h] for h in retriever.search(texts, max(cuts))]))
        runs[name] = dict.fromkeys(cuts, hits)  # a dense list is the same at every depth: metrics cut it
        hybrid = HybridRetriever(retriever, bm25=bm25, fusion=fusion)
        fused = {k: hybrid.search_batch(texts, k) for k in cuts}  # fused at each K: the depth follows K
        runs[f"hybrid({name})"] = {k: dict(zip(qids, [[h.product_id for h in f] for f in fused[k]])) for k in cuts}
    out = {}
    for system, by_k in runs.items():
        values = {"ndcg@10": retrieval_metrics_per_query(by_k[10], qrels, (10,))["ndcg@10"]}
        for k in ks:
            values[f"hitrate@{k}"] = retrieval_metrics_per_query(by_k[k], qrels, (k,))[f"hitrate@{k}"]
            values[f"added_recall@{k}"] = added_recall_per_query(by_k[k], lexical, qrels, k)
            values[f"lost_recall@{k}"] = lost_recall_per_query(by_k[k], lexical, qrels, k)
            values[f"bm25_overlap@{k}"] = bm25_overlap_per_query(by_k[k], lexical, k)
        out[system] = values
    return out


def fold_identity(a, base: RetrieverConfig, systems: list[str], fusion: FusionConfig) -> str:
    """What a fold's values depend on: a finished fold is reused only by a run with the same identity."""
    setting = {"cv": a.cv, "max_products": a.max_products, "max_queries": a.max_queries, "systems": sorted(systems),
               "judge": a.judge, "relevance_model": a.relevance_model, "fusion": fusion.label(),
               "retriever": dataclasses.asdict(dataclasses.replace(base, run=dataclasses.replace(base.run,
                                                                                                 output_dir="")))}
    return hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_fold(fold_dir: Path | None, fold: int, identity: str) -> dict | None:
    path = fold_dir / identity / f"fold{fold}.json" if fold_dir else None  # one folder per setting
    if path is None or not path.exists():
        return None
    doc = json.loads(path.read_text())
    return doc if doc.get("identity") == identity else None


def write_fold(fold_dir: Path | None, fold: int, identity: str, values: dict, seconds: dict) -> None:
    """One fold's per-query values, kept beside the page: the run can stop after any fold and go on later."""
    if fold_dir is None:
        return
    (fold_dir / identity).mkdir(parents=True, exist_ok=True)
    tmp = fold_dir / identity / f"fold{fold}.json.tmp"
    tmp.write_text(json.dumps({"identity": identity, "values": values, "seconds": seconds}, default=float) + "\n")
    tmp.replace(fold_dir / identity / f"fold{fold}.json")


def merge_values(values: dict, fold_values: dict) -> None:
    for system, metrics in fold_values.items():
        for metric, per_query in metrics.items():
            values.setdefault(system, {}).setdefault(metric, {}).update(per_query)


def run_folds(a, ds: Dataset, base: RetrieverConfig, systems: list[str], fusion: FusionConfig) -> dict:
    """Train and evaluate every fold of ``a.folds``; {"values": {system: {metric: {query: value}}}, "seconds"}."""
    out, sub = Path(a.out), catalogue_subset(ds, a.max_products)
    folds = query_folds(ds.queries["query_id"], a.cv, seed=0)
    t0 = time.perf_counter()
    bm25 = BM25Index(sub.products)
    zero_shot = Retriever(None, sub.products, batch_size=base.encode_batch_size, progress=False,
                          max_seq_length=base.max_seq_length) if "zero-shot" in systems else None
    print(f"[hybrid-cv] {len(sub.products)} products, {len(ds.queries)} queries, {a.cv} folds; BM25 index and "
          f"zero-shot encoding {time.perf_counter() - t0:.1f} s", flush=True)
    values, seconds = {}, {"catalogue": time.perf_counter() - t0}
    identity = fold_identity(a, base, systems, fusion)
    for fold in a.folds:
        done = read_fold(a.fold_dir, fold, identity)
        if done is not None:  # measured by an earlier run with this exact setting: its per-query values stand
            print(f"[hybrid-cv] fold {fold}: reusing {a.fold_dir}/{identity}/fold{fold}.json", flush=True)
            merge_values(values, done["values"])
            seconds[f"fold {fold}"] = done["seconds"]
            continue
        t = time.perf_counter()
        fds = fold_dataset(sub, folds, fold)
        queries = fds.queries.assign(split=fds.queries["split"].replace("valid", "train"))  # nothing is tuned per fold
        fds = dataclasses.replace(fds, queries=queries)
        data_dir = write_dataset(fds, out / f"fold{fold}" / "data")
        dirs, stage_seconds = train_fold(base, data_dir, out / f"fold{fold}", systems, a.judge, a.relevance_model)
        for stage, s in stage_seconds.items():
            rate = f" per rebuild ({len(sub.products) / s:.0f} products/s)" if "rebuild" in stage and s > 0 else ""
            print(f"[hybrid-cv] fold {fold} {stage}: {s:.1f} s{rate}", flush=True)
        t_eval = time.perf_counter()
        dense = {"zero-shot": zero_shot} if zero_shot is not None else {}
        dense.update({s: Retriever(d, sub.products, batch_size=base.encode_batch_size, progress=False,
                                   max_seq_length=base.max_seq_length) for s, d in dirs.items()})
        fold_vals = fold_values(dense, bm25, fds.split("test"), fusion)
        merge_values(values, fold_vals)
        stage_seconds["encode and evaluate"] = time.perf_counter() - t_eval
        stage_seconds["fold"] = time.perf_counter() - t
        write_fold(a.fold_dir, fold, identity, fold_vals, stage_seconds)
        print(f"[hybrid-cv] fold {fold} encode and evaluate: {stage_seconds['encode and evaluate']:.1f} s; "
              f"fold total {stage_seconds['fold']:.1f} s", flush=True)
        seconds[f"fold {fold}"] = stage_seconds
    for fold in sorted(set(range(a.cv)) - set(a.folds)):  # folds an earlier run finished: the page covers them too
        done = read_fold(a.fold_dir, fold, identity)
        if done is not None:
            merge_values(values, done["values"])
            seconds[f"fold {fold}"] = done["seconds"]
    measured = sorted(int(k.split()[1]) for k in seconds if k.startswith("fold "))
    return {"values": values, "seconds": seconds, "products": len(sub.products), "queries": len(ds.queries),
            "measured_folds": measured}


# ---------------------------------------------------------------- intervals and the page

def comparisons(systems: list[str], ks=KS) -> list[tuple[str, str, list[str]]]:
    """(system, reference, metrics) pairs whose paired differences the page reports."""
    quality = ["ndcg@10", *[f"hitrate@{k}" for k in ks]]
    dense = [s for s in DENSE if s in systems]
    out = [(f"hybrid({d})", "bm25", quality) for d in dense]  # what the hybrid adds to BM25 alone
    out += [(d, "bm25", quality) for d in dense]
    adds = ["ndcg@10", "hitrate@100", *[f"added_recall@{k}" for k in ks]]
    if "zero-shot" in dense:
        out += [(f"hybrid({d})", "hybrid(zero-shot)", adds) for d in dense if d != "zero-shot"]
    out += [("hybrid(rgrpo)", f"hybrid({ref})", adds) for ref in ("sft", "hardneg") if {ref, "rgrpo"} <= set(dense)]
    if {"rgrpo", "rgrpo-nox"} <= set(dense):  # exclusivity: does it raise what R-GRPO adds, lower the overlap?
        out += [("rgrpo", "rgrpo-nox", [*[f"added_recall@{k}" for k in ks], *[f"bm25_overlap@{k}" for k in ks]]),
                ("hybrid(rgrpo)", "hybrid(rgrpo-nox)", [f"added_recall@{k}" for k in ks])]
    return out


def summarize(values: dict, systems: list[str], n_boot: int, ks=KS) -> dict:
    """Intervals per (system, metric) and paired differences, over every tested query (NaN = undefined)."""
    queries = sorted({q for metrics in values.values() for per in metrics.values() for q in per})

    def array(system, metric):
        per = values[system][metric]
        return np.array([per.get(q, np.nan) for q in queries])

    def defined(*arrays):  # a metric no query defines (no Good item, nothing retrieved) has no interval
        return all((~np.isnan(x)).any() for x in arrays)
    intervals = {s: {m: query_bootstrap(array(s, m), n_boot=n_boot).as_dict() for m in values[s]
                     if defined(array(s, m))} for s in values}
    paired = []
    for system, ref, metrics in comparisons(systems, ks):
        for m in metrics:
            if not defined(array(system, m) - array(ref, m)):
                continue
            iv = paired_bootstrap(array(system, m), array(ref, m), n_boot=n_boot).as_dict()
            paired.append({"system": system, "reference": ref, "metric": m, **iv,
                           "verdict": verdict(iv, higher="higher", lower="lower")})
    return {"queries": len(queries), "intervals": intervals, "paired": paired}


def _cell(intervals: dict, metric: str) -> str:
    iv = intervals.get(metric)
    return "-" if iv is None else f"{iv['mean']:.3f} [{iv['lo']:.3f}, {iv['hi']:.3f}]"


def write_page(result: dict, command: str, results_dir: Path, started: float, ks=KS) -> Path:
    """docs/results/hybrid.md (and hybrid.json beside it)."""
    page = ResultsPage("hybrid", "Hybrid retrieval: what each dense route adds to BM25 (query cross-validation)",
                       command=command, started=started)
    s, iv = result["summary"], result["summary"]["intervals"]
    missing = sorted(set(range(result["cv"])) - set(result["measured_folds"]))
    if missing:
        page.text(f"**Partial: folds {missing} of {result['cv']} are not measured yet.** The same command with "
                  f"`--folds {','.join(map(str, missing))}` measures them; finished folds are kept in "
                  "docs/results/hybrid_folds/ and the page then covers every query.")
    page.text(f"{s['queries']} queries, each tested once (folds {result['measured_folds']} of {result['cv']}), over "
              f"{result['products']:,} products; R-GRPO judge: {result['judge']}; fusion: {result['fusion']}. "
              "Each cell: mean over queries [query-bootstrap 95% interval]. Added recall@K: the query's Good items "
              "in the system's top K that BM25's top K misses, over all its Good items; lost recall@K: the reverse "
              "(hitrate@K minus BM25's = added - lost).")
    order = [sys_ for sys_ in result["rows"] if sys_ in iv]
    quality = ["ndcg@10", *[f"hitrate@{k}" for k in ks]]
    page.table(["system", *quality], [[name, *[_cell(iv[name], m) for m in quality]] for name in order],
               caption="Ranking quality")
    adds = [f"{m}@{k}" for m in ("added_recall", "lost_recall", "bm25_overlap") for k in ks]
    page.table(["system", *adds], [[name, *[_cell(iv[name], m) for m in adds]] for name in order],
               caption="What each system adds to BM25's top K")
    page.table(["system", "reference", "metric", "difference [95% CI]", "verdict"],
               [[p["system"], p["reference"], p["metric"], format_difference(p), p["verdict"]] for p in s["paired"]],
               caption="Paired differences (same queries, resampled together)")
    rows = [["all", "BM25 index and zero-shot encoding", f"{result['seconds']['catalogue']:.1f}"]]
    for fold, stages in result["seconds"].items():
        if isinstance(stages, dict):
            rows += [[fold, stage, f"{sec:.1f}"] for stage, sec in stages.items()]
    page.table(["fold", "stage", "seconds"], rows, caption="Wall time per stage (an R-GRPO rebuild: its "
                                                           "re-encoding of the catalogue, index and queries)")
    path = page.write(results_dir)
    (results_dir / "hybrid.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    return path


# ---------------------------------------------------------------- the commands

def choose(a, ds: Dataset, base: RetrieverConfig, command: str, started: float) -> dict:
    """--choose-fusion: FUSION_GRID on the valid split with the zero-shot and an SFT dense route."""
    sub = catalogue_subset(ds, a.max_products)
    out = Path(a.out) / "choose_fusion"
    data_dir = write_dataset(sub, out / "data")
    sft_dir, _ = run_stage(stage_config(base, out / "ret_sft", stage="sft", data_dir=str(data_dir)))
    dense = {name: Retriever(d, sub.products, batch_size=base.encode_batch_size, progress=False,
                             max_seq_length=base.max_seq_length) for name, d in (("zero-shot", None), ("sft", sft_dir))}
    best, rows = choose_fusion(dense, sub, "valid", FUSION_GRID, BM25Index(sub.products))
    page = ResultsPage("hybrid_fusion", "Hybrid retrieval: the fusion default, chosen on the valid split",
                       command=command, started=started)
    page.text(f"{len(sub.split('valid').queries)} valid queries over {len(sub.products):,} products; dense routes: "
              "zero-shot MiniLM and SFT (trained on the train split); the first rows are each route alone. Chosen: "
              "the highest nDCG@10 averaged over the two, then hitrate@100, then grid order. "
              f"**Chosen: {best.label()}** (depths {best.depth_bm25}, {best.depth_dense}).")
    page.table(["setting", "dense", "nDCG@10", "hitrate@10", "hitrate@100"],
               [[r["setting"], r["dense"], r["ndcg@10"], r["hitrate@10"], r["hitrate@100"]] for r in rows])
    results = Path(a.results_dir or (Path(a.out) if a.quick else "docs/results"))
    print(f"[hybrid-cv] chosen fusion: {best.label()}; page {page.write(results)}")
    result = {"chosen": dataclasses.asdict(best), "rows": rows}
    (results / "hybrid_fusion.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared Chorus (searchrl data prepare chorus)")
    ap.add_argument("--cv", type=int, default=5, help="number of query folds (default 5)")
    ap.add_argument("--folds", default=None, help="folds to run, comma-separated (default: all)")
    ap.add_argument("--max-products", type=int, default=None,
                    help="catalogue: every judged product plus a seeded fill up to this many; 0 = all (default)")
    ap.add_argument("--max-queries", type=int, default=None, help="a seeded sample of this many queries (0 = all)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {', '.join(SYSTEMS)}")
    ap.add_argument("--judge", default="oracle", choices=JUDGES, help="R-GRPO's relevance judge (default oracle)")
    ap.add_argument("--relevance-model", default="", help="relevance model directory for --judge model")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a RetrieverConfig field")
    ap.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default 2000)")
    ap.add_argument("--out", default=None, help="run directory (default runs/hybrid_cv, runs/hybrid_cv_quick)")
    ap.add_argument("--results-dir", default=None, help="where hybrid.md/json go (default docs/results; "
                                                        "--quick: the run directory)")
    ap.add_argument("--quick", action="store_true", help=f"CI-sized: {QUICK}")
    ap.add_argument("--choose-fusion", action="store_true", help="score FUSION_GRID on the valid split instead")
    a = ap.parse_args(argv)
    quick = QUICK if a.quick else {"folds": None, "max_queries": 0, "max_products": 0, "n_boot": 2000, "set": []}
    a.max_products = quick["max_products"] if a.max_products is None else a.max_products
    a.max_queries = quick["max_queries"] if a.max_queries is None else a.max_queries
    a.n_boot = a.n_boot or quick["n_boot"]
    a.set = quick["set"] + a.set
    folds = a.folds or quick["folds"]
    a.folds = [int(f) for f in folds.split(",")] if folds else list(range(a.cv))
    a.out = a.out or ("runs/hybrid_cv_quick" if a.quick else "runs/hybrid_cv")
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    if unknown := sorted(set(a.systems) - set(SYSTEMS)):
        ap.error(f"--systems: unknown {unknown}; known: {', '.join(SYSTEMS)}")
    if any(not 0 <= f < a.cv for f in a.folds):
        ap.error(f"--folds must lie in 0..{a.cv - 1}")
    # each finished fold's per-query values (small JSON) live beside the page, so a later run finishes the rest
    a.fold_dir = None if a.quick and not a.results_dir else Path(a.results_dir or "docs/results") / "hybrid_folds"
    if a.judge == "model" and not a.relevance_model:
        ap.error("--judge model needs --relevance-model DIR")
    return a


def main(argv=None) -> dict:
    started = time.time()
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse(argv)
    command = "python -m experiments.hybrid_retrieval_cv " + shlex.join(argv)
    ds = query_subset(load_dataset(a.data), a.max_queries)
    base = base_config(a.set)
    if a.choose_fusion:
        return choose(a, ds, base, command, started)
    fusion = FusionConfig()
    run = run_folds(a, ds, base, a.systems, fusion)
    rows = ["bm25", *[s for s in DENSE if s in a.systems], *[f"hybrid({s})" for s in DENSE if s in a.systems]]
    result = {**run, "cv": a.cv, "folds": a.folds, "systems": a.systems, "rows": rows, "judge": a.judge,
              "fusion": fusion.label(), "retriever": {"max_steps": base.optim.max_steps,
                                                      "rebuild_every": base.rebuild_every},
              "summary": summarize(run["values"], a.systems, a.n_boot)}
    results = Path(a.results_dir or (Path(a.out) if a.quick else "docs/results"))
    path = write_page(result, command, results, started)
    print(f"[hybrid-cv] {result['summary']['queries']} queries; wall time {(time.time() - started) / 60:.1f} min; "
          f"page {path}", flush=True)
    return result


if __name__ == "__main__":
    main()
