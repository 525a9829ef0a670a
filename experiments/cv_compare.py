"""Cross-validation runs merged into one table: every system on the same folds, paired against one of them.

    python -m experiments.cv_compare NAME=RUN_DIR [NAME=RUN_DIR ...] [--reference NAME] [--json PATH]
                                     [--stack NAME=SYSTEM+SYSTEM+...]

Each RUN_DIR holds a crossval.json (the same K, folds and pairs: eval/crossval.py). The baselines are taken
from the first run. Prints per-query AUC of P(Good), Good-F1, macro-F1 and accuracy with query-bootstrap 95%
intervals, and each system's paired difference in per-query AUC and Good-F1 against --reference (default:
the first NAME). The other CV experiments (default_model_cv, label_vs_cot_first, grade_mix_import) end with it.

--stack adds a row that combines systems' scores: a multinomial logistic regression over each one's score and
its within-query z-score, cross-fitted (crossval.cross_fitted_probs: fold f's pairs are predicted by a fit on
the other folds' pairs). It is a reference for how far combining the signals goes, not a deployable model: its
fit uses every other fold's test labels.

Simplifies: nothing is trained here; it reads finished runs. Wall time: seconds (2,000 bootstrap draws a cell).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from experiments.common import table, tables_markdown
from searchrl.eval.crossval import cross_fitted_probs, summarize, within_query_z
from searchrl.metrics.measures import write_metrics_json
from searchrl.metrics.stats import format_difference, format_interval


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


def compare(runs: dict[str, str], reference: str | None = None, stacks: dict[str, list[str]] | None = None
            ) -> tuple[list[dict], dict]:
    """(summarize's rows, the merged result) of the runs, with each stack added as a system."""
    result = merge(runs)
    for name, members in (stacks or {}).items():
        result["systems"][name] = stacked(result, members)
    return summarize(result, reference=reference or next(iter(runs))), result


def tables(rows: list[dict], reference: str) -> list[dict]:
    def level(r, m):
        ci = r.get("x_ci", {})
        return format_interval([r[m], *ci[m]]) if m in r and m in ci else "-"

    def diff(r, key):
        return format_difference(r[key]) if key in r else "-"
    return [table(["system", "per-query AUC [95% CI]", "Good-F1 [95% CI]", "macro-F1 [95% CI]", "accuracy",
                   f"AUC: {reference} - system", f"Good-F1: {reference} - system"],
                  [[r["system"], level(r, "x_good_auc_per_query"), level(r, "good_f1"), level(r, "macro_f1"),
                    format(r["accuracy"], ".3f") if "accuracy" in r else "-", diff(r, "x_auc_diff_vs_ref"),
                    diff(r, "x_good_f1_diff_vs_ref")] for r in rows])]


def markdown(rows: list[dict], result: dict, reference: str) -> str:
    scope = f"{result['k']}-fold CV over {rows[0]['x_queries']} queries, {rows[0]['n']} pairs; seeds {result['seeds']}"
    return tables_markdown(tables(rows, reference), [scope])


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
    stacks = {}
    for spec in a.stack:
        name, _, members = spec.partition("=")
        if not members:
            ap.error(f"--stack: expected NAME=SYSTEM+SYSTEM, got {spec!r}")
        stacks[name] = members.split("+")
    reference = a.reference or next(iter(runs))
    rows, result = compare(runs, reference, stacks)
    print(markdown(rows, result, reference))
    if a.json:
        write_metrics_json(a.json, "relevance", "cv", f"cv{result['k']}", rows)
    return rows


if __name__ == "__main__":
    main()
