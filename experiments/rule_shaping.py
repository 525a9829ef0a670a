"""Rule-aware reward shaping (TaoSR-AGRL): does it raise rule adherence and lower discriminative hallucination?

AGRL's claim is about the reasoning, not the grade: GRPO rewarded per CoT step that agrees with the business
rules, gated by rule adherence (``reward.kind=rule_aware``), writes completions whose grade its own step
verdicts allow more often than GRPO rewarded by the final grade alone (``reward.kind=grade``). This measures
it on held-out queries. Per seed, from one SFT model that writes the five-step CoT, each trained through the
pipeline's own stages (searchrl.pipeline: finished stages reused by fingerprint):

- ``sft``: the starting point (``--sft DIR``, or the pipeline's sft stage here, under OUT: the default config
  with the CoT on every example and the top two blocks training, ``cot_fraction=1 freeze_layers=4``; decoding
  runs under the completion grammar, so its completions parse, as every decode below does);
- ``grpo_outcome``: the grpo stage from it (grpo_chorus.yaml, ``start_model``), CoT rollouts
  (``rollout.max_new_tokens`` 64: a step line with multi-word types is ~11 WordPiece tokens), the grade reward
  with its format term; under OUT/seedS/grpo_outcome;
- ``grpo_shaping``: the same with ``reward.kind=rule_aware`` (format 0.1, steps 0.5, adherence 0.5, grade 1).

Every test pair is decoded greedily under the completion grammar and parsed (relevance/format/parser.py). Per
system: format-error rate (the completion lacks a grade or one of the five verdicts), rule adherence (among parsed
completions, the share whose grade the rule table allows for its own category/attribute verdicts),
hallucination (1 - adherence), step agreement with the rule engine and strict self-consistency (as
`eval relevance --decode` measures them), and the decoded grade's accuracy and macro-F1. Brackets are query-bootstrap 95% intervals over the test queries and
seeds; shaping - outcome is a paired bootstrap over the same queries.

    python -m experiments.rule_shaping --data runs/quickstart/data [--sft DIR] [--seeds 0,1] [--steps 40]
        [--out runs/rule_shaping] [--json PATH] [--md PATH] [--smoke]

Simplifies: one SFT model for every seed; greedy decoding only. Wall time: 17 min for the SFT model, then 17-23
min a seed for two 10-step GRPO runs and their decodes of 802 pairs (one thread, 2 cores; the claims command runs
``--seeds 0 --steps 10 --grpo-set rollout.max_refill_rounds=1``). Finished stages and decoded completions are
reused on a re-run. ``--smoke`` is the CI size (a tiny SFT, two GRPO steps, 24 test pairs;
tests/test_rule_shaping.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from experiments.common import run_chain, run_main, table, tables_markdown, trainer_config, write_report
from searchrl.data.schema import load_dataset, pair_products
from searchrl.metrics.measures import fast_scores
from searchrl.metrics.stats import (
    format_difference,
    format_interval,
    paired_bootstrap,
    paired_metric_bootstrap,
    query_bootstrap,
    verdict,
)
from searchrl.pipeline import PipelineConfig
from searchrl.pipeline.config import DataStage
from searchrl.relevance.format.parser import is_consistent, parse_completion
from searchrl.relevance.format.prompt import STEPS
from searchrl.relevance.scoring.reasoning import reasoning_per_pair
from searchrl.relevance.train.grpo import GRPOConfig
from searchrl.relevance.train.sft import SFTConfig

COMMAND = "python -m experiments.rule_shaping"
SYSTEMS = {"grpo_outcome": ["reward.kind=grade"], "grpo_shaping": ["reward.kind=rule_aware"]}
# per pair: format_error 1/0; the others NaN where the completion does not parse
RATES = ("format_error", "adherence", "step_agreement", "self_consistency")
CONTRASTS = (("grpo_shaping", "grpo_outcome"), ("grpo_shaping", "sft"), ("grpo_outcome", "sft"))


def train(a, out: Path) -> dict[tuple[str, int], Path]:
    """{(system, seed): model dir}; finished stages are reused."""
    common = ["run.progress=false", "eval.every=0"]
    data = DataStage(data_dir=str(a.data))
    if a.sft:
        sft = Path(a.sft)
        if not sft.exists():
            raise SystemExit(f"error: --sft {sft}: no such model directory")
    else:
        cfg = PipelineConfig(data=data, sft=trainer_config(SFTConfig, "sft_chorus", [
            "cot_fraction=1", "freeze_layers=4", *common, *a.sft_set]))
        sft = run_chain(cfg, out, ["sft"], COMMAND)["sft"]
    models = {}
    for seed in a.seeds:
        models[("sft", seed)] = sft
        for name, extra in SYSTEMS.items():
            grpo = trainer_config(GRPOConfig, "grpo_chorus", [
                f"run.seed={seed}", f"optim.max_steps={a.steps}", f"rollout.max_new_tokens={a.max_new_tokens}",
                *common, *extra, *a.grpo_set])
            cfg = PipelineConfig(data=data, grpo=grpo, start_model=str(sft))
            models[(name, seed)] = run_chain(cfg, out / f"seed{seed}" / name, ["grpo"], COMMAND)["grpo"]
    return models


def parsed_row(text: str, rule_verdicts: dict, order: str = "label_first") -> dict:
    """One completion as the table reads it: the written grade (none = L1), whether any of the five steps or
    the grade is missing or unreadable, and, when none is: whether the rule table allows the grade (AGRL's rule
    adherence), the share of its step verdicts equal to the rule engine's on this pair (``rule_verdicts``), and
    whether the grade its steps imply is the grade it wrote (self-consistency, reasoning.py's strict reading)."""
    p = parse_completion(text, order)
    ok = p.grade is not None and len(p.verdicts) == 5
    measured = reasoning_per_pair([p], [rule_verdicts], None, order)
    return {"completion": text, "grade": p.grade or 1, "format_error": float(not ok),
            "adherence": float(is_consistent(p.grade, p.verdicts)) if ok else None,
            "step_agreement": measured["agree"][0] / len(STEPS) if ok else None,
            "self_consistency": float(measured["consistent"][0]) if ok else None}


def decoded(model: Path, pairs, cache: Path, max_new_tokens: int) -> list[dict]:
    """Each test pair's greedy completion, parsed (parsed_row), cached as jsonl beside the run (a cache older than
    the model's files, or decoded under another ``prompt.slugs``, is decoded again)."""
    from searchrl.relevance.model.scorer_config import load_scorer_config
    slugs = load_scorer_config(model).prompt.slugs
    newest = max((f.stat().st_mtime for f in Path(model).rglob("*") if f.is_file()), default=0.0)
    fresh = cache.exists() and cache.stat().st_mtime >= newest  # decoded after the model was (re)trained
    rows = [json.loads(x) for x in cache.read_text().splitlines() if x.strip()] if fresh else []
    if rows and all("step_agreement" in r and r.get("slugs") == slugs for r in rows):  # else an older decode's
        if len(rows) != len(pairs):  # another --smoke / full run wrote this --out: its rows are other pairs
            raise SystemExit(f"error: {cache}: {len(rows)} cached completions for {len(pairs)} test pairs; "
                             "remove it or use another --out")
        return rows
    from searchrl.relevance.rules.engine import RuleEngine, pair_slugs
    from searchrl.relevance.rules.kb import completion_grammar
    from searchrl.relevance.scoring.evaluate import decode_completions
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    scorer = RelevanceScorer.load(model)
    products = pair_products(pairs)
    prompts = [scorer.prompt(q, p) for q, p in zip(pairs["text"], products)]
    texts = decode_completions(scorer.model, scorer.tokenizer, prompts, max_new_tokens, 16,
                               grammar=completion_grammar(scorer.tokenizer, scorer.config.prompt),
                               linked=pair_slugs(scorer.config.prompt, pairs["text"], products))
    engine = RuleEngine.from_yaml()
    rules = [engine.judge(q, p).verdicts for q, p in zip(pairs["text"], products)]
    rows = [{**parsed_row(t, r, scorer.config.prompt.order), "slugs": slugs} for t, r in zip(texts, rules)]
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
    rows = []
    for s in systems:
        row = {"system": s}
        for r in RATES:
            row[r] = defined(query_bootstrap, by_query[s][r], n_boot=a.n_boot)
        for metric in ("accuracy", "macro_f1"):
            iv = query_bootstrap(metric=pooled(s, metric), groups=qids, n_boot=a.n_boot)
            row[metric] = [iv.mean, iv.lo, iv.hi]
        rows.append(row)
    claims = []
    for better, worse in CONTRASTS:
        c = {"contrast": f"{better} - {worse}"}
        for r in RATES:
            c[r] = defined(paired_bootstrap, by_query[better][r], by_query[worse][r], n_boot=a.n_boot)
        d = paired_metric_bootstrap(pooled(better, "macro_f1"), pooled(worse, "macro_f1"), qids, n_boot=a.n_boot)
        c["macro_f1"] = [d.mean, d.lo, d.hi]
        c["verdict"] = verdict(c["adherence"], higher="higher", lower="lower")
        claims.append(c)
    return {"rows": rows, "claims": claims, "queries": len(queries), "pairs": len(gold), "seeds": a.seeds}


def tables(result: dict) -> list[dict]:
    def level(r, key):  # older reports lack the strict measures
        return format_interval(r[key]) if key in r else "-"

    def diff(c, key):
        return format_difference(c[key]) if key in c else "-"
    return [table(["system", "rule adherence [95% CI]", "hallucination", "step agreement [95% CI]",
                   "self-consistency [95% CI]", "format errors [95% CI]", "decoded accuracy",
                   "decoded macro-F1 [95% CI]"],
                  [[r["system"], format_interval(r["adherence"]), f"{1 - r['adherence'][0]:.3f}",
                    level(r, "step_agreement"), level(r, "self_consistency"), format_interval(r["format_error"]),
                    f"{r['accuracy'][0]:.3f}", format_interval(r["macro_f1"])] for r in result["rows"]]),
            table(["contrast", "rule adherence [95% CI]", "step agreement", "self-consistency", "format errors",
                   "decoded macro-F1", "adherence"],
                  [[c["contrast"], format_difference(c["adherence"]), diff(c, "step_agreement"),
                    diff(c, "self_consistency"), format_difference(c["format_error"]), format_difference(c["macro_f1"]),
                    c["verdict"]] for c in result["claims"]],
                  "Rule adherence: the rule table allows the written grade for the completion's own category and "
                  "attribute verdicts (AGRL's measure); step agreement: its five step verdicts against the rule "
                  "engine's on the pair; self-consistency: the grade its steps imply is the grade it wrote")]


def markdown(result: dict, wall_s: float) -> str:
    scope = f"{result['queries']} test queries, {result['pairs']} pairs, seeds {result['seeds']}"
    return tables_markdown(tables(result), [f"{scope}; wall time {wall_s / 60:.0f} min"])


def reasons(result: dict) -> list[str]:
    """Where adherence and step agreement went: each GRPO run against SFT, and why, by the measured verdicts."""
    claims = {c["contrast"]: c for c in result["claims"]}
    if not all("step_agreement" in claims.get(k, {}) for k in ("grpo_outcome - sft", "grpo_shaping - sft")):
        return []
    moved = (f"Against SFT, step agreement moves by {format_difference(claims['grpo_outcome - sft']['step_agreement'])}"
             f" under the outcome reward and {format_difference(claims['grpo_shaping - sft']['step_agreement'])} "
             f"under shaping; rule adherence by {format_difference(claims['grpo_outcome - sft']['adherence'])} and "
             f"{format_difference(claims['grpo_shaping - sft']['adherence'])}")
    if claims["grpo_shaping - grpo_outcome"]["verdict"] == "higher":
        return [moved + ". The outcome reward pays the grade alone: the policy moves the grade and the steps "
                "written after it stop implying it. The rule-aware reward also pays each step that agrees with the "
                "rules and gates on adherence, so the steps move with the grade."]
    return [moved + ". Neither reward holds the steps where SFT had them: the policy moves the top two blocks, "
            "which the grade and the steps share, towards the grade."]


def glance(result: dict) -> list[dict]:
    """The claims page's rows: shaping's adherence against the outcome reward and against SFT."""
    where = f"rule_shaping, seeds {result['seeds']}, {result['queries']} queries"
    claims = {c["contrast"]: c for c in result["claims"]}
    return [{"claim": f"shaping raises rule adherence ({key})", "where": where,
             "difference": f"adherence {format_difference(claims[key]['adherence'])}"
                           + (f"; step agreement {format_difference(claims[key]['step_agreement'])}"
                              if "step_agreement" in claims[key] else ""),
             "verdict": claims[key]["verdict"]} for key in ("grpo_shaping - grpo_outcome", "grpo_shaping - sft")]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset (e.g. runs/quickstart/data)")
    ap.add_argument("--sft", help="an SFT model that writes the CoT; default: trained here (module docstring)")
    ap.add_argument("--out", default="runs/rule_shaping")
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
    result["wall_s"] = time.time() - start
    return write_report(result, markdown(result, result["wall_s"]), a.json, a.md)


if __name__ == "__main__":
    run_main(main)
