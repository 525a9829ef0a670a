"""Retrieval-GRPO with judges of known quality: does R-GRPO's gain over SFT and hardneg grow with the judge?

Retrieval-GRPO's authors report that the relevance judge decides: a 4-layer BERT judge gave
about no gain, their relevance LLM a large one. This script trains, for each seed, the
retriever's SFT encoder, hardneg from it, and one R-GRPO run per judge (retrieval/judges.py:
random, bm25, model, rules, oracle), all from the same SFT encoder, and evaluates them on the
test queries over the same catalogue. Per judge it reports:

- the judge's quality: per-query AUC of its score for Good against the human test labels;
- nDCG@10, hitrate@10, BM25 overlap@10 and quality@10 of its R-GRPO encoder, averaged over seeds;
- the paired difference in nDCG@10 against SFT and against hardneg, with a 95% bootstrap
  interval over seeds and queries (eval/stats.paired_bootstrap), and a verdict;
- the claims: the curve's two ends (R-GRPO with the strongest judge minus with the weakest, nDCG@10) and
  exclusivity (R-GRPO with ``--exclusivity-judge`` minus the same run with ``reward.w_x=0``, BM25 overlap@10),
  each a paired interval with a verdict;
- goodrate@10 graded by the rule engine (independent of every judge but ``rules``/``oracle``'s
  fallback: marked there), and wall time.

    python scripts/directions.py --data DIR [--model RELEVANCE_MODEL] [--seeds 0,1,2] [--out runs/directions]
        [--judges random,bm25,model,rules,oracle] [--exclusivity-judge model] [--set KEY=VALUE ...]
        [--json PATH] [--md PATH]

The retriever's settings are the quickstart pipeline's ``retriever`` section (3,000-product
catalogue, 12 steps a stage) unless overridden, e.g. ``--set max_products=0`` for the whole
catalogue and ``--set optim.max_steps=60``. Finished stages are reused (same config), so a
re-run only evaluates, and an unfinished one resumes from its newest valid checkpoint.
Simplifies: the judges' quality is measured on the test split's judged pairs, the same pairs the
oracle knows (it is an upper reference by construction); on the whole catalogue most pairs an
R-GRPO run rewards are not judged, so the oracle's rewards are then mostly its fallback's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from searchrl.data.schema import load_dataset
from searchrl.metrics.measures import retrieval_metrics
from searchrl.metrics.stats import paired_bootstrap
from searchrl.pipeline import load_pipeline_config
from searchrl.relevance.rules.engine import RuleEngine
from searchrl.lexical.bm25 import BM25Index
from searchrl.retrieval.evaluate import Retriever, evaluate_retrieval
from searchrl.retrieval.judges import JUDGES, build_judge, judge_quality
from searchrl.retrieval.chain import catalogue_subset, run_stage, stage_config


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


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset directory (e.g. runs/quickstart/data)")
    ap.add_argument("--model", default="", help="relevance model directory for the model judge (skipped without)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--judges", default=",".join(JUDGES))
    ap.add_argument("--out", default="runs/directions")
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
    grader, out = RulesGrader(), Path(a.out)
    ndcg: dict[str, list[dict]] = {}
    overlap: dict[str, list[dict]] = {}
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        run = dataclasses.replace(base.run, seed=seed)
        sft = stage_config(dataclasses.replace(base, run=run), out / f"seed{seed}" / "sft", stage="sft")
        sft_dir, t_sft = run_stage(sft)
        systems = {"sft": (sft_dir, t_sft)}
        hn_dir, t_hn = run_stage(stage_config(sft, out / f"seed{seed}" / "hardneg", stage="hardneg",
                                              encoder=str(sft_dir)))
        systems["hardneg"] = (hn_dir, t_sft + t_hn)
        for j in judges:
            reward = dataclasses.replace(base.reward, judge=j, relevance_model=a.model if j == "model" else "")
            cfg = stage_config(sft, out / f"seed{seed}" / f"rgrpo_{j}", stage="rgrpo", encoder=str(sft_dir),
                               reward=reward)
            d, t = run_stage(cfg)
            systems[f"rgrpo:{j}"] = (d, t_sft + t)
        if no_x:
            reward = dataclasses.replace(base.reward, judge=no_x, w_x=0.0,
                                         relevance_model=a.model if no_x == "model" else "")
            d, t = run_stage(stage_config(sft, out / f"seed{seed}" / f"rgrpo_{no_x}_no_exclusivity", stage="rgrpo",
                                          encoder=str(sft_dir), reward=reward))
            systems[f"rgrpo:{no_x}:no_exclusivity"] = (d, t_sft + t)
        for name, (d, seconds) in systems.items():
            retriever = Retriever(d, sub.products, batch_size=base.encode_batch_size, progress=False,
                                  max_seq_length=base.max_seq_length)
            n, o = per_query(retriever, sub, a.split, bm25)
            ndcg.setdefault(name, []).append(n)
            overlap.setdefault(name, []).append(o)
            rows.setdefault(name, []).append({**evaluate_retrieval(retriever, sub, a.split, (10,), grader, bm25=bm25,
                                                                   system=name), "seconds": seconds})
    queries = sorted(set.intersection(*[set(d) for runs in ndcg.values() for d in runs]))
    found = sorted(set.intersection(*[set(d) for runs in overlap.values() for d in runs]))

    def values(name, of=ndcg, keys=queries):  # [S, Q]
        return np.array([[d[q] for q in keys] for d in of[name]])

    table = []
    for name, runs in rows.items():
        mean = {k: float(np.mean([r[k] for r in runs])) for k in
                ("ndcg@10", "hitrate@10", "bm25_overlap@10", "quality@10", "goodrate@10", "seconds")}
        entry = {"system": name, **mean}
        if name.startswith("rgrpo:"):
            j = name.split(":")[1]
            entry["judge_auc"] = quality[j]["auc_per_query"]
            for ref in ("sft", "hardneg"):
                iv = paired_bootstrap(values(name), values(ref), n_boot=2000, seed=0)
                entry[f"vs_{ref}"] = {"mean": iv.mean, "lo": iv.lo, "hi": iv.hi}
        table.append(entry)
    claims = []
    ranked = sorted(judges, key=lambda j: quality[j]["auc_per_query"])
    if len(ranked) >= 2:  # the curve's two ends: does the strongest judge's R-GRPO beat the weakest's?
        iv = paired_bootstrap(values(f"rgrpo:{ranked[-1]}"), values(f"rgrpo:{ranked[0]}"), n_boot=2000, seed=0)
        claims.append({"claim": f"gain grows with judge quality (nDCG@10, rgrpo:{ranked[-1]} - rgrpo:{ranked[0]})",
                       "mean": iv.mean, "lo": iv.lo, "hi": iv.hi, "verdict": verdict(iv)})
    if no_x:
        iv = paired_bootstrap(values(f"rgrpo:{no_x}", overlap, found),
                              values(f"rgrpo:{no_x}:no_exclusivity", overlap, found), n_boot=2000, seed=0)
        claims.append({"claim": f"exclusivity lowers BM25 overlap@10 (rgrpo:{no_x} - same with w_x=0)",
                       "mean": iv.mean, "lo": iv.lo, "hi": iv.hi,
                       "verdict": "holds" if iv.hi < 0 else "reversed" if iv.lo > 0 else "no difference"})
    result = {"claims": claims, "seeds": seeds, "queries": len(queries), "catalogue": len(sub.products), "judge_quality": quality,
              "rows": table, "retriever": {"max_steps": base.optim.max_steps, "max_products": base.max_products}}
    md = markdown(result)
    print(md)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    if a.md:
        Path(a.md).write_text(md + "\n")
    return result


def verdict(iv) -> str:
    """better / worse / no difference for a paired interval (a dict with lo/hi, or an eval.stats.Interval)."""
    iv = iv if isinstance(iv, dict) else {"lo": iv.lo, "hi": iv.hi}
    if iv["lo"] > 0:
        return "better"
    if iv["hi"] < 0:
        return "worse"
    return "no difference"


def markdown(result: dict) -> str:
    head = ("| system | judge AUC | nDCG@10 | vs SFT [95% CI] | vs hardneg [95% CI] | hitrate@10 | goodrate@10 (rules) "
            "| BM25 overlap@10 | quality@10 | seconds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(result["rows"], key=lambda r: (r["system"].startswith("rgrpo"), r.get("judge_auc", 0))):
        def cell(ref):
            iv = r.get(f"vs_{ref}")
            return f"{iv['mean']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}] {verdict(iv)}" if iv else "-"
        auc = f"{r['judge_auc']:.3f}" if "judge_auc" in r else "-"
        lines.append(f"| {r['system']} | {auc} | {r['ndcg@10']:.3f} | {cell('sft')} | {cell('hardneg')} | "
                     f"{r['hitrate@10']:.3f} | {r['goodrate@10']:.3f} | {r['bm25_overlap@10']:.3f} | "
                     f"{r['quality@10']:.3f} | {r['seconds']:.0f} |")
    if result.get("claims"):
        lines += ["", "| claim | difference [95% CI] | verdict |", "|---|---|---|"]
        lines += [f"| {c['claim']} | {c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] | {c['verdict']} |"
                  for c in result["claims"]]
    lines.append(f"\n{len(result['seeds'])} seeds x {result['queries']} test queries with a Good item; catalogue "
                 f"{result['catalogue']} products; {result['retriever']['max_steps']} steps a stage.")
    return "\n".join(lines)


if __name__ == "__main__":
    from searchrl.errors import UserError
    try:
        main()
    except UserError as e:  # a bad --set key, judge or data directory: one line, as the CLI prints it
        raise SystemExit(f"error: {e}") from None
