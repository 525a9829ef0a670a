"""Merge `searchrl eval relevance --cv` runs into one table: every system on the same folds, paired against one.

    python scripts/cv_compare.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--reference NAME] [--json PATH]
                                 [--stack NAME=SYSTEM+SYSTEM+...]

Each RUN_DIR holds a crossval.json (the same K, folds and pairs: relevance/crossval.py). The
baselines are taken from the first run. Prints per-query AUC of P(Good), Good-F1, macro-F1 and
accuracy with query-bootstrap 95% intervals, and each system's paired difference in per-query
AUC and Good-F1 against --reference (default: the first NAME).

--stack adds a row that combines systems' scores: a multinomial logistic regression over each one's
score and its within-query z-score, cross-fitted (fold f's pairs are predicted by a fit on the other
folds' pairs). It is a reference for how far combining the signals goes, not a deployable model: its
fit uses every other fold's test labels.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from searchrl.metrics.measures import write_metrics_json
from searchrl.eval.crossval import summarize


def merge(runs: dict[str, str]) -> dict:
    merged = None
    for name, d in runs.items():
        path = Path(d) / "crossval.json"
        if not path.exists():
            raise SystemExit(f"error: {path}: no such file (run `searchrl eval relevance --cv K --out {d}` first)")
        r = json.loads(path.read_text())
        if merged is None:
            merged = {**r, "systems": {k: v for k, v in r["systems"].items() if k != "model"}}
        elif (r["query_id"], r["grade"]) != (merged["query_id"], merged["grade"]):
            raise SystemExit(f"{d}: other folds or pairs than the first run's")
        merged["systems"][name] = r["systems"]["model"]
    return merged


def within_query_z(x: np.ndarray, qids: np.ndarray) -> np.ndarray:
    """[N] ``x`` standardised within each query's pairs."""
    z = np.zeros_like(x)
    for q in np.unique(qids):
        m = qids == q
        z[m] = (x[m] - x[m].mean()) / (x[m].std() + 1e-9)
    return z


def cross_fitted_probs(features: np.ndarray, grade: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """[N, 4] grade probabilities of a 4-grade logistic regression, fold f's rows predicted by a fit on the others."""
    from sklearn.linear_model import LogisticRegression
    probs = np.zeros((len(grade), 4))
    for f in np.unique(fold):
        fit = LogisticRegression(max_iter=2000).fit(features[fold != f], grade[fold != f])
        probs[np.ix_(fold == f, fit.classes_ - 1)] = fit.predict_proba(features[fold == f])
    return probs


def stacked(result: dict, systems: list[str]) -> dict:
    """{"pred", "score"} of the cross-fitted stack of ``systems`` (their seeds averaged): see the docstring."""
    missing = [s for s in systems if s not in result["systems"]]
    if missing:
        raise SystemExit(f"--stack: no system {missing} (have {sorted(result['systems'])})")
    unscored = [s for s in systems if not (result["systems"][s]["score"] and result["systems"][s]["score"][0])]
    if unscored:
        raise SystemExit(f"--stack: {unscored} have no scores in crossval.json to stack")
    qids, fold = np.asarray(result["query_id"]), np.asarray(result["fold"])
    columns = []
    for name in systems:
        x = np.asarray(result["systems"][name]["score"], dtype=float).mean(0)  # [N]
        columns += [x, within_query_z(x, qids)]
    probs = cross_fitted_probs(np.stack(columns, 1), np.asarray(result["grade"]), fold)  # features [N, 2 * systems]
    return {"pred": [(probs.argmax(1) + 1).tolist()], "score": [probs[:, 2:].sum(1).tolist()]}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    ap.add_argument("--reference")
    ap.add_argument("--json")
    ap.add_argument("--stack", action="append", default=[], metavar="NAME=SYSTEM+SYSTEM",
                    help="add a cross-fitted stack of these systems' scores (repeatable)")
    a = ap.parse_args(argv)
    bad = [x for x in a.runs if "=" not in x]
    if bad:
        ap.error(f"expected NAME=RUN_DIR, got {bad}")
    runs = dict(x.split("=", 1) for x in a.runs)
    result = merge(runs)
    for spec in a.stack:
        name, _, members = spec.partition("=")
        if not members:
            ap.error(f"--stack: expected NAME=SYSTEM+SYSTEM, got {spec!r}")
        result["systems"][name] = stacked(result, members.split("+"))
    rows = summarize(result, reference=a.reference or next(iter(runs)))
    print(f"| system | per-query AUC [95% CI] | Good-F1 [95% CI] | macro-F1 [95% CI] | accuracy | "
          f"AUC: {a.reference or next(iter(runs))} - system | Good-F1: {a.reference or next(iter(runs))} - system |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ci = r.get("x_ci", {})

        def cell(m, r=r, ci=ci):
            return f"{r[m]:.3f} [{ci[m][0]:.3f}, {ci[m][1]:.3f}]" if m in r and m in ci else "-"

        def diff(key, r=r):
            return "{:+.3f} [{:+.3f}, {:+.3f}]".format(*r[key]) if key in r else "-"
        accuracy = format(r["accuracy"], ".3f") if "accuracy" in r else "-"
        print(f"| {r['system']} | {cell('x_good_auc_per_query')} | {cell('good_f1')} | {cell('macro_f1')} | "
              f"{accuracy} | {diff('x_auc_diff_vs_ref')} | {diff('x_good_f1_diff_vs_ref')} |")
    print(f"\n{result['k']}-fold CV over {rows[0]['x_queries']} queries, {rows[0]['n']} pairs; seeds {result['seeds']}")
    if a.json:
        write_metrics_json(a.json, "relevance", "cv", f"cv{result['k']}", rows)
    return rows


if __name__ == "__main__":
    main()
