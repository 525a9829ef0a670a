"""The run report: one self-contained ``report.html`` that a person reads instead of JSON.

``render_report(report, out_path)`` turns a plain dict (the contract below, JSON-friendly so
a pipeline can also save it as ``report.json``) into a static page: CSS inline, figures
embedded as base64 PNG (:mod:`searchrl.eval.report_figures`), no JavaScript, no network,
opens from disk. The HTML comes from the Jinja2 template ``templates/report.html.j2`` with
autoescaping on, so query text, titles and chain-of-thought are always escaped.

``python -m searchrl.eval.report --example OUT.html`` renders an example from synthetic data.

Input contract. Every top-level key except ``run`` is one section; a section whose key is
absent or None renders a "not run" note. Inside a section, keys marked ``?`` are optional.
Metric rows are those of the results files (``write_metrics_json``), so they pass straight through::

    run:       {name, date?: str, command?: str, wall_seconds?: float}   # page header
               # total wall time = run.wall_seconds, else the sum of the stages' wall_seconds
    dataset:   {name, counts: {products, queries, judgments},
                grades_by_split: {split: {"1": n, "2": n, "3": n, "4": n}},
                provenance?: {description?, licence?, files: [{name, url?, sha256?}]}}
    stages:    [{name, status: "ran" | "reused" | "skipped" | "failed" | "running", message?: str,
                 wall_seconds?: float, config_diff?: [{key, default, value}]}]
    relevance: {split?: str,
                rows: [{system, accuracy?, macro_f1?, good_f1?, x_good_auc_per_query?,
                        f1_L1?..f1_L4?, confusion?: 4x4 ints (rows = human grade),
                        x_ci?: {metric: [lo, hi]},          # 95% interval, shown "0.810 [0.770, 0.850]"
                        # the reasoning of decoded completions (relevance/scoring/reasoning.py), a share
                        # or None each; rows with any of them form a second table, per step a third:
                        x_parse_rate?, x_step_agreement?, x_self_consistency?,
                        x_discriminative_hallucination_rate?, x_format_error_rate?, x_rule_adherence?,
                        x_hallucination_rate?, x_step_agreement_<step>? (query|item|category|attribute|verdict),
                        # checks the system failed against the free signals (eval/free_signals.py),
                        # shown in a warning box at the top of the section:
                        x_free_signal_failures?: [{measure, model: float, signal, signal_value: float}]}],
                human_ceiling?: {label, note?, <metric>: [lo, hi]},  # a range, e.g. macro_f1 [0.43, 0.47]
                confusion_system?: str,       # whose row's "confusion" is drawn (default: last row with one)
                calibration?: {system, p_good: [float], gold: [grade 1..4], bins?: int = 10}}
    tiering:   {betas: [float], macro_f1: [float], chosen_beta: float, system?: str, split?: str}
    curves:    {stage: [metrics.jsonl row: {step, <metric>: number, ...}]}
    retrieval: {split?: str, rows: [{system, hitrate@K?, ndcg@K?, mrr@10?, goodrate@10?,
                                     bm25_overlap@K?, added_recall@K?, quality@10?, x_train_seconds?}],
                curves?: {"ndcg" | "hitrate": {system: {K: value}}}}  # K may be a str (JSON keys)
    examples:  [{query, title, gold: grade, pred: grade, p_good: float, cot?: str, system?: str}]

Malformed input (an unknown stage status, a confusion matrix that is not 4x4, calibration
arrays of different lengths, ...) raises ValueError naming the field: a report that silently
drops a result is worse than none.

Simplifications, on purpose: one page, no interactivity (sorting, zoom); numbers are
printed to 3 decimals; learning curves are unsmoothed and the relevance figures are
drawn for one system each; intervals are shown as given, never computed here.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from searchrl.data.schema import GRADE_NAMES, GRADES
from searchrl.eval import report_figures as figures
from searchrl.eval.free_signals import warning_line
from searchrl.relevance.scoring.reasoning import REASONING_MEASURES, STEP_AGREEMENT

SECTIONS = {  # id -> heading, in page order
    "dataset": "Dataset", "stages": "Stages", "relevance": "Relevance", "tiering": "Tiering",
    "curves": "Learning curves", "retrieval": "Retrieval", "examples": "Examples",
}
STAGE_STATUSES = ("ran", "reused", "skipped", "failed", "running")  # running: the stage writing this report
RELEVANCE_TABLE = [  # (row key, column heading)
    ("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("good_f1", "Good-F1"),
    ("x_good_auc_per_query", "AUC P(Good) per query"),
    *[(f"f1_L{g}", f"F1 L{g}") for g in GRADES],
]
REASONING_TABLE = [*REASONING_MEASURES, ("x_format_error_rate", "format errors"),
                   ("x_rule_adherence", "rule adherence"), ("x_hallucination_rate", "grade not allowed")]
STEP_TABLE = STEP_AGREEMENT  # (row key, step)
# Retrieval columns print in this order when present; any other metric follows, first seen first.
RETRIEVAL_ORDER = ("hitrate", "ndcg", "mrr@10", "goodrate@10", "bm25_overlap", "added_recall", "quality@10",
                   "x_train_seconds")
RETRIEVAL_HEADINGS = {"x_train_seconds": "train seconds"}
# Metrics a learning curve shows first when present; others follow alphabetically.
CURVE_ORDER = ("loss", "reward_mean", "accuracy", "kl", "groups_filtered_frac", "guided_groups", "valid_macro_f1")


def _bad(field: str, msg: str):
    raise ValueError(f"report input: {field}: {msg}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt(v, digits: int = 3) -> str:
    """A table cell: floats to `digits` decimals, ints as they are, missing as an en dash."""
    if v is None:
        return "\u2013"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def fmt_seconds(s) -> str:
    """Wall time for people: 12.3 s, 4m 05s, 2h 03m."""
    if s is None:
        return "\u2013"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m {sec:02d}s" if m < 60 else f"{m // 60}h {m % 60:02d}m"


# ---------------------------------------------------------------- sections (input -> view)

def _dataset_view(d: Mapping) -> dict:
    for key in ("name", "counts", "grades_by_split"):
        if key not in d:
            _bad(f"dataset.{key}", "required")
    # Grade keys as strings whichever way they came (JSON gives "1", Python code may give 1).
    splits = {split: {str(g): int(n) for g, n in by_grade.items()} for split, by_grade in d["grades_by_split"].items()}
    rows = []
    for split, by_grade in splits.items():
        total = sum(by_grade.get(str(g), 0) for g in GRADES)
        rows.append([split, *[f"{by_grade.get(str(g), 0)} ({by_grade.get(str(g), 0) / max(total, 1):.0%})"
                              for g in GRADES], str(total)])
    prov = d.get("provenance") or {}
    return {"name": d["name"], "counts": [(k, d["counts"].get(k)) for k in ("products", "queries", "judgments")],
            "grade_columns": [GRADE_NAMES[g] for g in GRADES], "grade_rows": rows,
            "grade_figure": figures.grade_mix_figure(splits) if splits else None,
            "description": prov.get("description"), "licence": prov.get("licence"),
            "files": [{"name": f.get("name", "?"), "url": f.get("url"), "sha256": f.get("sha256")}
                      for f in prov.get("files", [])]}


def _stages_view(stages: Sequence[Mapping]) -> list[dict]:
    out = []
    for i, st in enumerate(stages):
        if not st.get("name"):
            _bad(f"stages[{i}].name", "required")
        if st.get("status") not in STAGE_STATUSES:
            _bad(f"stages[{i}].status", f"must be one of {STAGE_STATUSES}, got {st.get('status')!r}")
        diff = [{"key": c["key"], "default": _value(c.get("default")), "value": _value(c.get("value"))}
                for c in st.get("config_diff") or []]
        out.append({"name": st["name"], "status": st["status"], "message": st.get("message"),
                    "wall": fmt_seconds(st.get("wall_seconds")), "config_diff": diff})
    return out


def _value(v) -> str:
    # Config values print as JSON (null, true, [1, 2]) so a string "None" and a null differ.
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _interval_cell(row: Mapping, key: str) -> str:
    v = row.get(key)
    cell = fmt(float(v) if _is_number(v) else v)  # every relevance metric is a share: 1 prints 1.000
    ci = (row.get("x_ci") or {}).get(key)
    if ci is not None and key in row:
        if len(ci) != 2:
            _bad(f"relevance.rows[{row.get('system')!r}].x_ci.{key}", f"expected [lo, hi], got {ci!r}")
        cell += f" [{fmt(float(ci[0]))}, {fmt(float(ci[1]))}]"
    return cell


def _relevance_view(rel: Mapping) -> dict:
    rows = rel.get("rows") or []
    if not rows:
        _bad("relevance.rows", "needs at least one system row")
    columns = [(k, h) for k, h in RELEVANCE_TABLE if any(k in r for r in rows)]
    body = [{"system": r["system"], "cells": [_interval_cell(r, k) for k, _ in columns], "ceiling": False}
            for r in rows]
    ceiling = rel.get("human_ceiling")
    if ceiling:
        cells = []
        for k, _ in columns:
            span = ceiling.get(k)
            cells.append("\u2013" if span is None else f"{fmt(float(span[0]))}\u2013{fmt(float(span[1]))}")
        body.append({"system": ceiling.get("label", "human ceiling"), "cells": cells, "ceiling": True})

    conf_rows = [r for r in rows if r.get("confusion") is not None]
    wanted = rel.get("confusion_system")
    if wanted is not None:
        conf_rows = [r for r in conf_rows if r["system"] == wanted]
        if not conf_rows:
            _bad("relevance.confusion_system", f"no row of system {wanted!r} has a confusion matrix")
    confusion = None
    if conf_rows:
        row = conf_rows[-1]
        m = row["confusion"]
        if not (len(m) == 4 and all(len(r) == 4 and all(_is_number(c) for c in r) for r in m)):
            _bad(f"relevance.rows[{row['system']!r}].confusion", "must be a 4x4 matrix of counts")
        confusion = figures.confusion_figure(m, row["system"])

    calibration = None
    cal = rel.get("calibration")
    if cal:
        p, gold = list(cal["p_good"]), list(cal["gold"])
        if len(p) != len(gold) or not p:
            _bad("relevance.calibration", f"p_good and gold must be non-empty and of one length, "
                                          f"got {len(p)} and {len(gold)}")
        if any(not _is_number(x) or not 0 <= x <= 1 for x in p):
            _bad("relevance.calibration.p_good", "every P(Good) must be a number in [0, 1]")
        if any(g not in GRADES or isinstance(g, bool) for g in gold):
            _bad("relevance.calibration.gold", "grades must be integers 1..4")
        calibration = {"system": cal["system"], "n": len(p),
                       "figure": figures.reliability_figure(p, gold, cal["system"], int(cal.get("bins", 10)))}
    return {"split": rel.get("split"), "columns": [h for _, h in columns], "rows": body,
            "ceiling_note": (ceiling or {}).get("note"), "confusion": confusion, "calibration": calibration,
            "reasoning": _reasoning_view(rows), "warnings": _signal_warnings(rows)}


def _reasoning_view(rows: Sequence[Mapping]) -> dict | None:
    """The reasoning table and the per-step agreement table of the rows that have reasoning measures; None if
    no row has any."""
    decoded = [r for r in rows if any(k in r for k, _ in REASONING_TABLE + STEP_TABLE)]
    if not decoded:
        return None
    for r in decoded:
        for key, _ in REASONING_TABLE + STEP_TABLE:
            v = r.get(key)
            if v is not None and not (_is_number(v) and 0 <= v <= 1):
                _bad(f"relevance.rows[{r['system']!r}].{key}", f"must be a share in [0, 1] or null, got {v!r}")

    def table(spec):
        return {"columns": [h for _, h in spec],
                "rows": [{"system": r["system"], "cells": [fmt(None if r.get(k) is None else float(r[k]))
                                                           for k, _ in spec]} for r in decoded]}
    return {"measures": table(REASONING_TABLE), "steps": table(STEP_TABLE)}


def _signal_warnings(rows: Sequence[Mapping]) -> list[str]:
    """One line per free-signal check a row failed (its x_free_signal_failures)."""
    out = []
    for r in rows:
        for i, f in enumerate(r.get("x_free_signal_failures") or []):
            where = f"relevance.rows[{r['system']!r}].x_free_signal_failures[{i}]"
            if not (isinstance(f, Mapping) and isinstance(f.get("measure"), str) and isinstance(f.get("signal"), str)):
                _bad(where, f"needs the strings measure and signal, got {f!r}")
            if not (_is_number(f.get("model")) and _is_number(f.get("signal_value"))):
                _bad(where, "model and signal_value must be numbers")
            out.append(warning_line({"system": r["system"], **f}).removeprefix("warning: "))
    return out


def _tiering_view(t: Mapping) -> dict:
    betas, f1 = list(t["betas"]), list(t["macro_f1"])
    if len(betas) != len(f1) or not betas:
        _bad("tiering", f"betas and macro_f1 must be non-empty and of one length, got {len(betas)} and {len(f1)}")
    chosen = float(t["chosen_beta"])
    # The macro-F1 printed beside beta is the curve's value at the grid point nearest the chosen beta.
    at = min(range(len(betas)), key=lambda i: abs(betas[i] - chosen))
    return {"system": t.get("system"), "split": t.get("split"), "chosen_beta": fmt(chosen),
            "chosen_macro_f1": fmt(float(f1[at])), "figure": figures.beta_figure(betas, f1, chosen)}


def curve_metrics(rows: Sequence[Mapping]) -> list[str]:
    """The numeric metrics (not ``step``) that some row has: CURVE_ORDER first, then alphabetical."""
    present = {k for r in rows for k, v in r.items() if k != "step" and _is_number(v)}
    return [k for k in CURVE_ORDER if k in present] + sorted(present - set(CURVE_ORDER))


def _curves_view(curves: Mapping[str, Sequence[Mapping]]) -> list[dict]:
    out = []
    for stage, rows in curves.items():
        for i, r in enumerate(rows):
            if not _is_number(r.get("step")):
                _bad(f"curves.{stage}[{i}]", "every row needs a numeric 'step'")
        metrics = curve_metrics(rows)
        out.append({"stage": stage, "metrics": metrics, "n_rows": len(rows),
                    "figure": figures.stage_curves_figure(rows, metrics) if metrics else None})
    return out


def _retrieval_order(key: str) -> tuple:
    # "hitrate", "ndcg", "bm25_overlap", "added_recall" stand for their whole @K family, ordered by K; the rest
    # match exactly.
    name, _, k = key.partition("@")
    for rank, want in enumerate(RETRIEVAL_ORDER):
        if key == want or (name == want and k.isdigit()):
            return (rank, int(k) if k.isdigit() else 0)
    return (len(RETRIEVAL_ORDER), 0)


def _retrieval_view(ret: Mapping) -> dict:
    rows = ret.get("rows") or []
    seen = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "system" and k != "x_ci"]
    # sorted() is stable: metrics outside RETRIEVAL_ORDER keep their first-seen order at the end.
    columns = sorted(seen, key=_retrieval_order)
    table = {"columns": [RETRIEVAL_HEADINGS.get(c, c) for c in columns],
             "rows": [{"system": r["system"], "cells": [fmt(r.get(c), 1 if c == "x_train_seconds" else 3)
                                                       for c in columns]} for r in rows]}
    figure = None
    curves = ret.get("curves") or {}
    if any(curves.get(m) for m in ("ndcg", "hitrate")):
        by_int = {m: {s: {int(k): float(v) for k, v in ks.items()} for s, ks in (curves.get(m) or {}).items()}
                  for m in ("ndcg", "hitrate")}
        figure = figures.retrieval_curves_figure(by_int)
    return {"split": ret.get("split"), "table": table, "figure": figure}


def _examples_view(examples: Sequence[Mapping]) -> list[dict]:
    for i, e in enumerate(examples):
        for key in ("query", "title"):
            if not isinstance(e.get(key), str):
                _bad(f"examples[{i}].{key}", f"must be a string, got {e.get(key)!r}")
        if e.get("gold") not in GRADES or isinstance(e.get("gold"), bool):
            _bad(f"examples[{i}].gold", f"must be a grade 1..4, got {e.get('gold')!r}")
    groups = []
    for g in sorted(GRADES, reverse=True):  # Excellent first: the grade a reader checks first
        items = [{"query": e["query"], "title": e["title"], "gold": GRADE_NAMES[e["gold"]],
                  "pred": GRADE_NAMES.get(e.get("pred"), fmt(e.get("pred"))), "p_good": fmt(e.get("p_good")),
                  "agree": e.get("pred") == e["gold"], "cot": e.get("cot"), "system": e.get("system")}
                 for e in examples if e["gold"] == g]
        if items:
            groups.append({"grade": GRADE_NAMES[g], "pairs": items})
    return groups


VIEWS = {"dataset": _dataset_view, "stages": _stages_view, "relevance": _relevance_view,
         "tiering": _tiering_view, "curves": _curves_view, "retrieval": _retrieval_view,
         "examples": _examples_view}


# ---------------------------------------------------------------- rendering

def _environment() -> Environment:
    # StrictUndefined: a typo in the template fails the render instead of printing nothing.
    return Environment(loader=PackageLoader("searchrl.eval", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(report: Mapping) -> str:
    """The page as a string (see the module docstring for what `report` holds)."""
    run = report.get("run") or {}
    sections = {sid: (None if report.get(sid) is None else VIEWS[sid](report[sid])) for sid in SECTIONS}
    total = run.get("wall_seconds")
    if total is None and report.get("stages"):
        walls = [s["wall_seconds"] for s in report["stages"] if _is_number(s.get("wall_seconds"))]
        total = sum(walls) if walls else None
    return _environment().get_template("report.html.j2").render(
        run={"name": run.get("name", "searchrl run"), "date": run.get("date"), "command": run.get("command"),
             "wall": fmt_seconds(total)},
        headings=SECTIONS, sections=sections)


def render_report(report: Mapping, out_path: Path | str) -> Path:
    """Write report.html to out_path (parent directories created); the path written."""
    out = Path(out_path)
    html = render_html(report)  # rendered before opening the file, so a bad input leaves no half page
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m searchrl.eval.report", description=__doc__.split("\n")[0])
    parser.add_argument("--example", metavar="OUT.html", required=True,
                        help="render an example report from synthetic data to OUT.html")
    args = parser.parse_args(argv)
    from searchrl.eval.report_example import example_report
    print(render_report(example_report(), args.example))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
