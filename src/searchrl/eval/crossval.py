"""K-fold cross-validation over queries: every query tested once, the same folds for every system.

Chorus's 27 test queries cannot tell systems 0.03 apart; 135 queries, each tested once,
narrow the interval by about sqrt(5). :func:`query_folds` assigns queries to K folds by a
seeded permutation of the sorted query ids; fold f is the test split, fold f+1 (mod K) the
valid split (beta; none when K = 2), the rest train. :func:`fold_dataset` re-splits a
dataset that way. :func:`crossval` trains the relevance recipe (an SFTConfig, run through
sft.run_sft with tiering on the fold's valid split) on each fold and seed, scores the fold's
test pairs (a cot-first recipe's are decoded, its written grade being its score: the order ablation), and
scores the baselines (BM25 thresholds, lexical logistic regression, MiniLM
cosine, the rule engine) on the same folds. Its result holds every system's per-pair
predictions over all queries, so :func:`summarize` reports per-query AUC of P(Good),
Good-F1, macro-F1 and accuracy with query-bootstrap 95% intervals (and the pooled AUC, and for
a decoded recipe the measures of its reasoning pooled over folds and seeds: parse rate, step
agreement, self-consistency; relevance/scoring/reasoning.py), and paired bootstraps of
one system against the others. :func:`cross_fitted_probs` fits a readout over several systems'
scores on the folds (fold f predicted by a fit on the others; :func:`within_query_z` gives a
score's within-query form): a reference for how far combining signals goes.

Simplifies: folds are of queries, not balanced by grade; baselines are deterministic, so
they run once whatever the number of seeds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from searchrl.config import identity
from searchrl.data.schema import Dataset, pair_products
from searchrl.errors import ConfigError
from searchrl.metrics.measures import fast_scores, good_auc, per_query_auc
from searchrl.metrics.stats import paired_bootstrap, paired_metric_bootstrap, query_bootstrap
from searchrl.relevance.scoring.reasoning import add_counts, rates_of_rows, reasoning_rates
from searchrl.training import RESUMABLE_CHANGES, config_changes, moved


def query_folds(query_ids, k: int, seed: int = 0) -> dict[str, int]:
    """query id -> fold 0..k-1: a seeded permutation of the sorted ids, dealt round robin."""
    ids = sorted(str(q) for q in set(query_ids))
    if not 2 <= k <= len(ids):
        raise ConfigError(f"--cv {k}: need 2 <= K <= the {len(ids)} queries")
    order = np.random.default_rng([seed, 23]).permutation(len(ids))
    return {ids[j]: i % k for i, j in enumerate(order)}


def fold_dataset(ds: Dataset, folds: dict[str, int], fold: int) -> Dataset:
    """``ds`` re-split: fold ``fold`` = test, the next fold = valid (K >= 3; with K = 2 there is none), the others
    = train."""
    k = max(folds.values()) + 1
    valid = (fold + 1) % k if k >= 3 else None
    split = {q: "test" if f == fold else "valid" if f == valid else "train" for q, f in folds.items()}
    queries = ds.queries.copy()
    queries["split"] = queries["query_id"].astype(str).map(split)
    return dataclasses.replace(ds, queries=queries)


def sft_rl_split(ds: Dataset, sft_fraction: float = 0.5, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(sft_ds, rl_ds): ``ds``'s train queries divided at random, ``sft_fraction`` of them for SFT and the rest
    for RL. sft_ds's train split is the SFT share, rl_ds's is the RL share (the RL trainers read the train
    split, so their prompts come from queries SFT never saw); valid and test are ``ds``'s in both. An SFT model
    trained on part of the labels has room left for RL to fill (experiments/relevance_rl_stages.py)."""
    if not 0 < sft_fraction < 1:
        raise ConfigError(f"sft_fraction must be in (0, 1), got {sft_fraction}")
    train = sorted(ds.queries.loc[ds.queries["split"] == "train", "query_id"].astype(str))
    if len(train) < 2:
        raise ConfigError(f"{len(train)} train queries: an SFT share and an RL share need at least 2")
    order = np.random.default_rng(seed).permutation(len(train))
    n_sft = min(max(1, round(sft_fraction * len(train))), len(train) - 1)
    sft_queries = {train[i] for i in order[:n_sft]}

    def only(keep_sft: bool) -> Dataset:  # the other share's queries and judgments left out
        qid = ds.queries["query_id"].astype(str)
        drop = (ds.queries["split"] == "train") & (qid.isin(sft_queries) != keep_sft)
        kept = ds.queries[~drop].reset_index(drop=True)
        judged = ds.judgments[ds.judgments["query_id"].astype(str).isin(set(kept["query_id"].astype(str)))]
        return dataclasses.replace(ds, queries=kept, judgments=judged.reset_index(drop=True))
    return only(True), only(False)


def _baselines(ds: Dataset) -> dict[str, dict]:
    from searchrl.eval.baselines import relevance_baseline_predictions
    from searchrl.relevance.rules.engine import RuleEngine
    out = relevance_baseline_predictions(ds, "test")
    pairs = ds.split("test").pairs()
    engine = RuleEngine.from_yaml()
    rules = np.array([engine.judge(q, p).grade for q, p in zip(pairs["text"], pair_products(pairs))])
    out["rules"] = {"pred": rules, "score": rules.astype(float)}
    return out


def _model(cfg, ds: Dataset, fold_dir: Path, decode: bool = False) -> dict:
    from searchrl.data.schema import write_dataset
    from searchrl.relevance.scoring.evaluate import split_probs, tune_tiering
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    from searchrl.relevance.scoring.tiering import tiered_grades
    from searchrl.relevance.train.sft import DECODE_ONLY, run_sft
    data_dir = write_dataset(ds, fold_dir / "data")
    run = dataclasses.replace(cfg.run, output_dir=str(fold_dir / "sft"), resume=True)
    fold_cfg = dataclasses.replace(cfg, data_dir=str(data_dir), run=run)
    final, done = fold_dir / "sft" / "final", fold_dir / "fold_config.json"
    wanted = json.loads(json.dumps(identity(fold_cfg)))
    saved = json.loads(done.read_text()) if done.exists() else None
    if saved is not None:  # a fold directory copied or moved with its files is the same fold
        saved = moved(saved, str(Path(saved["run"]["output_dir"]).parent), str(fold_dir))
    if not ((final / "relevance_config.json").exists() and saved == wanted):
        (fold_dir / "decoded.json").unlink(missing_ok=True)  # decoded by the model this run replaces
        if saved is not None and config_changes(saved, wanted, RESUMABLE_CHANGES + DECODE_ONLY):
            shutil.rmtree(fold_dir / "sft", ignore_errors=True)  # another config's model: this one trains afresh
        # (changed in DECODE_ONLY fields alone, the fold resumes its own run: final/ is re-saved under this config)
        final = run_sft(fold_cfg).final_dir
        done.write_text(json.dumps(wanted))  # this fold finished with this config: a re-run reuses it
    if cfg.prompt.order == "cot_first":
        return _decoded(final, ds, fold_dir, cfg.eval)
    beta = tune_tiering(final, ds, "valid")["beta"] if len(ds.split("valid").pairs()) else 0.5
    probs, _, _ = split_probs(RelevanceScorer.load(final), ds, "test")
    np.save(fold_dir / "test_probs.npy", probs)  # [N, 4]: for analyses beyond the report (thresholds, calibration)
    out = {"pred": tiered_grades(probs, beta), "argmax": probs.argmax(1) + 1, "score": probs[:, 2:].sum(1),
           "beta": beta}
    if decode:  # the reasoning, held to the first-token grade (the argmax of the grade distribution)
        decoded = _decoded(final, ds, fold_dir, cfg.eval, grades=out["argmax"])
        out.update(reasoning=decoded["reasoning"], reasoning_pairs=decoded["reasoning_pairs"])
    return out


def _decoded(final: Path, ds: Dataset, fold_dir: Path, eval_cfg, grades=None) -> dict:
    """Every test pair decoded greedily, under the model's completion grammar. For a cot-first model (``grades``
    None) these are its predictions: its grade exists only after its reasoning, so the written grade is read
    (none readable = L1, as evaluate_model counts it) and is also the ranking score, as for the rules; a
    label-first model passes its first-token ``grades``, which self-consistency is measured against. The
    completions are saved (test_completions.jsonl) with their parse; "reasoning" holds the counts of the
    reasoning measures against the rule engine's verdicts (reasoning.reasoning_counts), "reasoning_pairs" the
    same per pair (reasoning.reasoning_per_pair)."""
    from searchrl.relevance.format.parser import parse_completion
    from searchrl.relevance.model.scorer_config import load_scorer_config
    from searchrl.relevance.rules.engine import RuleEngine, pair_slugs
    from searchrl.relevance.rules.kb import completion_grammar
    from searchrl.relevance.scoring.evaluate import decode_completions
    from searchrl.relevance.scoring.reasoning import reasoning_counts, reasoning_per_pair
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    cache = fold_dir / "decoded.json"
    decoder = json.loads(json.dumps(dataclasses.asdict(load_scorer_config(final).prompt)))  # what the grammar reads
    saved = json.loads(cache.read_text()) if cache.exists() else None
    if saved and saved.get("prompt") == decoder:  # this fold's model, decoded before by this decoder
        written = np.asarray(saved["written"])
        return {"pred": written, "score": written.astype(float), "reasoning": saved["reasoning"],
                "reasoning_pairs": saved["reasoning_pairs"]}
    scorer = RelevanceScorer.load(final)
    order = scorer.config.prompt.order
    pairs = ds.split("test").pairs()
    products = pair_products(pairs)
    prompts = [scorer.prompt(q, p) for q, p in zip(pairs["text"], products)]
    texts = decode_completions(scorer.model, scorer.tokenizer, prompts, eval_cfg.max_new_tokens, eval_cfg.batch_size,
                               grammar=completion_grammar(scorer.tokenizer, scorer.config.prompt),
                               linked=pair_slugs(scorer.config.prompt, pairs["text"], products))
    parsed = [parse_completion(t, order) for t in texts]
    written = np.array([p.grade or 1 for p in parsed])
    engine = RuleEngine.from_yaml()
    judged = [engine.judge(q, p) for q, p in zip(pairs["text"], products)]
    rules = [j.verdicts for j in judged]
    held_to = written if grades is None else grades
    per_pair = reasoning_per_pair(parsed, rules, held_to, order)
    with (fold_dir / "test_completions.jsonl").open("w") as f:
        for t, p, ok, consistent, j, g in zip(texts, parsed, per_pair["parsed"], per_pair["consistent"], judged,
                                              held_to):
            f.write(json.dumps({"completion": t, "grade": p.grade, "parsed": bool(ok), "self_consistent": bool(consistent),
                                "held_to": int(g), "rule_grade": j.grade}) + "\n")
    out = {"pred": written, "score": written.astype(float), "reasoning": reasoning_counts(parsed, rules, held_to, order),
           "reasoning_pairs": per_pair}
    cache.write_text(json.dumps({"written": written.tolist(), "reasoning": out["reasoning"],
                                 "reasoning_pairs": per_pair, "prompt": decoder}))
    return out


def crossval(cfg, ds: Dataset, k: int = 5, seeds=(0,), out: str | Path = "runs/cv", baselines: bool = True,
             name: str = "model", folds_to_run=None, decode: bool = False) -> dict:
    """Train ``cfg`` (an SFTConfig) on every fold (or only ``folds_to_run``) and seed; predictions of it and the
    baselines for every pair of those folds; ``decode``: a label-first recipe's test pairs are decoded too, for the
    measures of its reasoning.

    Returns {"query_id", "grade" (every pair once, fold order), "fold", "systems": {name: {"pred": [S, N] or
    [1, N], "score": [S, N] or [1, N], "reasoning"?: a decoded recipe's reasoning counts summed over folds and
    seeds}}}; also written to ``out/crossval.json`` (a re-run reuses each fold
    finished with the same config, and resumes an unfinished one from its checkpoint)."""
    out = Path(out)
    folds = query_folds(ds.queries["query_id"], k, seed=0)  # the same folds for every seed and system
    rows = {"query_id": [], "grade": [], "fold": []}
    systems: dict[str, dict[str, list]] = {}
    run = sorted(set(folds_to_run)) if folds_to_run else range(k)  # a subset: the others are not tested
    if any(not 0 <= f < k for f in run):
        raise ConfigError(f"--folds must be in 0..{k - 1}, got {list(run)}")
    for fold in run:
        fds = fold_dataset(ds, folds, fold)
        test = fds.split("test").pairs()
        rows["query_id"] += test["query_id"].astype(str).tolist()
        rows["grade"] += test["grade"].astype(int).tolist()
        rows["fold"] += [fold] * len(test)
        parts = {}
        if baselines:
            parts.update({b: [p] for b, p in _baselines(fds).items()})
        parts[name] = []
        for seed in seeds:
            seed_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=seed))
            parts[name].append(_model(seed_cfg, fds, out / f"fold{fold}" / f"seed{seed}", decode))
        for system, preds in parts.items():
            slot = systems.setdefault(system, {"pred": [[] for _ in preds], "score": [[] for _ in preds]})
            for s, p in enumerate(preds):
                for key in ("pred", "score"):
                    slot[key][s] += [] if p.get(key) is None else np.asarray(p[key]).tolist()
                if p.get("reasoning"):
                    slot["reasoning"] = add_counts(slot.get("reasoning"), p["reasoning"])
                if p.get("reasoning_pairs"):  # [S][N] per measure, like pred
                    by_seed = slot.setdefault("reasoning_pairs", [{} for _ in preds])[s]
                    for key, values in p["reasoning_pairs"].items():
                        by_seed[key] = by_seed.get(key, []) + list(values)
    result = {**rows, "k": k, "seeds": list(seeds), "systems": systems}
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossval.json").write_text(json.dumps(result))
    return result


def within_query_z(x: np.ndarray, qids: np.ndarray) -> np.ndarray:
    """[N] ``x`` standardised within each query's pairs."""
    z = np.zeros_like(x)
    for q in np.unique(qids):
        m = qids == q
        z[m] = (x[m] - x[m].mean()) / (x[m].std() + 1e-9)
    return z


def cross_fitted_probs(features: np.ndarray, grade: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """[N, 4] grade probabilities of a 4-grade logistic regression over ``features`` [N, F], fold f's rows
    predicted by a fit on the other folds' rows. Each fit sees the other folds' labels: an upper reference for
    a readout over these features, not a deployable model."""
    from sklearn.linear_model import LogisticRegression
    probs = np.zeros((len(grade), 4))
    for f in np.unique(fold):
        fit = LogisticRegression(max_iter=2000).fit(features[fold != f], grade[fold != f])
        probs[np.ix_(fold == f, fit.classes_ - 1)] = fit.predict_proba(features[fold == f])
    return probs


def per_query_auc_matrix(score: np.ndarray, gold: np.ndarray, qids: np.ndarray, queries: list[str]) -> np.ndarray:
    """[S, Q] per-query AUC (NaN where undefined) for [S, N] scores."""
    out = np.full((len(score), len(queries)), np.nan)
    for s, row in enumerate(score):
        auc = per_query_auc(gold, row, qids)
        out[s] = [auc.get(q, np.nan) for q in queries]
    return out


def _reasoning_intervals(per_seed: list[dict], qids: np.ndarray, n_boot: int) -> dict:
    """Query-bootstrap 95% intervals of parse rate, step agreement and self-consistency (seeds averaged)."""
    arrays = [{k: np.asarray(v, dtype=float) for k, v in seed.items()} for seed in per_seed]
    out = {}
    for key in ("x_parse_rate", "x_step_agreement", "x_self_consistency"):
        def value(r, key=key):
            vals = [rates_of_rows(a, r)[key] for a in arrays]
            return float(np.mean([v for v in vals if v is not None])) if any(v is not None for v in vals) else 0.0
        iv = query_bootstrap(metric=value, groups=qids, n_boot=n_boot)
        out[key] = [iv.lo, iv.hi]
    lo, hi = out["x_self_consistency"]
    out["x_discriminative_hallucination_rate"] = [1 - hi, 1 - lo]
    return out


def summarize(result: dict, reference: str, n_boot: int = 2000) -> list[dict]:
    """One row per system: per-query AUC, Good-F1, macro-F1, accuracy, each with its query-bootstrap 95% interval
    (over queries, and seeds when there are several); the pooled AUC (x_good_auc, the seeds' mean); a decoded
    recipe's reasoning measures (reasoning.reasoning_rates of its pooled counts); and the paired difference to
    ``reference``."""
    gold, qids = np.asarray(result["grade"]), np.asarray(result["query_id"])
    queries = sorted(set(qids.tolist()))
    rows, aucs = [], {}
    for system, p in result["systems"].items():
        row = {"system": system, "n": len(gold), "x_queries": len(queries)}
        if p["score"] and p["score"][0]:
            aucs[system] = per_query_auc_matrix(np.asarray(p["score"], dtype=float), gold, qids, queries)
            iv = query_bootstrap(aucs[system], n_boot=n_boot)
            row.update(x_good_auc_per_query=iv.mean, x_ci={"x_good_auc_per_query": [iv.lo, iv.hi]})
            pooled = [good_auc(gold, score, qids).get("x_good_auc") for score in np.asarray(p["score"], dtype=float)]
            if None not in pooled:  # undefined when every pair has one class
                row["x_good_auc"] = float(np.mean(pooled))
        if p.get("reasoning"):
            row.update(reasoning_rates(p["reasoning"]))
        if p.get("reasoning_pairs"):
            row.setdefault("x_ci", {}).update(_reasoning_intervals(p["reasoning_pairs"], qids, n_boot))
        if p["pred"] and p["pred"][0]:
            preds = np.asarray(p["pred"])  # [S, N]
            for metric in ("good_f1", "macro_f1", "accuracy"):
                def value(r, m=metric):
                    return float(np.mean([fast_scores(gold[r], pr[r])[m] for pr in preds]))
                iv = query_bootstrap(metric=value, groups=qids, n_boot=n_boot)
                row[metric] = iv.mean
                row.setdefault("x_ci", {})[metric] = [iv.lo, iv.hi]
        rows.append(row)
    ref = result["systems"].get(reference)
    for row in rows:
        other = result["systems"][row["system"]]
        if row["system"] == reference or ref is None:
            continue
        if row["system"] in aucs and reference in aucs:  # the reference's seeds averaged, against this system's
            a, b = aucs[reference], aucs[row["system"]]
            keep = ~(np.isnan(a).all(0) | np.isnan(b).all(0))  # a query with one grade class has no AUC
            d = paired_bootstrap(np.nanmean(a[:, keep], 0), np.nanmean(b[:, keep], 0), n_boot=n_boot)
            row["x_auc_diff_vs_ref"] = [d.mean, d.lo, d.hi]
        if other["pred"] and other["pred"][0] and ref["pred"] and ref["pred"][0]:
            a, b = np.asarray(ref["pred"]), np.asarray(other["pred"])
            d = paired_metric_bootstrap(
                lambda r: float(np.mean([fast_scores(gold[r], x[r])["good_f1"] for x in a])),
                lambda r: float(np.mean([fast_scores(gold[r], x[r])["good_f1"] for x in b])),
                qids, n_boot=n_boot)
            row["x_good_f1_diff_vs_ref"] = [d.mean, d.lo, d.hi]
    return rows
