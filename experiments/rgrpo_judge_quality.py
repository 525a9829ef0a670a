"""Retrieval-GRPO's judge-quality curve: does R-GRPO's gain over SFT and hardneg grow with the judge's quality?

Retrieval-GRPO's authors report that the relevance judge decides: a 4-layer BERT judge gave about no gain,
their relevance LLM a large one. This trains, for each seed, the retriever's SFT encoder, hardneg from it,
and one R-GRPO run per judge (retrieval/judges.py: random, bm25, model, rules, oracle), all from the same SFT
encoder (retrieval/chain.py's stages), and evaluates them on the test queries over the same catalogue. Per
judge it reports:

- the judge's quality: per-query AUC of its score for Good against the human test labels;
- nDCG@10, hitrate@10, BM25 overlap@10 and quality@10 of its R-GRPO encoder, averaged over seeds;
- the paired difference in nDCG@10 against SFT and against hardneg, with a 95% bootstrap interval over
  seeds and queries (metrics/stats.paired_bootstrap), and a verdict;
- the claims: the curve's two ends (R-GRPO with the strongest judge minus with the weakest, nDCG@10) and
  exclusivity (R-GRPO with ``--exclusivity-judge`` minus the same run with ``reward.w_x=0``, BM25 overlap@10),
  each a paired interval with a verdict;
- goodrate@10 graded by the rule engine (independent of every judge but ``rules``/``oracle``'s fallback),
  and wall time.

    python -m experiments.rgrpo_judge_quality --data DIR [--model RELEVANCE_MODEL] [--seeds 0,1,2]
        [--out runs/rgrpo_judge_quality] [--judges random,bm25,model,rules,oracle] [--exclusivity-judge model]
        [--set KEY=VALUE ...] [--json PATH] [--md PATH]

The retriever's settings are the quickstart pipeline's ``retriever`` section (3,000-product catalogue, 12
steps a stage) unless overridden, e.g. ``--set max_products=0`` for the whole catalogue and ``--set
optim.max_steps=40`` (what the claims command runs). Finished stages are reused (same config), so a re-run only
evaluates, and an unfinished one resumes from its newest valid checkpoint.

Simplifies: the judges' quality is measured on the test split's judged pairs, the same pairs the oracle knows
(an upper reference by construction); on the whole catalogue most pairs an R-GRPO run rewards are not judged, so
the oracle's rewards are then mostly its fallback's. Wall time: 9-23 min an R-GRPO run (a judge and seed) on one
thread, on 3,000 products or the whole catalogue alike; hardneg 3-6 min; SFT 1 min; the claims command's
setting (seed 0, five judges and the exclusivity-off run, 40 steps, 3,000 products) 32 min beside another run.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from experiments.common import run_main, table, tables_markdown, write_report
from searchrl.data.schema import load_dataset
from searchrl.lexical.bm25 import BM25Index
from searchrl.metrics.measures import retrieval_metrics
from searchrl.metrics.stats import format_difference, paired_bootstrap, verdict
from searchrl.pipeline import load_pipeline_config
from searchrl.relevance.rules.engine import RuleEngine
from searchrl.retrieval.chain import catalogue_subset, run_stage, stage_config
from searchrl.retrieval.evaluate import Retriever, evaluate_retrieval
from searchrl.retrieval.judges import JUDGES, build_judge, judge_quality

MEANS = ("ndcg@10", "hitrate@10", "bm25_overlap@10", "quality@10", "goodrate@10", "seconds")


class RulesGrader:
    """A scorer-shaped wrapper of the rule engine, so evaluate_retrieval's goodrate is graded by the rules."""

    def __init__(self):
        self.engine = RuleEngine.from_yaml()

    def score_many(self, requests):
        return [[{"tier": self.engine.judge(q, p).grade} for p in products] for q, products in requests]


def per_query(retriever, ds, split: str, bm25: BM25Index, k: int = 10) -> tuple[dict, dict]:
    """({query: nDCG@k} over queries with a judged Good item, {query: BM25 overlap@k} over queries that retrieve
    anything): the per-query values the paired intervals resample."""
    sub = ds.split(split)
    qids, texts = sub.queries["query_id"].astype(str).tolist(), sub.queries["text"].tolist()
    hits, lexical = retriever.search(texts, k), bm25.search(texts, k)
    ndcg, overlap = {}, {}
    for q, h, lx in zip(qids, hits, lexical):
        judged = sub.judgments[sub.judgments["query_id"].astype(str) == q]
        qrels = {q: dict(zip(judged["product_id"].astype(str), judged["grade"].astype(int)))}
        if (judged["grade"] >= 3).any():
            ndcg[q] = retrieval_metrics({q: [p for p, _ in h]}, qrels, (k,))[f"ndcg@{k}"]
        if h:
            overlap[q] = len({p for p, _ in h} & {p for p, _ in lx}) / len(h)
    return ndcg, overlap


def train_seed(base, seed: int, judges: list[str], no_x: str | None, model: str, out: Path) -> dict:
    """{system: (final dir, seconds with SFT's)} of one seed: SFT, hardneg and an R-GRPO run per judge."""
    run = dataclasses.replace(base.run, seed=seed)
    sft = stage_config(dataclasses.replace(base, run=run), out / f"seed{seed}" / "sft", stage="sft")
    sft_dir, t_sft = run_stage(sft)
    systems = {"sft": (sft_dir, t_sft)}
    hn_dir, t_hn = run_stage(stage_config(sft, out / f"seed{seed}" / "hardneg", stage="hardneg", encoder=str(sft_dir)))
    systems["hardneg"] = (hn_dir, t_sft + t_hn)
    runs = [(f"rgrpo:{j}", f"rgrpo_{j}", j, {}) for j in judges]
    if no_x:
        runs.append((f"rgrpo:{no_x}:no_exclusivity", f"rgrpo_{no_x}_no_exclusivity", no_x, {"w_x": 0.0}))
    for name, folder, judge, extra in runs:
        reward = dataclasses.replace(base.reward, judge=judge, relevance_model=model if judge == "model" else "",
                                     **extra)
        d, t = run_stage(stage_config(sft, out / f"seed{seed}" / folder, stage="rgrpo", encoder=str(sft_dir),
                                      reward=reward))
        systems[name] = (d, t_sft + t)
    return systems


def summarize(rows, ndcg, overlap, quality, judges, no_x) -> tuple[list[dict], list[dict], int]:
    """(table rows with the paired differences against SFT and hardneg, the claims, the queries compared)."""
    queries = sorted(set.intersection(*[set(d) for runs in ndcg.values() for d in runs]))
    found = sorted(set.intersection(*[set(d) for runs in overlap.values() for d in runs]))

    def values(name, of=ndcg, keys=queries):  # [S, Q]
        return np.array([[d[q] for q in keys] for d in of[name]])

    def paired(a, b):
        iv = paired_bootstrap(a, b, n_boot=2000, seed=0)
        return {"mean": iv.mean, "lo": iv.lo, "hi": iv.hi}
    out = []
    for name, runs in rows.items():
        entry = {"system": name, **{k: float(np.mean([r[k] for r in runs])) for k in MEANS}}
        if name.startswith("rgrpo:"):
            entry["judge_auc"] = quality[name.split(":")[1]]["auc_per_query"]
            entry.update({f"vs_{ref}": paired(values(name), values(ref)) for ref in ("sft", "hardneg")})
        out.append(entry)
    claims = []
    ranked = sorted(judges, key=lambda j: quality[j]["auc_per_query"])
    if len(ranked) >= 2:  # the curve's two ends: does the strongest judge's R-GRPO beat the weakest's?
        iv = paired(values(f"rgrpo:{ranked[-1]}"), values(f"rgrpo:{ranked[0]}"))
        claims.append({"claim": f"gain grows with judge quality (nDCG@10, rgrpo:{ranked[-1]} - rgrpo:{ranked[0]})",
                       **iv, "verdict": verdict(iv)})
    if no_x:
        iv = paired(values(f"rgrpo:{no_x}", overlap, found), values(f"rgrpo:{no_x}:no_exclusivity", overlap, found))
        claims.append({"claim": f"exclusivity lowers BM25 overlap@10 (rgrpo:{no_x} - same with w_x=0)", **iv,
                       "verdict": verdict(iv, higher="reversed", lower="holds")})
    return out, claims, len(queries)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset directory (e.g. runs/quickstart/data)")
    ap.add_argument("--model", default="", help="relevance model directory for the model judge (skipped without)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--judges", default=",".join(JUDGES))
    ap.add_argument("--out", default="runs/rgrpo_judge_quality")
    ap.add_argument("--split", default="test")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a retriever config field")
    ap.add_argument("--exclusivity-judge", default="model",
                    help="also train R-GRPO with this judge and reward.w_x=0 (exclusivity off): does the "
                         "exclusivity term lower BM25 overlap? (default model, else rules; none = skip)")
    ap.add_argument("--json", help="write the table and intervals as JSON here")
    ap.add_argument("--md", help="write the Markdown table here")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    judges = [j for j in a.judges.split(",") if j != "model" or a.model]
    unknown = sorted(set(judges) - set(JUDGES))
    if unknown:
        ap.error(f"--judges: unknown {unknown}; known: {', '.join(JUDGES)}")
    base = load_pipeline_config("quickstart", [f"retriever.{kv}" for kv in a.set]).retriever
    # resume: a killed run continues each unfinished stage from its newest valid checkpoint
    base = dataclasses.replace(base, data_dir=str(a.data), run=dataclasses.replace(base.run, progress=False,
                                                                                   resume=True))
    ds = load_dataset(a.data)
    sub = catalogue_subset(ds, base.max_products, base.run.seed)
    bm25 = BM25Index(sub.products)
    scorer = None
    if a.model:
        from searchrl.relevance.scoring.scorer import RelevanceScorer
        scorer = RelevanceScorer.load(a.model)
    quality = {j: judge_quality(build_judge(j, ds, scorer, bm25=bm25), ds, a.split) for j in judges}
    no_x = a.exclusivity_judge if a.exclusivity_judge in judges else "rules" if a.exclusivity_judge != "none" \
        and "rules" in judges else None
    grader, ndcg, overlap, rows = RulesGrader(), {}, {}, {}
    for seed in seeds:
        for name, (d, seconds) in train_seed(base, seed, judges, no_x, a.model, Path(a.out)).items():
            retriever = Retriever(d, sub.products, batch_size=base.encode_batch_size, progress=False,
                                  max_seq_length=base.max_seq_length)
            n, o = per_query(retriever, sub, a.split, bm25)
            ndcg.setdefault(name, []).append(n)
            overlap.setdefault(name, []).append(o)
            rows.setdefault(name, []).append({**evaluate_retrieval(retriever, sub, a.split, (10,), grader, bm25=bm25,
                                                                   system=name), "seconds": seconds})
    table_rows, claims, n_queries = summarize(rows, ndcg, overlap, quality, judges, no_x)
    result = {"claims": claims, "seeds": seeds, "queries": n_queries, "catalogue": len(sub.products),
              "judge_quality": quality, "rows": table_rows,
              "retriever": {"max_steps": base.optim.max_steps, "max_products": base.max_products}}
    return write_report(result, markdown(result), a.json, a.md)


def tables(result: dict) -> list[dict]:
    def cell(r, ref):
        iv = r.get(f"vs_{ref}")
        return f"{format_difference(iv)} {verdict(iv)}" if iv else "-"
    ordered = sorted(result["rows"], key=lambda r: (r["system"].startswith("rgrpo"), r.get("judge_auc", 0)))
    out = [table(["system", "judge AUC", "nDCG@10", "vs SFT [95% CI]", "vs hardneg [95% CI]", "hitrate@10",
                  "goodrate@10 (rules)", "BM25 overlap@10", "quality@10", "seconds"],
                 [[r["system"], f"{r['judge_auc']:.3f}" if "judge_auc" in r else "-", f"{r['ndcg@10']:.3f}",
                   cell(r, "sft"), cell(r, "hardneg"), f"{r['hitrate@10']:.3f}", f"{r['goodrate@10']:.3f}",
                   f"{r['bm25_overlap@10']:.3f}", f"{r['quality@10']:.3f}", f"{r['seconds']:.0f}"] for r in ordered])]
    if result.get("claims"):
        out.append(table(["claim", "difference [95% CI]", "verdict"],
                         [[c["claim"], format_difference(c), c["verdict"]] for c in result["claims"]]))
    return out


def scope(result: dict) -> str:
    return (f"{len(result['seeds'])} seeds x {result['queries']} test queries with a Good item; catalogue "
            f"{result['catalogue']} products; {result['retriever']['max_steps']} steps a stage.")


def markdown(result: dict) -> str:
    return tables_markdown(tables(result), [scope(result)])


def glance(result: dict) -> list[dict]:
    """The claims page's rows: the curve's ends and exclusivity."""
    where = f"rgrpo_judge_quality, {result['catalogue']} products, seeds {result['seeds']}"
    return [{"claim": c["claim"], "difference": format_difference(c), "where": where, "verdict": c["verdict"]}
            for c in result["claims"]]


if __name__ == "__main__":
    run_main(main)
