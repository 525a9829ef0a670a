"""Rule-aware reward shaping (TaoSR-AGRL): does it raise rule adherence and lower discriminative hallucination?

AGRL's claim is about the reasoning, not the grade: GRPO rewarded per CoT step that agrees with the business
rules, gated by rule adherence (``reward.kind=rule_aware``), writes completions whose grade its own step
verdicts allow more often than GRPO rewarded by the final grade alone (``reward.kind=grade``). This measures
it on held-out queries. Per seed, from one SFT model that writes the five-step CoT:

- ``sft``: the starting point (``--sft DIR``, or trained here: the default config with the CoT on every
  example and the top two blocks training, ``cot_fraction=1 freeze_layers=4``; with all six frozen the
  default's decoded CoT loops on one step line and never parses, README);
- ``grpo_outcome``: `searchrl train grpo --config grpo_chorus.yaml`, CoT rollouts (``rollout.max_new_tokens``
  64: a step line with multi-word types is ~11 WordPiece tokens), the grade reward with its format term;
- ``grpo_shaping``: the same with ``reward.kind=rule_aware`` (format 0.1, steps 0.5, adherence 0.5, grade 1).

Every test pair is decoded greedily and parsed (relevance/parser.py). Per system: format-error rate (the
completion lacks a grade or one of the five verdicts), rule adherence (among parsed completions, the share
whose grade the rule table allows for its own category/attribute verdicts), hallucination (1 - adherence),
and the decoded grade's accuracy and macro-F1. Brackets are query-bootstrap 95% intervals over the test
queries and seeds; shaping - outcome is a paired bootstrap over the same queries.

    python scripts/shaping.py --data runs/quickstart/data [--sft DIR] [--seeds 0,1] [--steps 40]
        [--out runs/shaping] [--json PATH] [--md PATH] [--smoke]

Finished stages and decoded completions are reused on a re-run. ``--smoke`` is the CI size (a tiny SFT, two
GRPO steps, 24 test pairs, in this process; tests/test_shaping.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_room import CONFIGS, run_main, searchrl, write_report  # one way to run a stage and report, for both

from searchrl.data.schema import load_dataset, pair_products
from searchrl.metrics.measures import fast_scores
from searchrl.metrics.stats import paired_bootstrap, paired_metric_bootstrap, query_bootstrap
from searchrl.relevance.format.parser import is_consistent, parse_completion

SYSTEMS = {"grpo_outcome": ["reward.kind=grade"], "grpo_shaping": ["reward.kind=rule_aware"]}
RATES = ("format_error", "adherence")  # per pair: 1/0, adherence NaN where the completion does not parse


def sets(kv):
    return [x for s in kv for x in ("--set", s)]


def train(a, out: Path) -> dict[tuple[str, int], Path]:
    """{(system, seed): model dir}; finished stages are reused."""
    log, common = out / "stages.log", ["run.progress=false", "eval.every=0"]
    out.mkdir(parents=True, exist_ok=True)
    sft = Path(a.sft) if a.sft else out / "sft" / "final"
    if not sft.exists():
        if a.sft:
            raise SystemExit(f"error: --sft {sft}: no such model directory")
        searchrl("train", "sft", "--config", str(CONFIGS / "sft_chorus.yaml"), *sets(
            [f"data_dir={a.data}", f"run.output_dir={out / 'sft'}", "cot_fraction=1", "freeze_layers=4", *common,
             *a.sft_set]), log=log, in_process=a.smoke)
    models = {}
    for seed in a.seeds:
        models[("sft", seed)] = sft
        for name, extra in SYSTEMS.items():
            d = out / f"seed{seed}" / name
            if not (d / "final").exists():
                searchrl("train", "grpo", "--config", str(CONFIGS / "grpo_chorus.yaml"), *sets(
                    [f"model={sft}", f"data_dir={a.data}", f"run.output_dir={d}", f"run.seed={seed}",
                     f"optim.max_steps={a.steps}", f"rollout.max_new_tokens={a.max_new_tokens}", *common, *extra,
                     *a.grpo_set]), log=log, in_process=a.smoke)
            models[(name, seed)] = d / "final"
    return models


def parsed_row(text: str, order: str = "label_first") -> dict:
    """One completion as the table reads it: the written grade (none = L1), whether any of the five steps or
    the grade is missing or unreadable, and, when none is, whether the rule table allows the grade."""
    p = parse_completion(text, order)
    ok = p.grade is not None and len(p.verdicts) == 5
    return {"completion": text, "grade": p.grade or 1, "format_error": float(not ok),
            "adherence": float(is_consistent(p.grade, p.verdicts)) if ok else None}


def decoded(model: Path, pairs, cache: Path, max_new_tokens: int) -> list[dict]:
    """Each test pair's greedy completion, parsed (parsed_row), cached as jsonl beside the run."""
    if cache.exists():
        rows = [json.loads(x) for x in cache.read_text().splitlines() if x.strip()]
        if len(rows) != len(pairs):  # another --smoke / full run wrote this --out: its rows are other pairs
            raise SystemExit(f"error: {cache}: {len(rows)} cached completions for {len(pairs)} test pairs; "
                             "remove it or use another --out")
        return rows
    from searchrl.relevance.scoring.evaluate import decode_completions
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    scorer = RelevanceScorer.load(model)
    prompts = [scorer.prompt(q, p) for q, p in zip(pairs["text"], pair_products(pairs))]
    texts = decode_completions(scorer.model, scorer.tokenizer, prompts, max_new_tokens, 16)
    rows = [parsed_row(t, scorer.config.prompt.order) for t in texts]
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def per_query(values: np.ndarray, qids: np.ndarray, queries: list) -> np.ndarray:
    """[Q] mean of per-pair values (NaN entries left out) within each query; NaN where a query has none."""
    out = np.full(len(queries), np.nan)
    for i, q in enumerate(queries):
        v = values[qids == q]
        v = v[~np.isnan(v)]
        if len(v):
            out[i] = v.mean()
    return out


def defined(bootstrap, *args, **kw) -> list[float]:
    """[mean, lo, hi], or NaNs where no query has a value (nothing parsed: adherence is undefined)."""
    try:
        iv = bootstrap(*args, **kw)
    except ValueError:
        return [float("nan")] * 3
    return [iv.mean, iv.lo, iv.hi]


def measure(a, models, pairs, out: Path) -> dict:
    gold, qids = pairs["grade"].astype(int).to_numpy(), pairs["query_id"].astype(str).to_numpy()
    queries = sorted(set(qids.tolist()))
    systems = ["sft", *SYSTEMS]
    data = {s: {"grade": [], **{r: [] for r in RATES}} for s in systems}  # [S, N] per system
    for seed in a.seeds:
        for s in systems:
            cache = out / ("sft" if s == "sft" else f"seed{seed}") / f"{s}.test_completions.jsonl"
            cache.parent.mkdir(parents=True, exist_ok=True)
            rows = decoded(models[(s, seed)], pairs, cache, a.max_new_tokens)
            data[s]["grade"].append([r["grade"] for r in rows])
            for r in RATES:
                data[s][r].append([np.nan if x[r] is None else x[r] for x in rows])
    arrays = {s: {k: np.asarray(v, dtype=float) for k, v in d.items()} for s, d in data.items()}
    by_query = {s: {r: np.stack([per_query(x, qids, queries) for x in arrays[s][r]]) for r in RATES}
                for s in systems}  # [S, Q]

    def pooled(s, metric):
        grades = arrays[s]["grade"].astype(int)
        return lambda rows: float(np.mean([fast_scores(gold[rows], g[rows])[metric] for g in grades]))
    table = []
    for s in systems:
        row = {"system": s}
        for r in RATES:
            row[r] = defined(query_bootstrap, by_query[s][r], n_boot=a.n_boot)
        for metric in ("accuracy", "macro_f1"):
            iv = query_bootstrap(metric=pooled(s, metric), groups=qids, n_boot=a.n_boot)
            row[metric] = [iv.mean, iv.lo, iv.hi]
        table.append(row)
    claims = []
    for better, worse in (("grpo_shaping", "grpo_outcome"), ("grpo_shaping", "sft"), ("grpo_outcome", "sft")):
        c = {"contrast": f"{better} - {worse}"}
        for r in RATES:
            c[r] = defined(paired_bootstrap, by_query[better][r], by_query[worse][r], n_boot=a.n_boot)
        d = paired_metric_bootstrap(pooled(better, "macro_f1"), pooled(worse, "macro_f1"), qids, n_boot=a.n_boot)
        c["macro_f1"] = [d.mean, d.lo, d.hi]
        lo, hi = c["adherence"][1:]
        c["verdict"] = "higher" if lo > 0 else "lower" if hi < 0 else "no difference" if hi >= lo else "undefined"
        claims.append(c)
    return {"rows": table, "claims": claims, "queries": len(queries), "pairs": len(gold), "seeds": a.seeds}


def markdown(result: dict, wall_s: float) -> str:
    def iv(v):
        return "{:.3f} [{:.3f}, {:.3f}]".format(*v)

    def diff(v):
        return "{:+.3f} [{:+.3f}, {:+.3f}]".format(*v)
    lines = [("| system | rule adherence [95% CI] | hallucination | format errors [95% CI] | decoded accuracy | "
              "decoded macro-F1 [95% CI] |"), "|---|---|---|---|---|---|"]
    lines += [f"| {r['system']} | {iv(r['adherence'])} | {1 - r['adherence'][0]:.3f} | {iv(r['format_error'])} | "
              f"{r['accuracy'][0]:.3f} | {iv(r['macro_f1'])} |" for r in result["rows"]]
    lines += ["", "| contrast | rule adherence [95% CI] | format errors | decoded macro-F1 | adherence |",
              "|---|---|---|---|---|"]
    lines += [f"| {c['contrast']} | {diff(c['adherence'])} | {diff(c['format_error'])} | {diff(c['macro_f1'])} | "
              f"{c['verdict']} |" for c in result["claims"]]
    lines.append(f"\n{result['queries']} test queries, {result['pairs']} pairs, seeds {result['seeds']}; "
                 f"wall time {wall_s / 60:.0f} min")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset (e.g. runs/quickstart/data)")
    ap.add_argument("--sft", help="an SFT model that writes the CoT; default: trained here (module docstring)")
    ap.add_argument("--out", default="runs/shaping")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=40, help="GRPO rollout steps per run")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="extra SFT override")
    ap.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE", help="extra GRPO override")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="CI size: tiny SFT, 2 GRPO steps, 24 test pairs")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if a.smoke:
        a.sft_set = ["optim.epochs=1", "optim.max_steps=4", *a.sft_set]
        a.grpo_set = ["rollout.prompts_per_step=2", "rollout.group_size=4", *a.grpo_set]
        a.steps, a.max_new_tokens, a.n_boot = min(a.steps, 2), min(a.max_new_tokens, 24), 200
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start, out = time.time(), Path(a.out)
    pairs = load_dataset(a.data).split("test").pairs()
    if a.smoke:
        pairs = pairs.groupby("query_id", sort=False).head(3).head(24)  # 8 queries: intervals have rows to draw
    result = measure(a, train(a, out), pairs, out)
    wall = time.time() - start
    result["wall_s"] = wall
    return write_report(result, markdown(result, wall), a)


if __name__ == "__main__":
    run_main(main)
