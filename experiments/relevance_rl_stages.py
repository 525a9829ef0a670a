"""What relevance RL adds when SFT has left it room: TaoSR1's and TaoSR-AGRL's claims on held-out queries.

TaoSR1's and AGRL's claims are about what RL adds on top of SFT. An SFT model trained on every label has
left RL nothing to add (on Chorus every RL stage moved macro-F1 by +-0.013). Here, on each cross-validation
fold (eval/crossval.py: the same folds as `searchrl eval relevance --cv 5`), the fold's train queries
are halved (crossval.sft_rl_split): the default relevance model is SFT-trained on one half, and the RL
stages take their prompts, with the human grades as verifiable rewards, from the other half. Per fold and
seed it trains, through the pipeline's own stages (searchrl.pipeline: finished stages reused by fingerprint):

- ``sft``: the sft stage with sft_chorus.yaml on the SFT half (``FOLD/seedS/sft_share``), with guided replay's
  hint in 10% of the prompts (``--hint-fraction``; SFTConfig.hint_fraction) so that the policy can read a hint;
- ``dpo``: the sample stage (pass@N on the RL half; where all N are wrong the chosen side is the gold grade
  token: ``sample.teacher_chosen=grade``) and the dpo stage (dpo_chorus.yaml, at most 60 steps, ``--dpo-steps``),
  started from that SFT model (``start_model``; ``FOLD/seedS/rl_share``);
- ``grpo``: the grpo stage from dpo, dynamic sampling and class balance on (grpo_chorus.yaml);
- ``grpo_no_dynamic_sampling``, ``grpo_no_class_balance``: one option off each, from the same DPO model;
- ``grpo_replay``: + adaptive guided replay (AGRL): groups that are nearly all wrong get hinted rollouts;
- ``sft_all`` (optional, ``--cv-dir``): the default SFT on the whole fold train split, taken from a finished
  `eval relevance --cv 5` run of the same config (experiments/default_model_cv.py): SFT with every label.

Every system is scored on the fold's test queries (argmax grade and P(Good) from the first completion
position, as served), and on held-out rule-graded queries (``--rule-queries``, default 100): queries written
from the catalogue by relevance/rules/synthetic.py, 8 candidates each, graded by the rule engine. No system
trains on them, and the same set is scored on every fold; a (fold, query) is one bootstrap unit there, so
with several folds those intervals are somewhat narrow (one query, several models). The tables give
macro-F1, Good-F1, accuracy and per-query AUC with query-bootstrap 95% intervals (over queries and seeds),
paired contrasts (dpo - sft, grpo - dpo, ...) with a verdict, training stability (variance of the train
reward over steps; a non-finite gradient stops a run), and for guided replay: accuracy on the *stuck* RL
prompts (SFT's N samples all wrong) per system, replay's paired gain there, and guided-rollout accuracy
(under the hint) against unguided.

Simplifies: the rollouts are grade-only (``rollout.max_new_tokens=1``, no format term). With label-first order
the grade token is the first completion token and the reward depends on it alone; decoding the whole CoT
would cost about 50x the time for a reward that reads the same token. Rule-aware shaping
grades CoT steps, so it is measured apart, from a model trained to write the CoT: experiments/rule_shaping.py.

    python -m experiments.relevance_rl_stages --data DIR [--folds 0,1,2,3,4] [--seeds 0]
        [--out runs/relevance_rl_stages] [--cv-dir runs/default_model_cv/default] [--grpo-steps 40]
        [--json PATH] [--md PATH] [--smoke]

Wall time: 37-66 min a fold and seed on one thread at the defaults (each fold and seed trains in a process of
its own); a last call with every fold combines finished folds from their caches in about a minute.
``--smoke`` is the CI size (40 queries, tiny steps, in this process; tests/test_relevance_rl_stages.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

from experiments.common import in_child, run_chain, run_main, trainer_config, write_report
from experiments.rl_stage_tables import contrasts, markdown, stuck_rows
from searchrl.data.schema import load_dataset, write_dataset
from searchrl.eval.crossval import fold_dataset, query_folds, sft_rl_split, summarize
from searchrl.pipeline import PipelineConfig
from searchrl.pipeline.config import DataStage, SampleStage
from searchrl.relevance.format.parser import parse_completion
from searchrl.relevance.train.dpo import DPOConfig
from searchrl.relevance.train.grpo import GRPOConfig
from searchrl.relevance.train.sample import read_preference_pairs
from searchrl.relevance.train.sft import SFTConfig

COMMAND = "python -m experiments.relevance_rl_stages"
GRPO_VARIANTS = {  # name: overrides on top of grpo_chorus.yaml, each a GRPO run from the same DPO model
    "grpo": [],
    "grpo_no_dynamic_sampling": ["rollout.dynamic_sampling=false"],
    "grpo_no_class_balance": ["rollout.class_balance=false"],
    "grpo_replay": ["replay.enabled=true"],
}


def load_data(a):
    """The dataset (``--smoke``: its first 40 queries, folds of 8) and crossval's folds of it."""
    ds = load_dataset(a.data)
    if a.smoke:
        keep = set(sorted(ds.queries["query_id"].astype(str))[:40])
        ds = dataclasses.replace(ds, queries=ds.queries[ds.queries["query_id"].astype(str).isin(keep)],
                                 judgments=ds.judgments[ds.judgments["query_id"].astype(str).isin(keep)])
    return ds, query_folds(ds.queries["query_id"], 5, seed=0)  # crossval's folds: sft_all is the same fold's


def fold_dir(out: Path, fold: int, seed: int) -> Path:
    return out / f"fold{fold}" / f"seed{seed}"


def fold_models(d: Path) -> dict[str, Path]:
    """{system: final/} of one fold and seed, where each stage of the chain writes it."""
    models = {"sft": d / "sft_share" / "sft" / "final", "dpo": d / "rl_share" / "dpo" / "final",
              "grpo": d / "rl_share" / "grpo" / "final"}
    models.update({name: d / name / "grpo" / "final" for name in GRPO_VARIANTS if name != "grpo"})
    return models


def train_fold(a, fold: int, seed: int) -> None:
    """Every system of one fold and seed, through the pipeline's stages (finished ones reused)."""
    ds, folds = load_data(a)
    d = fold_dir(Path(a.out), fold, seed)
    sft_ds, rl_ds = sft_rl_split(fold_dataset(ds, folds, fold), a.sft_fraction, seed=seed)
    for name, part in (("sft_data", sft_ds), ("rl_data", rl_ds)):
        if not (d / name / "dataset.json").exists():
            write_dataset(part, d / name)
    common = [f"run.seed={seed}", "run.progress=false", "eval.every=0"]
    sft = trainer_config(SFTConfig, "sft_chorus", [f"hint_fraction={a.hint_fraction}", *common, *a.sft_set])
    models = fold_models(d)
    run_chain(PipelineConfig(data=DataStage(data_dir=str(d / "sft_data")), sft=sft), d / "sft_share", ["sft"],
              COMMAND)

    def grpo(extra):
        return trainer_config(GRPOConfig, "grpo_chorus", [
            "rollout.max_new_tokens=1", "reward.grade.format_weight=0", f"optim.max_steps={a.grpo_steps}",
            *common, *extra, *a.grpo_set])
    rl = PipelineConfig(
        data=DataStage(data_dir=str(d / "rl_data")), sft=sft, start_model=str(models["sft"]),
        sample=SampleStage(n=a.n, max_prompts=a.max_prompts, max_new_tokens=1, prompts_per_batch=64, seed=seed,
                           teacher_chosen="grade"),
        dpo=trainer_config(DPOConfig, "dpo_chorus", [f"optim.max_steps={a.dpo_steps}", *common, *a.dpo_set]),
        grpo=grpo(GRPO_VARIANTS["grpo"]))
    trained = run_chain(rl, d / "rl_share", ["sample", "dpo", "grpo"], COMMAND)
    start = trained.get("dpo", models["sft"])  # no preference pair: GRPO starts from SFT, as in the pipeline
    for name, extra in GRPO_VARIANTS.items():
        if name != "grpo":
            run_chain(dataclasses.replace(rl, grpo=grpo(extra), start_model=str(start)), d / name, ["grpo"],
                      COMMAND)


def systems_of(a, fold: int, seed: int) -> dict[str, Path]:
    """The trained systems of a fold and seed (+ sft_all from ``--cv-dir``)."""
    models = {k: v for k, v in fold_models(fold_dir(Path(a.out), fold, seed)).items()
              if (v / "relevance_config.json").exists()}
    if a.cv_dir:
        models["sft_all"] = Path(a.cv_dir) / f"fold{fold}" / f"seed{seed}" / "sft" / "final"
        if not models["sft_all"].exists():
            raise SystemExit(f"error: {models['sft_all']}: no such model (run experiments.default_model_cv first)")
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
            "guided_acc": float(np.mean([r["guided_accuracy"] for r in rows if "guided_accuracy" in r] or [np.nan])),
            "guided_groups_acc": float(np.mean([r["guided_groups_accuracy"] for r in rows
                                                if "guided_groups_accuracy" in r] or [np.nan]))}


def stuck_predictions(model: Path, d: Path, cache: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query ids, gold, predicted grade) on the *stuck* RL prompts: those where all N of the SFT model's pass@N
    samples were wrong (their DPO pair's chosen side is the teacher's, source "teacher"). Replay's claim is
    that it un-sticks these."""
    import pandas as pd
    pairs = [json.loads(x) for x in (d / "rl_share" / "sample" / "pairs.jsonl").read_text().splitlines() if x.strip()]
    stuck = {(str(p["query_id"]), str(p["product_id"])) for p in pairs if p["source"] == "teacher"}
    ds = load_dataset(d / "rl_data")
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


def add_fold(result: dict, per_seed: dict[str, list[np.ndarray]], seeds: list[int]) -> None:
    """Append one fold's [N, 4] grade probabilities per system and seed to result["systems"] (pred, P(Good))."""
    for name, probs in per_seed.items():
        slot = result["systems"].setdefault(name, {"pred": [[] for _ in seeds], "score": [[] for _ in seeds]})
        for s, p in enumerate(probs):
            slot["pred"][s] += (p.argmax(1) + 1).tolist()
            slot["score"][s] += p[:, 2:].sum(1).tolist()


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
            d = fold_dir(out, fold, seed)
            for name, model in systems_of(a, fold, seed).items():
                per_seed_models.setdefault(name, []).append(model)
                per_seed.setdefault(name, []).append(test_predictions(model, fds, d / f"{name}.test_probs.npy"))
                result["stability"].setdefault(name, []).append(stability(model.parent))
                if name != "sft_all":  # the stuck prompts are this seed's RL share (sft_all trained on them)
                    q, g, p = stuck_predictions(model, d, d / f"{name}.stuck_pred.npy")
                    slot = result["stuck"].setdefault(name, {"query_id": [], "right": []})
                    slot["query_id"] += [f"{fold}/{seed}/{x}" for x in q]
                    slot["right"] += (g == p).astype(int).tolist()
        add_fold(result, per_seed, a.seeds)
        if rq is not None:  # a query is its fold's copy: the bootstrap resamples (fold, query) units
            rule_pairs = rq.split("test").pairs()
            rules["query_id"] += [f"{fold}/{q}" for q in rule_pairs["query_id"].astype(str)]
            rules["grade"] += rule_pairs["grade"].astype(int).tolist()
            rules["fold"] += [fold] * len(rule_pairs)
            add_fold(rules, {name: [test_predictions(m, rq, fold_dir(out, fold, seed) / f"{name}.rule_probs.npy")
                                    for seed, m in zip(a.seeds, ms)]
                             for name, ms in per_seed_models.items()}, a.seeds)
    result["rules"] = rules if rq is not None else None
    return result


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset (e.g. runs/quickstart/data)")
    ap.add_argument("--out", default="runs/relevance_rl_stages")
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
    ap.add_argument("--smoke", action="store_true", help="CI size: tiny SFT, DPO and GRPO runs, in this process")
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
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start, out = time.time(), Path(a.out)
    rq = rule_graded_queries(load_dataset(a.data), a.rule_queries, out)  # from every query: smoke changes nothing
    for fold in a.folds:
        for seed in a.seeds:
            if a.smoke:
                train_fold(a, fold, seed)
            else:  # a process of its own: the memory of its six models is returned when it ends
                in_child(train_fold, a, fold, seed)
    ds, folds = load_data(a)
    result = collect(ds, folds, a, out, rq)
    rules = result["rules"]
    report = {"rows": summarize(result, reference="sft"), "claims": contrasts(result),
              "stability": result["stability"], "stuck": stuck_rows(result),
              "rule_graded": {"rows": summarize(rules, reference="sft") if rules else [],
                              "claims": contrasts(rules) if rules else []},
              "scope": {"folds": a.folds, "seeds": a.seeds, "queries": len(set(result["query_id"])),
                        "pairs": len(result["grade"]),
                        "rule_queries": len({q.split("/", 1)[1] for q in rules["query_id"]}) if rules else 0,
                        "rule_pairs": len(rules["grade"]) // len(a.folds) if rules else 0},
              "dpo_pairs": dpo_pair_directions(out, a.folds, a.seeds), "wall_s": time.time() - start}
    return write_report(report, markdown(report), a.json, a.md)


def dpo_pair_directions(out: Path, folds: list[int], seeds: list[int]) -> dict:
    """How the DPO pairs of every fold and seed lean: {"pairs", "toward_not_good": chosen L1/L2 over a rejected
    L3/L4, "toward_good": the reverse} (the rest keep the side of Good): what DPO on grade tokens moves."""
    counts = {"pairs": 0, "toward_not_good": 0, "toward_good": 0}
    for fold in folds:
        for seed in seeds:
            path = fold_dir(out, fold, seed) / "rl_share" / "sample" / "pairs.jsonl"
            for row in read_preference_pairs(path) if path.exists() else []:
                chosen, rejected = (parse_completion(row[k]).grade or 0 for k in ("chosen", "rejected"))
                counts["pairs"] += 1
                counts["toward_not_good"] += chosen in (1, 2) and rejected in (3, 4)
                counts["toward_good"] += chosen in (3, 4) and rejected in (1, 2)
    return counts


if __name__ == "__main__":
    run_main(main)
