"""What each stage of ``searchrl pipeline`` does: thin calls of the library, wired to the run directory.

Every stage is a function ``(ctx) -> summary dict`` that reads its inputs from earlier
stages' directories under ``ctx.out`` and writes its own under ``ctx.out / NAME``. A stage
that cannot run on this dataset (no valid queries, no Good judgment to train a retriever on,
no preference pair to learn from) raises :class:`SkipStage` with the reason: the runner
records it, the report shows it, and the stages after it adapt (GRPO then starts from the
SFT model, say). Training stages run with ``run.resume`` on, so a killed pipeline continues
from the stage's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from searchrl.data.schema import Dataset, load_dataset, pair_products
from searchrl.pipeline.config import RELEVANCE_CHAIN
from searchrl.pipeline.context import Context, SkipStage

RELEVANCE_METRICS = ("accuracy", "macro_f1", "good_f1")  # pooled metrics given intervals by query bootstrap
RETRIEVAL_COLUMNS = ["hitrate@10", "ndcg@10", "mrr@10", "hitrate@100", "goodrate@10", "bm25_overlap@10",
                     "added_recall@10", "added_recall@100", "quality@10", "x_train_seconds"]


def _rows_of_split(ds: Dataset, split: str, what: str):
    pairs = ds.split(split).pairs()
    if pairs.empty:
        raise SkipStage(f"split {split!r} has no judged pairs ({what} needs some); re-split the data "
                        "(searchrl data import --fractions ...) or leave the stage out (--stages)")
    return pairs


def _with_run(cfg, out: Path, **changes):
    """A trainer config with its run section pointed at ``out`` and resume on, plus other field changes."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(out), resume=True), **changes)


# ---------------------------------------------------------------- data and baselines

def data(ctx: Context) -> dict:
    from searchrl.data.prepare import counts, prepare
    d = ctx.cfg.data
    if d.data_dir:
        ds = load_dataset(d.data_dir)  # checks the tables are there and complete
    else:
        ds = prepare(d.dataset, ctx.out / "data", d.mirror or None, seed=d.seed, fractions=tuple(d.fractions))
    ctx._ds = ds
    return {"data_dir": str(ctx.data_dir), **counts(ds)}


def baselines(ctx: Context) -> dict:
    from searchrl.eval.baselines import relevance_baseline_predictions
    from searchrl.relevance.rules.engine import RuleEngine
    split = ctx.cfg.evaluate.split
    ds = ctx.ds()
    pairs = _rows_of_split(ds, split, "the baselines")
    _rows_of_split(ds, "train", "fitting the baselines")
    preds = relevance_baseline_predictions(ds, split)
    engine = RuleEngine.from_yaml(ctx.cfg.sft.rules or None)
    rules = np.array([engine.judge(q, p).grade for q, p in zip(pairs["text"], pair_products(pairs))])
    preds["rules"] = {"pred": rules, "score": rules.astype(float)}
    out = ctx.dir("baselines")
    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / "predictions.json", pairs, {k: v for k, v in preds.items()})
    return {"systems": list(preds)}


def _write_predictions(path: Path, pairs, systems: dict) -> None:
    """Per-pair predictions of several systems on one split, in the split's pair order."""
    doc = {"query_id": pairs["query_id"].astype(str).tolist(), "grade": pairs["grade"].astype(int).tolist(),
           "systems": {name: {k: (None if v is None else np.asarray(v).tolist()) for k, v in p.items()}
                       for name, p in systems.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


# ---------------------------------------------------------------- the relevance model

def sft(ctx: Context) -> dict:
    from searchrl.relevance.train.sft import run_sft
    _rows_of_split(ctx.ds(), "train", "SFT")
    res = run_sft(_with_run(ctx.cfg.sft, ctx.dir("sft"), data_dir=str(ctx.data_dir)))
    return {"final": str(res.final_dir), "steps": res.step, "last_eval": res.last_eval}


def tiering(ctx: Context) -> dict:
    from searchrl.relevance.scoring.evaluate import tune_tiering
    model = ctx.relevance_model(before="dpo")
    if model is None:
        raise SkipStage("no relevance model to tune (run the sft stage first)")
    if ctx.cfg.start_model and model == Path(ctx.cfg.start_model):  # tuning writes into the model's directory
        raise SkipStage("the start model is another run's: tune it there (searchrl tune-tiering)")
    _rows_of_split(ctx.ds(), ctx.cfg.tiering.split, "tuning beta")
    result = tune_tiering(model, ctx.ds(), ctx.cfg.tiering.split)
    out = ctx.dir("tiering")
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiering.json").write_text(json.dumps({**result, "model": str(model)}, indent=1) + "\n")
    return {k: result[k] for k in ("beta", "macro_f1_tiered", "macro_f1_argmax")}


def sample(ctx: Context) -> dict:
    from searchrl.relevance.train.sample import sample_preferences, write_pairs
    s = ctx.cfg.sample
    model = ctx.relevance_model(before="dpo")
    if model is None:
        raise SkipStage("no relevance model to sample from (run the sft stage first)")
    _rows_of_split(ctx.ds(), s.split, "pass@N sampling")
    rows, table = sample_preferences(model, ctx.ds(), s.n, s.split, s.temperature, s.top_p, s.max_new_tokens,
                                     s.prompts_per_batch, s.seed, s.max_prompts, ctx.cfg.sft.rules or None)
    if s.teacher_chosen == "grade":  # grade-only samples: the teacher's side is its grade token, not its CoT
        from searchrl.relevance.format.prompt import grade_token
        rows = [r | {"chosen": grade_token(r["grade"])} if r["source"] == "teacher" else r for r in rows]
    out = ctx.dir("sample")
    write_pairs(out / "pairs.jsonl", rows)
    (out / "pass_at_n.json").write_text(json.dumps(table, indent=1) + "\n")
    return {k: table[k] for k in ("prompts", "pass@1", f"pass@{s.n}", "pairs", "pairs_from_samples",
                                  "pairs_from_teacher", "format_error_rate")}


def dpo(ctx: Context) -> dict:
    from searchrl.relevance.train.dpo import train_dpo
    pairs = ctx.dir("sample") / "pairs.jsonl"
    model = ctx.relevance_model(before="dpo")
    if model is None or not pairs.exists():
        raise SkipStage("DPO needs the SFT model and the sample stage's preference pairs")
    if not pairs.read_text().strip():
        raise SkipStage("pass@N gave no preference pair (every sample was right): nothing for DPO to learn")
    res = train_dpo(_with_run(ctx.cfg.dpo, ctx.dir("dpo"), model=str(model), pairs=str(pairs),
                              data_dir=str(ctx.data_dir)))
    return {"final": str(res.final_dir), "steps": res.step, "last_eval": res.last_eval}


def grpo(ctx: Context) -> dict:
    from searchrl.relevance.train.grpo import train_grpo
    model = ctx.relevance_model(before="grpo")
    if model is None:
        raise SkipStage("GRPO needs a relevance model to start from (run sft first)")
    _rows_of_split(ctx.ds(), "train", "GRPO prompts")
    res = train_grpo(_with_run(ctx.cfg.grpo, ctx.dir("grpo"), model=str(model), data_dir=str(ctx.data_dir)))
    return {"final": str(res.final_dir), "steps": res.step, "rollouts": res.rollouts, "last_eval": res.last_eval}


def export(ctx: Context) -> dict:
    from searchrl.relevance.scoring.export import export_model
    model = ctx.relevance_model()
    if model is None:
        raise SkipStage("no trained relevance model to export")
    out = export_model(model, ctx.dir("export") / "model", overwrite=True)
    return {"from": str(model), "model": str(out)}


# ---------------------------------------------------------------- the retriever

def retriever(ctx: Context) -> dict:
    from searchrl.metrics.measures import write_metrics_json
    from searchrl.retrieval.chain import run_retriever_stages
    ds = ctx.ds()
    train = _rows_of_split(ds, "train", "the retriever")
    cfg = dataclasses.replace(ctx.cfg.retriever, data_dir=str(ctx.data_dir))
    if not (train["grade"] >= 3).any() and not cfg.generated_queries:
        raise SkipStage("no Good (L3/L4) judgment in train: the retriever has no positive pair to learn from")
    _rows_of_split(ds, ctx.cfg.evaluate.split, "evaluating the retriever")
    judge = ctx.judge()
    rows = run_retriever_stages(cfg, ds, ctx.dir("retriever"), ctx.cfg.evaluate.split,
                                relevance_model=str(judge) if judge else None, ks=tuple(ctx.cfg.evaluate.ks))
    write_metrics_json(ctx.dir("retriever") / "retrieval.json", "retrieval", ds.card.get("name", "custom"),
                       ctx.cfg.evaluate.split, rows)
    from searchrl.metrics.measures import print_table
    print_table(rows, RETRIEVAL_COLUMNS, title=f"Retrieval, {ds.card.get('name', 'custom')} {ctx.cfg.evaluate.split}, "
                f"{cfg.max_products or 'all'} products ({rows[0].get('n_queries', '?')} queries with a Good item)")
    return {"systems": [r["system"] for r in rows], "judge": str(judge) if judge else None}


# ---------------------------------------------------------------- evaluation

def evaluate(ctx: Context) -> dict:
    """Every relevance system on one split with query-bootstrap intervals; each trained stage's CoT decoded, and the
    final model checked against the free signals (eval/free_signals.py: a warning per failed check)."""
    from searchrl.metrics.measures import classification_metrics, fast_scores, write_metrics_json
    from searchrl.relevance.scoring.evaluate import evaluate_model, split_probs
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    e = ctx.cfg.evaluate
    ds = ctx.ds()
    pairs = _rows_of_split(ds, e.split, "evaluation")
    gold, qids = pairs["grade"].to_numpy(), pairs["query_id"].astype(str).to_numpy()
    systems = {}
    base = ctx.dir("baselines") / "predictions.json"
    if base.exists():
        doc = json.loads(base.read_text())
        systems.update({name: {k: (None if v is None else np.asarray(v)) for k, v in p.items()}
                        for name, p in doc["systems"].items()})
    models = {stage: ctx.dir(stage) / "final" for stage in RELEVANCE_CHAIN
              if (ctx.dir(stage) / "final" / "relevance_config.json").exists()}
    rows, final = [], _final_stage(ctx, models)
    for stage, model in models.items():
        scorer = RelevanceScorer.load(model)
        probs, _, _ = split_probs(scorer, ds, e.split)
        systems[stage] = {"pred": probs.argmax(1) + 1, "score": probs[:, 2:].sum(1), "probs": probs}
    for name, p in systems.items():
        rows.append(_system_row(name, p, gold, qids, e.bootstrap))
        if name == final:  # the deployed reading of the final model: cumulative-probability tiering
            from searchrl.relevance.model.scorer_config import load_scorer_config
            from searchrl.relevance.scoring.tiering import tiered_grades
            beta = load_scorer_config(models[name]).beta
            tiered = tiered_grades(p["probs"], beta)
            rows.append({"system": f"{name} tiered (beta={beta:g})", **classification_metrics(gold, tiered),
                         "x_ci": {m: _ci(lambda r, m=m: fast_scores(gold[r], tiered[r])[m], qids,
                                         e.bootstrap) for m in RELEVANCE_METRICS}})
    out = ctx.dir("evaluate")
    out.mkdir(parents=True, exist_ok=True)
    extra = {}
    for stage in models if e.decode else ():  # each stage's reasoning: parse rate, step agreement, consistency, ...
        decoded = evaluate_model(models[stage], _decode_subset(ds, e), e.split, decode=True,
                                 rules=ctx.cfg.sft.rules or None)[0]
        measures = {k: v for k, v in decoded.items() if k.startswith("x_") and k not in (
            "x_good_auc", "x_auc_queries", "x_good_auc_per_query")}
        next(r for r in rows if r["system"] == stage).update(measures)
        extra = measures if stage == final else extra
    failures = _check_free_signals(rows, final)
    dataset = ds.card.get("name", "custom")
    write_metrics_json(out / "relevance.json", "relevance", dataset, e.split, rows, free_signal_failures=failures)
    _print_evaluation(rows, final, extra, failures, f"{dataset} {e.split}", len(pairs))
    _write_predictions(out / "predictions.json", pairs, {k: {"pred": v["pred"], "score": v["score"]}
                                                         for k, v in systems.items()})
    if final is not None:
        np.save(out / "final_probs.npy", systems[final]["probs"])
    return {"systems": list(systems), "final": final, **extra, "free_signal_failures": failures}


def _system_row(name: str, p: dict, gold: np.ndarray, qids: np.ndarray, n_boot: int) -> dict:
    """One system's metrics row from its per-pair grades and Good score (either may be None): classification
    metrics, pooled and per-query AUC of the score, query-bootstrap intervals."""
    from searchrl.metrics.measures import classification_metrics, fast_scores, good_auc, per_query_auc
    from searchrl.metrics.stats import query_bootstrap
    row = {"system": name}
    if p["pred"] is not None:
        pred = np.asarray(p["pred"])
        row.update(classification_metrics(gold, pred))
        row["x_ci"] = {m: _ci(lambda r, m=m: fast_scores(gold[r], pred[r])[m], qids, n_boot)
                       for m in RELEVANCE_METRICS}
    if p["score"] is not None:
        pooled = good_auc(gold, p["score"], qids).get("x_good_auc")  # absent when the split has one class only
        if pooled is not None:
            row["x_good_auc"] = pooled
        auc = per_query_auc(gold, p["score"], qids)
        if auc:
            row["x_good_auc_per_query"] = float(np.mean(list(auc.values())))
            iv = query_bootstrap(list(auc.values()), n_boot=n_boot)
            row.setdefault("x_ci", {})["x_good_auc_per_query"] = [iv.lo, iv.hi]
    return row


def _check_free_signals(rows: list[dict], final: str | None) -> list[dict]:
    """The free-signal checks the final model fails (eval/free_signals.py); they also go on its row
    (x_free_signal_failures), which the report flags."""
    from searchrl.eval.free_signals import free_signal_failures
    if final is None:
        return []
    failures = free_signal_failures(rows, final)
    if failures:
        next(r for r in rows if r["system"] == final)["x_free_signal_failures"] = failures
    return failures


def _print_evaluation(rows: list[dict], final: str | None, extra: dict, failures: list[dict], what: str,
                      n_pairs: int) -> None:
    """The evaluation table of ``what`` (dataset and split), the final model's reasoning table (when decoded) and a
    warning per failed free-signal check."""
    from searchrl.eval.free_signals import warning_line
    from searchrl.metrics.measures import RELEVANCE_COLUMNS, print_table
    from searchrl.relevance.scoring.reasoning import REASONING_MEASURES, STEP_AGREEMENT
    print_table(rows, RELEVANCE_COLUMNS + ["x_good_auc", "x_good_auc_per_query"],
                title=f"Relevance, {what} ({n_pairs} pairs)")
    if extra:
        print_table([r for r in rows if "x_parse_rate" in r],
                    [k for k, _ in REASONING_MEASURES + STEP_AGREEMENT] + ["x_format_error_rate", "x_rule_adherence"],
                    title=f"Reasoning of each stage's decoded completions, {what} (a seeded subset)")
    for failure in failures:
        print(f"[evaluate] {warning_line(failure)}")


def _final_stage(ctx: Context, models: dict) -> str | None:
    """The relevance stage the exported model came from (else the last one trained); None without a model."""
    record = ctx.dir("export") / "stage.json"
    source = json.loads(record.read_text()).get("summary", {}).get("from") if record.exists() else None
    for stage, path in models.items():
        if str(path) == source:
            return stage
    return list(models)[-1] if models else None


def _decode_subset(ds: Dataset, e) -> Dataset:
    """``ds`` with the evaluation split cut to a seeded subset of ``max_decode`` pairs (decoding is slow)."""
    if not e.max_decode:
        return ds
    j = ds.judgments
    in_split = j["query_id"].isin(ds.queries.loc[ds.queries["split"] == e.split, "query_id"])
    rows = np.flatnonzero(in_split.to_numpy())
    if len(rows) <= e.max_decode:
        return ds
    keep = np.random.default_rng([7, 11]).permutation(rows)[:e.max_decode]
    drop = np.setdiff1d(rows, keep)
    return dataclasses.replace(ds, judgments=j.drop(j.index[drop]).reset_index(drop=True))


def _ci(metric, groups, n_boot: int) -> list[float]:
    from searchrl.metrics.stats import query_bootstrap
    iv = query_bootstrap(metric=metric, groups=groups, n_boot=n_boot)
    return [iv.lo, iv.hi]


def report(ctx: Context) -> dict:
    from searchrl.eval.report import render_report
    from searchrl.pipeline.collect import collect_report
    doc = collect_report(ctx, rendering="report")
    (ctx.out / "report.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    path = render_report(doc, ctx.out / "report.html")
    if ctx.cfg.report.results_dir:
        from searchrl.pipeline.results import write_results_pages
        for page in write_results_pages(doc, ctx.cfg.report.results_dir):
            print(f"[pipeline] results page: {page}")
    return {"report": str(path)}


RUNNERS = {"data": data, "baselines": baselines, "sft": sft, "tiering": tiering, "sample": sample, "dpo": dpo,
           "grpo": grpo, "export": export, "retriever": retriever, "evaluate": evaluate, "report": report}
