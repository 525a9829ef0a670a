"""Label-first vs CoT-first SFT (TaoSR1's order ablation) on cross-validation folds of Chorus.

    python -m experiments.label_vs_cot_first [--data runs/quickstart/data] [--folds 0,1]
        [--out runs/label_vs_cot_first] [--set KEY=VALUE ...] [--json PATH] [--md PATH]

Both orders train the default config (sft_chorus.yaml) with the CoT on every example (``cot_fraction=1``, which
cot_first needs), on the same folds of eval/crossval.py (`searchrl eval relevance --cv 5`, each fold in its own
process, the two orders side by side, one thread each). Label-first reads its grade from the first completion
position; cot-first's grade is decoded after its reasoning (crossval saves each fold's test_completions.jsonl),
an unreadable one counting as L1. Both orders decode every test pair under the completion grammar (``--decode``),
so both are measured on their reasoning too: parse rate, step agreement and self-consistency with query-bootstrap
intervals (for label-first held to its first-token grade; for cot-first to the grade it writes after its steps).
The table is experiments/cv_compare.py's, label-first the reference (its paired differences are label-first minus
each system), then the reasoning table. ``--set freeze_layers=4`` trains both orders with the top two blocks, so that the CoT can be
learned.

Simplifies: one seed; the order is the only change. Wall time: about 25 min a fold on 2 cores (fold 0: 19 min in
one run, 48 min in another beside three other runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.common import crossval_lanes, run_main, searchrl_cli, table, tables_markdown, write_report
from experiments.cv_compare import compare, markdown
from experiments.reasoning_cv import MEASURES, cell
from searchrl.metrics.stats import format_difference, verdict

ORDERS = ("label_first", "cot_first")


def decoded_stats(run: Path) -> dict:
    """How many of cot-first's decoded test completions there are, and the share that does not parse."""
    rows = [json.loads(x) for f in sorted(run.glob("fold*/seed*/test_completions.jsonl")) for x in f.open()]
    return {"completions": len(rows), "format_errors": 1 - sum(r["parsed"] for r in rows) / max(len(rows), 1)}


def reasoning_table(rows: list[dict]) -> dict:
    """Each order's reasoning measures (of its decoded test completions) with their intervals."""
    return table(["order", *[name for _, name in MEASURES]],
                 [[r["system"], *[cell(r, k) for k, _ in MEASURES]] for r in rows if r["system"] in ORDERS],
                 "The reasoning of each order's decoded test completions (query-bootstrap 95% intervals)")


def reasons(report: dict) -> list[str]:
    """Why the orders differ, in their own measures: how closely each grade follows its steps, and how often
    those steps agree with the rules."""
    by = {r["system"]: r for r in report["rows"]}
    if not all(by.get(o, {}).get("x_self_consistency") is not None for o in ORDERS):
        return []
    lab, cot = by["label_first"], by["cot_first"]
    return [(f"CoT-first writes its grade after its steps and follows them (self-consistency "
            f"{cot['x_self_consistency']:.3f}, label-first {lab['x_self_consistency']:.3f}); those steps agree "
            f"with the rule engine's on {cot['x_step_agreement']:.3f} of verdicts, so its grade inherits their "
            f"errors (accuracy {cot.get('accuracy', float('nan')):.3f}, label-first "
            f"{lab.get('accuracy', float('nan')):.3f}): TaoSR1's error accumulation, measured.")]


def glance(report: dict) -> list[dict]:
    """The claims page's row: label-first minus CoT-first in per-query AUC and Good-F1."""
    cot = next(r for r in report["rows"] if r["system"] == "cot_first")
    auc, f1 = cot["x_auc_diff_vs_ref"], cot["x_good_f1_diff_vs_ref"]
    d = report["cot_first_decoded"]
    return [{"claim": "label-first beats CoT-first (label-first - CoT-first)",
             "difference": f"per-query AUC {format_difference(auc)}; Good-F1 {format_difference(f1)}",
             "where": f"label_vs_cot_first, CV fold(s) {report['folds']}, {cot['x_queries']} queries",
             "verdict": verdict(auc, higher="holds", lower="reversed")
             + f" (CoT-first: {d['completions']} completions, parse rate {1 - d['format_errors']:.3f}, "
               f"self-consistency {cot.get('x_self_consistency') or 0:.3f})"}]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/quickstart/data", help="prepared Chorus (prepared here when missing)")
    ap.add_argument("--folds", default="0,1")
    ap.add_argument("--out", default="runs/label_vs_cot_first")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an SFT override for both orders")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args(argv)
    folds, out = [int(f) for f in a.folds.split(",") if f.strip()], Path(a.out)
    if not Path(a.data).exists():
        searchrl_cli("data", "prepare", "chorus", "--out", a.data, log=out / "data.log")
    crossval_lanes(a.data, out, [(order, folds, [f"prompt.order={order}", "cot_fraction=1", *a.set])
                                 for order in ORDERS], decode=True)
    rows, result = compare({order: str(out / order) for order in ORDERS})
    report = {"rows": rows, "folds": folds, "cot_first_decoded": decoded_stats(out / "cot_first")}
    md = markdown(rows, result, "label_first") + "\n\n" + tables_markdown([reasoning_table(rows)])
    return write_report(report, md, a.json, a.md)


if __name__ == "__main__":
    run_main(main)
