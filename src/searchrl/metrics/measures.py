"""Metrics shared by every stage, and the one JSON file format they are reported in.

- :func:`classification_metrics`: relevance-model quality on the 4 grades (accuracy,
  macro/per-grade F1, confusion) and on the binary "Good" (grade >= 3) decision.
- :func:`retrieval_metrics`: HitRate (recall of Good items), nDCG and MRR at cutoffs,
  computed by ``ir_measures`` rather than by hand (:func:`retrieval_metrics_per_query`: the
  same values one query at a time, for bootstraps).
- :func:`added_recall`, :func:`lost_recall`, :func:`bm25_overlap`: what a route (or a hybrid)
  adds to the lexical route's top K, and how much of its top K the lexical route also returns.
- :func:`write_metrics_json` / :func:`read_metrics_json`: the validated results file
  ``{"task", "dataset", "split", "rows": [{"system": ..., metric: value}], ...}``.
- :func:`format_table` / :func:`print_table`: a pipe table for terminals and READMEs.

Simplifications, on purpose: metrics are macro-averaged over queries with no
confidence intervals or significance tests; unjudged products count as not relevant
(no condensed lists, so sparse judgments understate every system alike); only queries
with at least one Good judgment are evaluated; nDCG uses linear gain = grade - 1 with a
log2(rank + 1) discount (trec_eval's convention), not the exponential 2^g - 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from searchrl.data.schema import GOOD_MIN_GRADE, GRADES, DataError

LABELS = list(GRADES)
TASKS = ("relevance", "retrieval")
# The columns every relevance table prints, in this order.
RELEVANCE_COLUMNS = ["accuracy", "macro_f1", "f1_L1", "f1_L2", "f1_L3", "f1_L4", "good_f1"]
RELEVANCE_KEYS = frozenset(
    ["accuracy", "macro_f1", "good_f1", "good_accuracy", "n", "confusion"] + [f"f1_L{g}" for g in GRADES])


# ---------------------------------------------------------------- classification

def _grades(values, name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=object)
    # Compare against the grade tuple rather than casting: a cast would turn 3.7 into 3.
    bad = [v for v in arr if isinstance(v, bool) or v not in GRADES]
    if bad:
        raise ValueError(f"{name}: grades must be integers in 1..4, got {bad[0]!r}")
    return arr.astype(int)


def classification_metrics(y_true, y_pred) -> dict:
    """4-grade and binary-Good metrics for predicted vs gold grades (ints 1..4)."""
    t, p = _grades(y_true, "y_true"), _grades(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_true and y_pred differ in length: {len(t)} vs {len(p)}")
    if len(t) == 0:
        raise ValueError("y_true and y_pred are empty")
    # labels fixed so a grade absent from both sides still counts (as 0) in the macro mean.
    per = f1_score(t, p, labels=LABELS, average=None, zero_division=0)
    tg, pg = t >= GOOD_MIN_GRADE, p >= GOOD_MIN_GRADE
    out = {
        "accuracy": float(accuracy_score(t, p)),
        "macro_f1": float(f1_score(t, p, labels=LABELS, average="macro", zero_division=0)),
        **{f"f1_L{g}": float(f) for g, f in zip(LABELS, per)},
        "good_f1": float(f1_score(tg, pg, pos_label=True, zero_division=0)),
        "good_accuracy": float(accuracy_score(tg, pg)),
        "n": int(len(t)),
        "confusion": confusion_matrix(t, p, labels=LABELS).astype(int).tolist(),
    }
    return out


def fast_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """accuracy, macro_f1 and good_f1 exactly as :func:`classification_metrics` computes them, from one
    confusion matrix in numpy: for bootstrap loops (thousands of resamples), where scikit-learn's per-call
    checks cost ~100x more. Takes int arrays of grades 1..4, already validated."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = len(LABELS)
    cm = np.bincount((t - 1) * k + (p - 1), minlength=k * k).reshape(k, k)  # [gold, predicted]
    tp, gold_n, pred_n = np.diag(cm), cm.sum(1), cm.sum(0)
    denom = gold_n + pred_n
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    g = GOOD_MIN_GRADE - 1
    g_tp, g_gold, g_pred = cm[g:, g:].sum(), cm[g:].sum(), cm[:, g:].sum()
    return {"accuracy": float(tp.sum() / len(t)), "macro_f1": float(f1.mean()),
            "good_f1": float(2 * g_tp / (g_gold + g_pred)) if g_gold + g_pred else 0.0}


def per_query_auc(y_true, score, query_ids) -> dict:
    """{query id: ROC AUC of ``score`` for Good (L3/L4) within that query's pairs}, for the queries that have both
    Good and not-Good pairs (the AUC of the others is undefined and left out)."""
    good = _grades(y_true, "y_true") >= GOOD_MIN_GRADE
    score, qids = np.asarray(score, dtype=float), np.asarray(query_ids)
    if not len(good) == len(score) == len(qids):
        raise ValueError(f"y_true, score and query_ids differ in length: {len(good)}, {len(score)}, {len(qids)}")
    out = {}
    for q in dict.fromkeys(qids.tolist()):
        m = qids == q
        if 0 < good[m].sum() < m.sum():
            out[q] = float(roc_auc_score(good[m], score[m]))
    return out


def good_auc(y_true, p_good, query_ids) -> dict:
    """How well a score (e.g. P(L3)+P(L4)) ranks Good pairs: ROC AUC over all pairs, and the mean
    AUC within one query's candidates (over queries that have both Good and not-Good pairs), and how
    many such queries there are.

    The two differ when a model knows which queries have mostly relevant candidates (pooled
    AUC) but cannot tell the candidates of one query apart (per-query AUC).
    """
    per_query = list(per_query_auc(y_true, p_good, query_ids).values())
    good, score = _grades(y_true, "y_true") >= GOOD_MIN_GRADE, np.asarray(p_good, dtype=float)
    out = {"x_auc_queries": len(per_query)}  # an AUC that is undefined (one class only) is left out, not NaN
    if 0 < good.sum() < len(good):
        out["x_good_auc"] = float(roc_auc_score(good, score))
    if per_query:
        out["x_good_auc_per_query"] = float(np.mean(per_query))
    return out


# ---------------------------------------------------------------- retrieval

def _scores(qid: str, ranking) -> dict[str, float]:
    """One query's run as {str product_id: score}, with no ties left.

    ir_measures routes measures to different backends that break score ties
    differently (pytrec_eval: doc id descending; msmarco, used for RR: ascending), so
    a tied run could get an RR and an nDCG from two different orderings. We therefore
    turn everything into a strict order first and score it -rank.
    """
    if isinstance(ranking, Mapping):
        items = list(ranking.items())
        for pid, s in items:
            if not isinstance(s, (int, float, np.number)) or not math.isfinite(float(s)):
                raise ValueError(f"run[{qid!r}][{pid!r}]: score must be a finite number, got {s!r}")
        # Stable sort: tied scores keep the order they were given in.
        ranked = [pid for pid, _ in sorted(items, key=lambda kv: -float(kv[1]))]
    elif isinstance(ranking, Sequence) and not isinstance(ranking, (str, bytes)):
        ranked = list(ranking)
    else:
        raise ValueError(f"run[{qid!r}]: expected a ranked list or a {{product_id: score}} dict")
    ids = [str(pid) for pid in ranked]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"run[{qid!r}]: product {dup!r} is ranked more than once")
    return {pid: float(-rank) for rank, pid in enumerate(ids, start=1)}


def retrieval_metrics(run, qrels, ks=(10, 100)) -> dict:
    """HitRate@K, nDCG@K and MRR@K, averaged over queries that have a Good judgment.

    run: {query_id: [product_id, ...] best first} or {query_id: {product_id: score}}.
    qrels: {query_id: {product_id: grade 1..4}}.

    - ``hitrate@K``: share of the query's Good (grade >= 3) items found in the top K
      (ir_measures ``R(rel=3)@K``).
    - ``ndcg@K``: nDCG with gain = grade - 1 (L1 gives nothing), log2 discount.
    - ``mrr@K``: 1 / rank of the first Good item in the top K, else 0 (``RR(rel=3)@K``).
    - ``n_queries``: how many queries were evaluated.

    Unjudged products count as not relevant. Queries without any Good judgment are
    left out (their recall is 0/0). A query in qrels but missing from the run is scored
    as an empty ranking (0 on every metric), never skipped, so a system cannot gain by
    not answering. Run queries absent from qrels are ignored. Ids are compared as strings.
    """
    ks = [int(k) for k in ks]
    if not ks or any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive cutoffs, got {ks!r}")
    graded: dict[str, dict[str, int]] = {}
    for qid, judged in qrels.items():
        for pid, g in judged.items():
            if isinstance(g, bool) or g not in GRADES:
                raise ValueError(f"qrels[{qid!r}][{pid!r}]: grade must be an integer in 1..4, got {g!r}")
        graded[str(qid)] = {str(pid): int(g) for pid, g in judged.items()}
    evaluated = sorted(q for q, j in graded.items() if any(g >= GOOD_MIN_GRADE for g in j.values()))
    out: dict = {}
    if not evaluated:
        return {**{f"{m}@{k}": 0.0 for k in ks for m in ("hitrate", "ndcg", "mrr")}, "n_queries": 0}
    runs = {str(q): r for q, r in run.items()}
    scored = {q: _scores(q, runs[q]) for q in evaluated if q in runs}
    scored = {q: s for q, s in scored.items() if s}  # an empty ranking is the same as a missing one
    base = {q: graded[q] for q in evaluated}
    gains = {q: {pid: g - 1 for pid, g in j.items()} for q, j in base.items()}

    def per_query(measures, qr) -> dict:
        # Start every query at 0 and overwrite with what ir_measures reports: backends
        # differ on whether queries missing from the run are reported at all.
        vals = {m: dict.fromkeys(evaluated, 0.0) for m in measures}
        for r in ir_measures.iter_calc(measures, qr, scored) if scored else ():
            if r.query_id in vals[r.measure]:
                vals[r.measure][r.query_id] = float(r.value)
        return vals

    hit_rr = per_query([R(rel=GOOD_MIN_GRADE) @ k for k in ks] + [RR(rel=GOOD_MIN_GRADE) @ k for k in ks], base)
    ndcg = per_query([nDCG @ k for k in ks], gains)
    for k in ks:
        out[f"hitrate@{k}"] = float(np.mean(list(hit_rr[R(rel=GOOD_MIN_GRADE) @ k].values())))
        out[f"ndcg@{k}"] = float(np.mean(list(ndcg[nDCG @ k].values())))
        out[f"mrr@{k}"] = float(np.mean(list(hit_rr[RR(rel=GOOD_MIN_GRADE) @ k].values())))
    out["n_queries"] = len(evaluated)
    return out


def retrieval_metrics_per_query(run, qrels, ks=(10, 100)) -> dict[str, dict[str, float]]:
    """{"hitrate@K" | "ndcg@K" | "mrr@K": {query id: value}} for every query :func:`retrieval_metrics` evaluates
    (those with a Good judgment), each computed by :func:`retrieval_metrics` on that query alone, so the mean
    over queries equals its macro average. For query-bootstrap intervals."""
    runs, judged = _by_str(run), _by_str(qrels)
    out: dict[str, dict[str, float]] = {}
    for qid in _good_items(qrels):
        one = retrieval_metrics({qid: runs.get(qid, [])}, {qid: judged[qid]}, ks)
        for name, value in one.items():
            if name != "n_queries":
                out.setdefault(name, {})[qid] = value
    return out


def _by_str(mapping) -> dict:
    return {str(q): v for q, v in mapping.items()}


def _good_items(qrels) -> dict[str, set[str]]:
    """{query id: its Good (grade >= 3) product ids} for the queries with at least one; grades checked as in
    :func:`retrieval_metrics`."""
    out = {}
    for qid, judged in qrels.items():
        for pid, g in judged.items():
            if isinstance(g, bool) or g not in GRADES:
                raise ValueError(f"qrels[{qid!r}][{pid!r}]: grade must be an integer in 1..4, got {g!r}")
        good = {str(p) for p, g in judged.items() if g >= GOOD_MIN_GRADE}
        if good:
            out[str(qid)] = good
    return out


def _top(runs: dict, qid: str, k: int) -> list[str]:
    """The query's top k product ids from ``runs`` (string keys; a missing query has none)."""
    ranked = _scores(qid, runs.get(qid, []))  # {id: -rank}, duplicates rejected
    return sorted(ranked, key=lambda pid: -ranked[pid])[:k]


def _check_k(k) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be a positive cutoff, got {k!r}")
    return int(k)


def added_recall_per_query(run, bm25_run, qrels, k: int) -> dict[str, float]:
    """{query id: added recall@k} for every query with a Good judgment.

    Added recall@K of a run against the lexical run, for one query with Good (grade >= 3) set G:
    |G & top_K(run) - top_K(bm25_run)| / |G| -- the share of ALL the query's Good items that the run finds in
    its top K and BM25's top K misses. Runs are as in :func:`retrieval_metrics` ({query: ranked ids} or
    {query: {id: score}}); a query missing from a run has an empty ranking. With lost recall (the Good items
    BM25's top K finds and the run's top K drops), hitrate@K(run) - hitrate@K(bm25) = added - lost."""
    k, runs, lexical_runs = _check_k(k), _by_str(run), _by_str(bm25_run)
    out = {}
    for qid, good in _good_items(qrels).items():
        found, lexical = set(_top(runs, qid, k)), set(_top(lexical_runs, qid, k))
        out[qid] = len(good & (found - lexical)) / len(good)
    return out


def added_recall(run, bm25_run, qrels, k: int) -> float:
    """Mean over queries with a Good judgment of :func:`added_recall_per_query` (0.0 when there is none)."""
    values = list(added_recall_per_query(run, bm25_run, qrels, k).values())
    return float(np.mean(values)) if values else 0.0


def lost_recall_per_query(run, bm25_run, qrels, k: int) -> dict[str, float]:
    """{query id: |G & top_K(bm25_run) - top_K(run)| / |G|}: the Good items the lexical top K finds and the run's
    top K does not (the other side of :func:`added_recall_per_query`)."""
    return added_recall_per_query(bm25_run, run, qrels, k)


def lost_recall(run, bm25_run, qrels, k: int) -> float:
    values = list(lost_recall_per_query(run, bm25_run, qrels, k).values())
    return float(np.mean(values)) if values else 0.0


def bm25_overlap_per_query(run, bm25_run, k: int) -> dict[str, float]:
    """{query id: |top_K(run) & top_K(bm25_run)| / |top_K(run)|} for every query of ``run`` that retrieved
    anything, judged or not (the share of the run's top K that BM25's top K also returns; a run shorter than K
    divides by its own length)."""
    k, runs, lexical_runs = _check_k(k), _by_str(run), _by_str(bm25_run)
    out = {}
    for qid in runs:
        top = _top(runs, qid, k)
        if top:
            out[qid] = len(set(top) & set(_top(lexical_runs, qid, k))) / len(top)
    return out


def bm25_overlap(run, bm25_run, k: int) -> float:
    """Mean of :func:`bm25_overlap_per_query` (0.0 when no query retrieved anything)."""
    values = list(bm25_overlap_per_query(run, bm25_run, k).values())
    return float(np.mean(values)) if values else 0.0


# ---------------------------------------------------------------- results file

def _check(doc, path) -> dict:
    def bad(field: str, msg: str):
        raise DataError(path, None, field, msg)

    if not isinstance(doc, dict):
        bad("<root>", "expected a JSON object")
    if doc.get("task") not in TASKS:
        bad("task", f"must be one of {TASKS}, got {doc.get('task')!r}")
    for key in ("dataset", "split"):
        if not isinstance(doc.get(key), str):
            bad(key, f"must be a string, got {doc.get(key)!r}")
    rows = doc.get("rows")
    if not isinstance(rows, list):
        bad("rows", "must be a list of objects")
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("system"), str):
            bad(f"{where}.system", "every row needs a string 'system'")
        for key, val in row.items():
            if key == "system" or key.startswith("x_"):  # x_* is free-form by contract
                continue
            f = f"{where}.{key}"
            if doc["task"] == "relevance" and key not in RELEVANCE_KEYS:
                bad(f, f"not a relevance metric (allowed: {sorted(RELEVANCE_KEYS)} or x_*)")
            if key == "confusion":
                ok = (isinstance(val, list) and len(val) == 4 and all(
                    isinstance(r, list) and len(r) == 4 and all(
                        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in r) for r in val))
                if not ok:
                    bad(f, "must be a 4x4 list of non-negative integers")
            elif isinstance(val, bool) or not isinstance(val, (int, float)):
                bad(f, f"must be a number, got {val!r}")
            elif isinstance(val, float) and not 0.0 <= val <= 1.0:  # also rejects NaN
                bad(f, f"must lie in [0, 1], got {val!r}")
            elif isinstance(val, int) and val < 0:
                bad(f, f"counts must be non-negative, got {val!r}")
    return doc


def write_metrics_json(path, task: str, dataset: str, split: str, rows: list[dict], **extra) -> Path:
    """Validate and write a results file; parent directories are created."""
    path = Path(path)
    doc = {"task": task, "dataset": dataset, "split": split,
           "rows": [{k: (float(v) if isinstance(v, np.floating) else int(v) if isinstance(v, np.integer) else v)
                     for k, v in row.items()} for row in rows], **extra}
    _check(doc, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


def read_metrics_json(path) -> dict:
    """Read and validate a results file written by :func:`write_metrics_json`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(path, None, "<root>", f"not valid JSON ({e})") from e
    return _check(doc, path)


# ---------------------------------------------------------------- tables

def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4f}"
    return str(v)


def format_table(rows: list[dict], columns: Sequence[str] | None = None, title: str | None = None) -> str:
    """A fixed-width pipe (markdown) table: system first, floats to 4 decimals, '-' if missing."""
    if columns is None:  # every metric seen, in first-seen order
        columns = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "system"]
    header = ["system", *columns]
    body = [[_cell(r.get(c)) for c in header] for r in rows]
    widths = [max(len(str(h)), *(len(line[i]) for line in body)) for i, h in enumerate(header)]

    def line(cells, numeric: bool) -> str:
        # System names left-aligned, numbers right-aligned so decimals line up.
        return "| " + " | ".join(c.ljust(w) if (i == 0 or not numeric) else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    lines = ([title, ""] if title else []) + [line(header, False), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [line(cells, True) for cells in body]
    return "\n".join(lines)


def print_table(rows: list[dict], columns: Sequence[str] | None = None, title: str | None = None) -> None:
    print(format_table(rows, columns, title))
