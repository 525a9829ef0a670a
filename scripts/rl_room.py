"""Relevance RL with room to improve: TaoSR1's and TaoSR-AGRL's claims, measured on held-out queries.

TaoSR1's and AGRL's claims are about what RL adds on top of SFT. An SFT model trained on every label has
left RL nothing to add (on Chorus every RL stage moved macro-F1 by +-0.013). Here, on each cross-validation
fold (relevance/crossval.py: the same folds as `searchrl eval relevance --cv 5`), the fold's train queries
are halved (crossval.sft_rl_split): the default relevance model is SFT-trained on one half, and the RL
stages take their prompts, with the human grades as verifiable rewards, from the other half. Per fold and
seed it trains, each with the project's own CLI (one process per stage, finished stages reused):

- ``sft``: `searchrl train sft --config sft_chorus.yaml` on the SFT half, with guided replay's hint in 10% of
  the prompts (``--hint-fraction``; SFTConfig.hint_fraction) so that the policy can read a hint;
- ``dpo``: pass@N pairs sampled on the RL half (`searchrl sample`; where all N are wrong the chosen side is
  the gold grade token), then `searchrl train dpo` (at most 60 steps, ``--dpo-steps``);
- ``grpo``: `searchrl train grpo` from dpo, dynamic sampling and class balance on (grpo_chorus.yaml);
- ``grpo_no_dynamic_sampling``, ``grpo_no_class_balance``: one option off each;
- ``grpo_replay``: + adaptive guided replay (AGRL): groups that are nearly all wrong get hinted rollouts;
- ``sft_all`` (optional, ``--cv-dir``): the default SFT on the whole fold train split, taken from a finished
  `eval relevance --cv 5` run of the same config: what SFT reaches with every label.

Every system is scored on the fold's test queries (argmax grade and P(Good) from the first completion
position, as served), and on held-out rule-graded queries (``--rule-queries``, default 100): queries written
from the catalogue by relevance/synthetic.py, 8 candidates each, graded by the rule engine. No system trains on
them (the default config adds no synthetic pairs), and the same set is scored on every fold; a (fold, query) is
one bootstrap unit there, so with several folds those intervals are somewhat narrow (one query, several models).
The tables give macro-F1, Good-F1, accuracy and per-query AUC with query-bootstrap 95% intervals (over
queries and seeds), paired contrasts (dpo - sft, grpo - dpo, ...) with a verdict, and training stability
(variance of the train reward over steps; a non-finite gradient stops a run), and for guided replay: accuracy
on the *stuck* RL prompts (SFT's N samples all wrong) per system, replay's paired gain there, and
guided-rollout accuracy (under the hint) against unguided.

Simplifies, and says so: the rollouts are grade-only (``rollout.max_new_tokens=1``, no format term). With
label-first order the grade token is the first completion token and the reward depends on it alone; the
default model's decoded CoT does not parse yet (README), so decoding it would cost 50x the time and carry
no reward signal. Rule-aware shaping grades CoT steps, so it is measured apart, from a model trained to write
the CoT: scripts/shaping.py.

    python scripts/rl_room.py --data DIR [--folds 0,1,2,3,4] [--seeds 0] [--out runs/rl_room]
        [--cv-dir runs/relevance_cv/default] [--grpo-steps 40] [--json PATH] [--md PATH] [--smoke]

``--smoke`` is the CI size (40 queries, tiny steps, every stage in this process; tests/test_rl_room.py). About
25 min per fold and seed on one thread at the default sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from searchrl.data.schema import load_dataset, write_dataset
from searchrl.metrics.measures import fast_scores
from searchrl.metrics.stats import paired_bootstrap, paired_metric_bootstrap
from searchrl.eval.crossval import fold_dataset, per_query_auc_matrix, query_folds, sft_rl_split, summarize
from searchrl.relevance.format.prompt import grade_token

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "searchrl" / "configs"
GRPO_VARIANTS = {  # name: extra --set overrides on top of grpo_chorus.yaml
    "grpo": [],
    "grpo_no_dynamic_sampling": ["rollout.dynamic_sampling=false"],
    "grpo_no_class_balance": ["rollout.class_balance=false"],
    "grpo_replay": ["replay.enabled=true"],
}
CONTRASTS = [  # (claim, better, worse): the paired difference better - worse, its verdict
    ("DPO > SFT", "dpo", "sft"), ("GRPO > DPO", "grpo", "dpo"), ("GRPO > SFT", "grpo", "sft"),
    ("dynamic sampling helps", "grpo", "grpo_no_dynamic_sampling"),
    ("class balance helps", "grpo", "grpo_no_class_balance"),
    ("guided replay helps", "grpo_replay", "grpo"),
    ("SFT on all labels > SFT on half", "sft_all", "sft"), ("GRPO on the other half ~ SFT on all", "grpo", "sft_all"),
]


def searchrl(*args: str, log: Path, in_process: bool = False) -> None:
    """One CLI stage in its own process (memory is returned when it ends), or in this one (``--smoke``: its
    stages are tiny, and a process's start-up would be most of their time); its output appended to log."""
    cmd = [str(Path(sys.executable).with_name("searchrl")), *args]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        if in_process:
            from searchrl.cli import main as cli
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                failed = cli(list(args))
        else:
            failed = subprocess.run(cmd, check=False, stdout=f, stderr=subprocess.STDOUT).returncode
    if failed:
        raise SystemExit(f"error: stage failed: {' '.join(args[:2])} (see {log})")


def run_fold(ds, folds, fold: int, seed: int, out: Path, a) -> dict[str, Path]:
    """Train every system of one fold and seed (finished ones reused); {system: model dir}."""
    d = out / f"fold{fold}" / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    log = d / "stages.log"
    fds = fold_dataset(ds, folds, fold)
    sft_ds, rl_ds = sft_rl_split(fds, a.sft_fraction, seed=seed)
    for name, part in (("sft_data", sft_ds), ("rl_data", rl_ds)):
        if not (d / name / "dataset.json").exists():
            write_dataset(part, d / name)
    common = [f"run.seed={seed}", "run.progress=false", "eval.every=0"]

    def sets(kv):
        return [x for s in kv for x in ("--set", s)]

    def stage(*args):
        searchrl(*args, log=log, in_process=a.smoke)

    models = {"sft": d / "sft" / "final", "dpo": d / "dpo" / "final"}
    if not models["sft"].exists():
        stage("train", "sft", "--config", str(CONFIGS / "sft_chorus.yaml"), *sets(
            [f"data_dir={d / 'sft_data'}", f"run.output_dir={d / 'sft'}", f"hint_fraction={a.hint_fraction}",
             *common, *a.sft_set]))
    if not (d / "pairs.jsonl").exists():
        stage("sample", "--model", str(models["sft"]), "--data", str(d / "rl_data"), "--n", str(a.n),
              "--max-new-tokens", "1", "--max-prompts", str(a.max_prompts), "--prompts-per-batch", "64",
              "--seed", str(seed), "--out", str(d / "pairs.jsonl"), "--json", str(d / "pass_at_n.json"))
    if not (d / "pairs_grade_only.jsonl").exists():  # all-wrong prompts: the teacher's grade token, not its CoT,
        # is the chosen side, as long as the sampled grade it is preferred to
        rows = [json.loads(x) for x in (d / "pairs.jsonl").read_text().splitlines() if x.strip()]
        rows = [r | {"chosen": grade_token(r["grade"])} if r["source"] == "teacher" else r for r in rows]
        (d / "pairs_grade_only.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if not models["dpo"].exists():
        stage("train", "dpo", "--config", str(CONFIGS / "dpo_chorus.yaml"), *sets(
            [f"model={models['sft']}", f"pairs={d / 'pairs_grade_only.jsonl'}", f"data_dir={d / 'rl_data'}",
             f"run.output_dir={d / 'dpo'}", f"optim.max_steps={a.dpo_steps}", *common, *a.dpo_set]))
    for name, extra in GRPO_VARIANTS.items():
        models[name] = d / name / "final"
        if not models[name].exists():
            stage("train", "grpo", "--config", str(CONFIGS / "grpo_chorus.yaml"), *sets(
                [f"model={models['dpo']}", f"data_dir={d / 'rl_data'}", f"run.output_dir={d / name}",
                 "rollout.max_new_tokens=1", "reward.grade.format_weight=0", f"optim.max_steps={a.grpo_steps}",
                 *common, *extra, *a.grpo_set]))
    if a.cv_dir:
        models["sft_all"] = Path(a.cv_dir) / f"fold{fold}" / f"seed{seed}" / "sft" / "final"
        if not models["sft_all"].exists():
            raise SystemExit(f"error: {models['sft_all']}: no such model (run scripts/relevance_cv.sh first)")
    return models


def test_predictions(model: Path, fds, cache: Path) -> np.ndarray:
    """[N, 4] grade probabilities of a dataset's test pairs: the fold's, or the rule-graded queries' (cached)."""
    if cache.exists():
        return np.load(cache)
    from searchrl.relevance.scoring.evaluate import split_probs
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    probs = split_probs(RelevanceScorer.load(model), fds, "test")[0]
    np.save(cache, probs)
    return probs


def rule_graded_queries(ds, n: int, out: Path):
    """The held-out rule-graded evaluation set (cached in out/rule_queries): n catalogue-written queries with 8
    candidates each, graded by the rule engine; None for n = 0. Written once from the whole dataset with a fixed
    seed, so every fold, seed and system is scored on the same queries. The writer skips every Chorus query's
    text and the products judged for them (exclude_splits covers all three), so no candidate is a human-judged
    pair."""
    if n <= 0:
        return None
    d = out / "rule_queries"
    if (d / "dataset.json").exists():
        rq = load_dataset(d)
        if rq.card.get("requested") == n:  # the writer may find fewer than n: key the cache by the request
            return rq
    from searchrl.relevance.rules.engine import RuleEngine
    from searchrl.relevance.rules.synthetic import synthetic_dataset
    rq = synthetic_dataset(ds, RuleEngine.from_yaml(), n, seed=1000, exclude_splits=("train", "valid", "test"))
    rq.card["requested"] = n
    write_dataset(rq, d)
    return rq


def stability(run_dir: Path) -> dict:
    """Variance of the logged train reward over steps (GRPO runs; a non-finite gradient stops a run,
    training.optimizer_step, so a finished run had none) and the accuracy of guided rollouts (replay)."""
    log = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()] if log.exists() else []
    rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
    return {"reward_var": float(np.var(rewards)) if rewards else float("nan"),
            "train_acc": float(np.mean([r["accuracy"] for r in rows if "reward_mean" in r] or [np.nan])),
            "guided_acc": float(np.mean([r["guided_accuracy"] for r in rows if "guided_accuracy" in r] or [np.nan]))}


def stuck_predictions(model: Path, run: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query ids, gold, predicted grade) on the *stuck* RL prompts: those where all N of the SFT model's pass@N
    samples were wrong (their DPO pair's chosen side is the teacher's, source "teacher"). Replay's claim is
    that it un-sticks these."""
    import pandas as pd
    pairs = [json.loads(x) for x in (run / "pairs.jsonl").read_text().splitlines() if x.strip()]
    stuck = {(str(p["query_id"]), str(p["product_id"])) for p in pairs if p["source"] == "teacher"}
    ds = load_dataset(run / "rl_data")
    j = ds.judgments
    keep = pd.Series([(str(q), str(p)) in stuck for q, p in zip(j["query_id"], j["product_id"])], index=j.index)
    sub = dataclasses.replace(ds, judgments=j[keep].reset_index(drop=True))
    if not len(sub.split("train").judgments):
        return np.array([]), np.array([]), np.array([])
    gold = sub.split("train").pairs()
    if cache.exists():
        pred = np.load(cache)
    else:
        from searchrl.relevance.scoring.evaluate import split_probs
        from searchrl.relevance.scoring.scorer import RelevanceScorer
        pred = split_probs(RelevanceScorer.load(model), sub, "train")[0].argmax(1) + 1
        np.save(cache, pred)
    return gold["query_id"].astype(str).to_numpy(), gold["grade"].astype(int).to_numpy(), pred


def collect(ds, folds, a, out: Path, rq=None) -> dict:
    """The crossval.summarize result layout over every fold run: {"query_id", "grade", "systems": {...}}, and
    the same layout for the rule-graded queries rq (a Dataset, or None) in result["rules"]."""
    result = {"query_id": [], "grade": [], "fold": [], "k": 5, "seeds": a.seeds, "systems": {}, "stability": {},
              "stuck": {}}
    rules = {"query_id": [], "grade": [], "fold": [], "seeds": a.seeds, "systems": {}}  # the same layout
    for fold in a.folds:
        fds = fold_dataset(ds, folds, fold)
        test = fds.split("test").pairs()
        result["query_id"] += test["query_id"].astype(str).tolist()
        result["grade"] += test["grade"].astype(int).tolist()
        result["fold"] += [fold] * len(test)
        per_seed, per_seed_models = {}, {}
        for seed in a.seeds:
            models = run_fold(ds, folds, fold, seed, out, a)
            for name, model in models.items():
                per_seed_models.setdefault(name, []).append(model)
                probs = test_predictions(model, fds, out / f"fold{fold}" / f"seed{seed}" / f"{name}.test_probs.npy")
                per_seed.setdefault(name, []).append(probs)
                result["stability"].setdefault(name, []).append(stability(model.parent))
                if name != "sft_all":  # the stuck prompts are this seed's RL share (sft_all trained on them)
                    run = out / f"fold{fold}" / f"seed{seed}"
                    q, g, p = stuck_predictions(model, run, run / f"{name}.stuck_pred.npy")
                    slot = result["stuck"].setdefault(name, {"query_id": [], "right": []})
                    slot["query_id"] += [f"{fold}/{seed}/{x}" for x in q]
                    slot["right"] += (g == p).astype(int).tolist()
        add_fold(result, per_seed, a.seeds)
        if rq is not None:  # a query is its fold's copy: the bootstrap resamples (fold, query) units
            rule_pairs = rq.split("test").pairs()
            rules["query_id"] += [f"{fold}/{q}" for q in rule_pairs["query_id"].astype(str)]
            rules["grade"] += rule_pairs["grade"].astype(int).tolist()
            rules["fold"] += [fold] * len(rule_pairs)
            add_fold(rules, {name: [test_predictions(m, rq, out / f"fold{fold}" / f"seed{seed}" /
                                                     f"{name}.rule_probs.npy")
                                    for seed, m in zip(a.seeds, ms)]
                             for name, ms in per_seed_models.items()}, a.seeds)
    result["rules"] = rules if rq is not None else None
    return result


def add_fold(result: dict, per_seed: dict[str, list[np.ndarray]], seeds: list[int]) -> None:
    """Append one fold's [N, 4] grade probabilities per system and seed to result["systems"] (pred, P(Good))."""
    for name, probs in per_seed.items():
        slot = result["systems"].setdefault(name, {"pred": [[] for _ in seeds], "score": [[] for _ in seeds]})
        for s, p in enumerate(probs):
            slot["pred"][s] += (p.argmax(1) + 1).tolist()
            slot["score"][s] += p[:, 2:].sum(1).tolist()


def contrasts(result: dict, n_boot: int = 2000) -> list[dict]:
    """Each claim's paired difference (better - worse) in macro-F1, Good-F1 and per-query AUC, with a verdict."""
    gold, qids = np.asarray(result["grade"]), np.asarray(result["query_id"])
    queries = sorted(set(qids.tolist()))
    systems, rows = result["systems"], []

    def pooled(preds, metric):
        return lambda r: float(np.mean([fast_scores(gold[r], p[r])[metric] for p in preds]))

    def auc_by_query(scores):  # [Q]: the seeds' per-query AUC averaged (NaN for a query with one grade class)
        m = per_query_auc_matrix(scores, gold, qids, queries)  # [S, Q]
        defined = ~np.isnan(m)
        return np.where(defined.any(0), np.where(defined, m, 0).sum(0) / np.maximum(defined.sum(0), 1), np.nan)
    for claim, better, worse in CONTRASTS:
        if better not in systems or worse not in systems:
            continue
        b, w = (np.asarray(systems[x]["pred"]) for x in (better, worse))
        row = {"claim": claim, "better": better, "worse": worse}
        for metric in ("macro_f1", "good_f1"):
            d = paired_metric_bootstrap(pooled(b, metric), pooled(w, metric), qids, n_boot=n_boot)
            row[metric] = [d.mean, d.lo, d.hi]
        d = paired_bootstrap(auc_by_query(np.asarray(systems[better]["score"])),
                             auc_by_query(np.asarray(systems[worse]["score"])), n_boot=n_boot)
        row["auc"] = [d.mean, d.lo, d.hi]
        lo, hi = row["macro_f1"][1:]
        row["verdict"] = ("holds" if lo > 0 else "reversed" if hi < 0 else "no difference") + " (macro-F1)"
        rows.append(row)
    return rows


def stuck_rows(result: dict, n_boot: int = 2000) -> list[dict]:
    """Accuracy on the stuck RL prompts per system (query-bootstrap interval), and replay's paired gain there."""
    from searchrl.metrics.stats import query_bootstrap
    stuck, rows = result["stuck"], []
    for name, s in stuck.items():
        right, groups = np.asarray(s["right"], dtype=float), np.asarray(s["query_id"])
        if not len(right):
            continue
        iv = query_bootstrap(metric=lambda r, x=right: float(x[r].mean()), groups=groups, n_boot=n_boot)
        rows.append({"system": name, "n": len(right), "accuracy": [iv.mean, iv.lo, iv.hi]})
    if {"grpo", "grpo_replay"} <= set(stuck) and stuck["grpo"]["right"]:
        a, b = (np.asarray(stuck[x]["right"], dtype=float) for x in ("grpo_replay", "grpo"))
        d = paired_metric_bootstrap(lambda r: float(a[r].mean()), lambda r: float(b[r].mean()),
                                    np.asarray(stuck["grpo"]["query_id"]), n_boot=n_boot)
        rows.append({"system": "grpo_replay - grpo", "n": len(a), "accuracy": [d.mean, d.lo, d.hi],
                     "verdict": "holds" if d.lo > 0 else "reversed" if d.hi < 0 else "no difference"})
    return rows


def _diff(v) -> str:
    return "{:+.3f} [{:+.3f}, {:+.3f}]".format(*v)


def metric_tables(rows: list[dict], claims: list[dict], stab: dict) -> str:
    """The systems' table (metrics with intervals; train-reward variance where logged) and the claims' table."""
    def iv(r, m):
        return f"{r[m]:.3f} [{r['x_ci'][m][0]:.3f}, {r['x_ci'][m][1]:.3f}]" if m in r.get("x_ci", {}) else "-"
    lines = [("| system | macro-F1 [95% CI] | Good-F1 [95% CI] | accuracy | per-query AUC [95% CI] | "
              "train reward var |"), "|---|---|---|---|---|---|"]
    for r in rows:
        logged = [x["reward_var"] for x in stab.get(r["system"], []) if not np.isnan(x["reward_var"])]
        var = float(np.mean(logged)) if logged else float("nan")  # no train reward: SFT, DPO, or under 2 steps
        lines.append(f"| {r['system']} | {iv(r, 'macro_f1')} | {iv(r, 'good_f1')} | {r['accuracy']:.3f} | "
                     f"{iv(r, 'x_good_auc_per_query')} | {'-' if np.isnan(var) else f'{var:.4f}'} |")
    lines += ["", "| claim | macro-F1 difference [95% CI] | Good-F1 difference | per-query AUC difference | verdict |",
              "|---|---|---|---|---|"]
    lines += [f"| {c['claim']} ({c['better']} - {c['worse']}) | {_diff(c['macro_f1'])} | {_diff(c['good_f1'])} | "
              f"{_diff(c['auc'])} | {c['verdict']} |" for c in claims]
    return "\n".join(lines)


def markdown(rows: list[dict], claims: list[dict], result: dict, wall_s: float) -> str:
    def iv3(v):
        return "{:.3f} [{:.3f}, {:.3f}]".format(*v)
    stab = result["stability"]
    lines = [metric_tables(rows, claims, stab)]
    lines += ["", "| on the stuck RL prompts (SFT's N samples all wrong) | prompts | accuracy [95% CI] |",
              "|---|---|---|"]
    lines += [f"| {r['system']} | {r['n']} | {_diff(r['accuracy']) if ' - ' in r['system'] else iv3(r['accuracy'])}"
              f"{' (' + r['verdict'] + ')' if 'verdict' in r else ''} |" for r in stuck_rows(result)]
    replay = stab.get("grpo_replay", [])
    if replay:
        lines.append(f"\nguided replay: guided-rollout accuracy {np.nanmean([x['guided_acc'] for x in replay]):.3f} "
                     f"(under the hint) vs unguided {np.nanmean([x['train_acc'] for x in replay]):.3f}")
    lines.append(f"\n{len(set(result['fold']))} fold(s), {len(set(result['query_id']))} test queries, "
                 f"{len(result['grade'])} pairs, seeds {result['seeds']}; wall time {wall_s / 60:.0f} min")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset (e.g. runs/quickstart/data)")
    ap.add_argument("--out", default="runs/rl_room")
    ap.add_argument("--folds", default="0,1,2,3,4", help="comma-separated folds of the 5")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--sft-fraction", type=float, default=0.5, help="share of a fold's train queries for SFT")
    ap.add_argument("--n", type=int, default=4, help="pass@N samples per prompt for the DPO pairs")
    ap.add_argument("--max-prompts", type=int, default=0, help="pass@N prompts (0 = every RL pair)")
    ap.add_argument("--grpo-steps", type=int, default=40)
    ap.add_argument("--dpo-steps", type=int, default=60)
    ap.add_argument("--hint-fraction", type=float, default=0.1,
                    help="share of SFT prompts with guided replay's hint, so the policy can read one (0 = none)")
    ap.add_argument("--rule-queries", type=int, default=100,
                    help="held-out rule-graded queries (catalogue-written, 8 candidates each) scored too (0 = none)")
    ap.add_argument("--cv-dir", help="a finished `eval relevance --cv 5` run of sft_chorus.yaml: adds sft_all")
    ap.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="extra SFT override")
    ap.add_argument("--dpo-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--smoke", action="store_true", help="CI size: tiny SFT, DPO and GRPO runs")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args(argv)
    a.folds = [int(f) for f in a.folds.split(",") if f.strip()]
    a.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    if any(not 0 <= f < 5 for f in a.folds):
        ap.error(f"--folds must be in 0..4, got {a.folds}")
    if a.smoke:
        a.sft_set = ["optim.epochs=1", "optim.max_steps=4", *a.sft_set]
        a.dpo_steps = 2
        a.grpo_set = ["rollout.prompts_per_step=2", "rollout.group_size=4", *a.grpo_set]
        a.grpo_steps, a.max_prompts = min(a.grpo_steps, 2), a.max_prompts or 16
        a.rule_queries = min(a.rule_queries, 12)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.time()
    out = Path(a.out)
    ds = load_dataset(a.data)
    rq = rule_graded_queries(ds, a.rule_queries, out)  # from every query, so the smoke subset changes nothing
    if a.smoke:  # 40 queries: folds of 8
        keep = set(sorted(ds.queries["query_id"].astype(str))[:40])
        ds = dataclasses.replace(ds, queries=ds.queries[ds.queries["query_id"].astype(str).isin(keep)],
                                 judgments=ds.judgments[ds.judgments["query_id"].astype(str).isin(keep)])
    folds = query_folds(ds.queries["query_id"], 5, seed=0)  # crossval's folds: sft_all is the same fold's model
    result = collect(ds, folds, a, out, rq)
    rows = summarize(result, reference="sft")
    claims = contrasts(result)
    rules = result["rules"]
    rule_rows, rule_claims = (summarize(rules, reference="sft"), contrasts(rules)) if rules else ([], [])
    wall = time.time() - start
    table = markdown(rows, claims, result, wall)
    if rules:
        table += ("\n\nOn held-out rule-graded queries (the rule engine's grades; "
                  f"{len(set(q.split('/', 1)[1] for q in rules['query_id']))} catalogue-written queries, "
                  f"{len(rules['grade']) // len(a.folds)} pairs, scored on each fold):\n\n" +
                  metric_tables(rule_rows, rule_claims, {}))
    report = {"rows": rows, "claims": claims, "stability": result["stability"], "stuck": stuck_rows(result),
              "rule_graded": {"rows": rule_rows, "claims": rule_claims}, "wall_s": wall}
    return write_report(report, table, a)


def write_report(report: dict, table: str, a) -> dict:
    """Print the markdown table; write it to --md and the report to --json when given (both claims scripts)."""
    print(table)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, default=float))
    if a.md:
        Path(a.md).write_text(table + "\n")
    return report


def run_main(main) -> None:
    from searchrl.errors import UserError
    try:
        main()
    except UserError as e:  # a bad --sft-fraction, data directory or config override: one line, as the CLI prints
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    run_main(main)
