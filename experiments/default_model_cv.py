"""The default relevance model by 5-fold cross-validation over every query, with and without its rule teacher.

    python -m experiments.default_model_cv --data runs/quickstart/data [--out runs/default_model_cv]
        [--default-only] [--json PATH] [--md PATH]

Trains the default (configs/sft_chorus.yaml) and the default without the rule teacher (``cot_fraction=0``: grade
tokens only, no rule-written CoT) on the folds of eval/crossval.py, beside the baselines on the same folds (BM25
thresholds, lexical logistic regression, MiniLM cosine, the rules), and tables them with experiments/cv_compare.py
(per-query AUC, Good-F1, macro-F1, accuracy with query-bootstrap intervals, paired against the default). Each
fold trains in its own process; the two models run side by side, one thread each (``--default-only``: the
default alone, two folds side by side). Finished folds are reused.

Simplifies: one seed; the folds are of queries, not balanced by grade. Wall time: about 8 min a fold and model on
one thread, ~40 min for both models on 2 cores; the default alone 32 min.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.common import crossval_lanes, run_main, write_report
from experiments.cv_compare import compare, markdown

MODELS = {"default": [], "without_rule_teacher": ["cot_fraction=0"]}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="prepared dataset (e.g. runs/quickstart/data)")
    ap.add_argument("--out", default="runs/default_model_cv")
    ap.add_argument("--default-only", action="store_true", help="the default model alone, two folds side by side")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.default_only:
        crossval_lanes(a.data, out, [("default", [0, 2, 4], []), ("default", [1, 3], [])])
        runs = {"default": str(out / "default")}
    else:
        crossval_lanes(a.data, out, [(name, [0, 1, 2, 3, 4], sets) for name, sets in MODELS.items()])
        runs = {name: str(out / name) for name in MODELS}
    rows, result = compare(runs)
    write_report({"rows": rows}, markdown(rows, result, "default"), a.json, a.md)
    return rows


if __name__ == "__main__":
    run_main(main)
