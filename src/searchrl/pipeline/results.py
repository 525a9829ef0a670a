"""The pipeline's results pages: relevance.md, retrieval.md and timing.md, from the report's own input.

``searchrl pipeline --set report.results_dir=docs/results`` (scripts/quickstart.sh does) writes them
after report.html, so the tables on the pages are the ones the run printed and the report shows.
"""

from __future__ import annotations

from pathlib import Path

from searchrl.eval.free_signals import warning_line
from searchrl.eval.results_page import ResultsPage
from searchrl.relevance.scoring.reasoning import REASONING_MEASURES, STEP_AGREEMENT

RELEVANCE = [("system", "system"), ("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("Good-F1", "good_f1"),
             ("per-query AUC", "x_good_auc_per_query"), ("F1 L1", "f1_L1"), ("F1 L2", "f1_L2"), ("F1 L3", "f1_L3"),
             ("F1 L4", "f1_L4")]
REASONING = [(heading, key) for key, heading in REASONING_MEASURES] + [
    ("format errors", "x_format_error_rate"), ("rule adherence", "x_rule_adherence"),
    ("grade not allowed", "x_hallucination_rate")]
STEPS = [(f"agreement: {step}", key) for key, step in STEP_AGREEMENT]


def _ci(row: dict, key: str) -> str:
    iv = (row.get("x_ci") or {}).get(key)
    return f"[{iv[0]:.3f}, {iv[1]:.3f}]" if iv else ""


def _relevance_page(doc: dict, command: str) -> ResultsPage:
    rel = doc["relevance"]
    page = ResultsPage("relevance", f"Relevance: {doc['dataset']['name'] if doc.get('dataset') else 'dataset'} "
                                    f"{rel['split']}", command)
    rows = [[r.get(k) for _, k in RELEVANCE] + [_ci(r, "macro_f1"), _ci(r, "x_good_auc_per_query")]
            for r in rel["rows"]]
    page.table([c for c, _ in RELEVANCE] + ["macro-F1 95% CI", "AUC 95% CI"], rows,
               caption="Every system on the evaluation split; intervals are query-bootstrap 95% intervals. "
                       "Per-query AUC: P(Good) ranking the Good (L3/L4) products of a query above the others.")
    decoded = [r for r in rel["rows"] if any(k in r for _, k in REASONING)]
    if decoded:
        page.table(["system"] + [c for c, _ in REASONING],
                   [[r["system"]] + [r.get(k) for _, k in REASONING] for r in decoded],
                   caption="Each trained stage's completions, decoded greedily under the completion grammar (a seeded "
                           "subset of the split; relevance/format/grammar.py). Parse rate: the "
                           "share the strict parser reads whole. Over the parsed ones: step agreement, the share of "
                           "step verdicts equal to the rule engine's (five steps pooled; per step below); "
                           "self-consistency, the share whose grade equals the one their own category and attribute "
                           "verdicts imply; discriminative hallucination, its complement. Older, looser: format "
                           "errors (no grade token or not five valid verdicts), rule adherence (the grade lies in the "
                           "set the verdicts allow) and grade not allowed (its complement).")
        page.table(["system"] + [c for c, _ in STEPS], [[r["system"]] + [r.get(k) for _, k in STEPS] for r in decoded],
                   caption="Step agreement per step: the share of parsed completions whose verdict at that step "
                           "equals the rule engine's.")
    for r in rel["rows"]:
        for failure in r.get("x_free_signal_failures") or []:
            page.text(f"**{warning_line(failure)}**")
    return page


def _retrieval_page(doc: dict, command: str) -> ResultsPage:
    ret = doc["retrieval"]
    page = ResultsPage("retrieval", f"Retrieval: {ret['split']} queries", command)
    columns = [c for c in ret["rows"][0] if c != "system" and not c.startswith("x_")] if ret["rows"] else []
    page.table(["system", *columns, "train seconds"],
               [[r["system"], *[r.get(c) for c in columns], r.get("x_train_seconds")] for r in ret["rows"]],
               caption="BM25, the zero-shot encoder, the trained encoders, and each dense route fused with BM25 "
                       "(hybrid: reciprocal-rank fusion), over the catalogue the stages trained on. added_recall@K: "
                       "the share of a query's Good items in the top K that BM25's top K misses.")
    return page


def _timing_page(doc: dict, command: str) -> ResultsPage:
    page = ResultsPage("timing", "Timing of the pipeline's stages", command)
    stages = doc.get("stages") or []

    def status(s):  # with the record's message: why a stage was skipped, failed or is running (the report)
        return f"{s['status']} ({s['message']})" if s.get("message") else s["status"]
    page.table(["stage", "status", "wall time"],
               [[s["name"], status(s), "" if s.get("wall_seconds") is None else f"{s['wall_seconds'] / 60:.1f} min"]
                for s in stages])
    page.text(f"Stages that ran: {sum(s.get('wall_seconds') or 0 for s in stages if s['status'] == 'ran') / 60:.1f} "
              "min in all.")
    return page


def write_results_pages(doc: dict, directory: str | Path) -> list[Path]:
    """Write the pages that ``doc`` (collect_report's output) has the sections for; returns their paths."""
    command = doc["run"].get("command") or "searchrl pipeline"
    wall = doc["run"].get("wall_seconds")
    pages = []
    if doc.get("relevance"):
        pages.append(_relevance_page(doc, command))
    if doc.get("retrieval") and doc["retrieval"].get("rows"):
        pages.append(_retrieval_page(doc, command))
    pages.append(_timing_page(doc, command))
    return [p.write(directory, wall) for p in pages]
