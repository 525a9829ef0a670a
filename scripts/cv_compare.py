"""Merge `searchrl eval relevance --cv` runs into one table: every system on the same folds, paired against one.

    python scripts/cv_compare.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--reference NAME] [--json PATH]

Each RUN_DIR holds a crossval.json (the same K, folds and pairs: relevance/crossval.py). The
baselines are taken from the first run. Prints per-query AUC of P(Good), Good-F1, macro-F1 and
accuracy with query-bootstrap 95% intervals, and each system's paired difference in per-query
AUC and Good-F1 against --reference (default: the first NAME).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from searchrl.eval.metrics import write_metrics_json
from searchrl.relevance.crossval import summarize


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


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    ap.add_argument("--reference")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    bad = [x for x in a.runs if "=" not in x]
    if bad:
        ap.error(f"expected NAME=RUN_DIR, got {bad}")
    runs = dict(x.split("=", 1) for x in a.runs)
    result = merge(runs)
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
