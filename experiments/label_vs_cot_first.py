"""Label-first vs CoT-first SFT (TaoSR1's order ablation) on cross-validation folds of Chorus.

    python -m experiments.label_vs_cot_first [--data runs/quickstart/data] [--folds 0,1]
        [--out runs/label_vs_cot_first] [--set KEY=VALUE ...] [--json PATH] [--md PATH]

Both orders train the default config (sft_chorus.yaml) with the CoT on every example (``cot_fraction=1``, which
cot_first needs), on the same folds of eval/crossval.py (`searchrl eval relevance --cv 5`, each fold in its own
process, the two orders side by side, one thread each). Label-first reads its grade from the first completion
position; cot-first's grade is decoded after its reasoning (crossval saves each fold's test_completions.jsonl),
an unreadable one counting as L1. The table is experiments/cv_compare.py's, label-first the reference (its
paired differences are label-first minus each system), plus the format errors and rule adherence of cot-first's
decoded completions. ``--set freeze_layers=4`` trains both orders with the top two blocks, so that the CoT can be
learned.

Simplifies: one seed; the order is the only change. Wall time: about 25 min a fold on 2 cores (fold 0: 19 min in
one run, 48 min in another beside three other runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.common import crossval_lanes, run_main, searchrl_cli, write_report
from experiments.cv_compare import compare, markdown
from searchrl.metrics.stats import format_difference, verdict

ORDERS = ("label_first", "cot_first")


def decoded_stats(run: Path) -> dict:
    """Format errors and rule adherence (of the parsed) of cot-first's decoded test completions."""
    rows = [json.loads(x) for f in sorted(run.glob("fold*/seed*/test_completions.jsonl")) for x in f.open()]
    parsed = [r for r in rows if r["parsed"]]
    return {"completions": len(rows), "format_errors": 1 - len(parsed) / max(len(rows), 1),
            # crossval writes self_consistent (the strict reading); files of older runs have consistent
            "rule_adherence": sum(r.get("self_consistent", r.get("consistent", False)) for r in parsed)
            / max(len(parsed), 1)}


def glance(report: dict) -> list[dict]:
    """The claims page's row: label-first minus CoT-first in per-query AUC and Good-F1."""
    cot = next(r for r in report["rows"] if r["system"] == "cot_first")
    auc, f1 = cot["x_auc_diff_vs_ref"], cot["x_good_f1_diff_vs_ref"]
    d = report["cot_first_decoded"]
    return [{"claim": "label-first beats CoT-first (label-first - CoT-first)",
             "difference": f"per-query AUC {format_difference(auc)}; Good-F1 {format_difference(f1)}",
             "where": f"label_vs_cot_first, CV fold(s) {report['folds']}, {cot['x_queries']} queries",
             "verdict": verdict(auc, higher="holds", lower="reversed")
             + f" (CoT-first format errors {d['format_errors']:.1%} of {d['completions']})"}]


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
                                 for order in ORDERS])
    rows, result = compare({order: str(out / order) for order in ORDERS})
    report = {"rows": rows, "folds": folds, "cot_first_decoded": decoded_stats(out / "cot_first")}
    d = report["cot_first_decoded"]
    md = markdown(rows, result, "label_first") + (
        f"\n\ncot_first decoded completions: {d['completions']}; format errors {d['format_errors']:.3f}; "
        f"rule adherence {d['rule_adherence']:.3f} (of the parsed)")
    return write_report(report, md, a.json, a.md)


if __name__ == "__main__":
    run_main(main)
