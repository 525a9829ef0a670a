"""The paired contrasts, stuck-prompt rows and tables of experiments/relevance_rl_stages.py (its report in, tables
out: the same tables for its Markdown and for the claims page)."""

from __future__ import annotations

import numpy as np

from experiments.common import table, tables_markdown
from searchrl.eval.crossval import per_query_auc_matrix
from searchrl.metrics.measures import fast_scores
from searchrl.metrics.stats import (
    format_difference,
    format_interval,
    paired_bootstrap,
    paired_metric_bootstrap,
    query_bootstrap,
    verdict,
)

CONTRASTS = [  # (claim, better, worse): the paired difference better - worse, its verdict
    ("DPO > SFT", "dpo", "sft"), ("GRPO > DPO", "grpo", "dpo"), ("GRPO > SFT", "grpo", "sft"),
    ("dynamic sampling helps", "grpo", "grpo_no_dynamic_sampling"),
    ("class balance helps", "grpo", "grpo_no_class_balance"),
    ("guided replay helps", "grpo_replay", "grpo"),
    ("SFT on all labels > SFT on half", "sft_all", "sft"), ("GRPO on the other half ~ SFT on all", "grpo", "sft_all"),
]


def contrasts(result: dict, n_boot: int = 2000) -> list[dict]:
    """Each claim's paired difference (better - worse) in macro-F1, Good-F1 and per-query AUC, with a verdict."""
    gold, qids = np.asarray(result["grade"]), np.asarray(result["query_id"])
    queries = sorted(set(qids.tolist()))
    systems, rows = result["systems"], []

    def pooled(preds, metric):
        return lambda r: float(np.mean([fast_scores(gold[r], p[r])[metric] for p in preds]))

    def auc_by_query(scores):  # [Q]: the seeds' per-query AUC averaged (NaN for a query with one grade class)
        m = per_query_auc_matrix(scores, gold, qids, queries)  # [S, Q]
        defined = ~np.isnan(m)
        return np.where(defined.any(0), np.where(defined, m, 0).sum(0) / np.maximum(defined.sum(0), 1), np.nan)
    for claim, better, worse in CONTRASTS:
        if better not in systems or worse not in systems:
            continue
        b, w = (np.asarray(systems[x]["pred"]) for x in (better, worse))
        row = {"claim": claim, "better": better, "worse": worse}
        for metric in ("macro_f1", "good_f1"):
            d = paired_metric_bootstrap(pooled(b, metric), pooled(w, metric), qids, n_boot=n_boot)
            row[metric] = [d.mean, d.lo, d.hi]
        d = paired_bootstrap(auc_by_query(np.asarray(systems[better]["score"])),
                             auc_by_query(np.asarray(systems[worse]["score"])), n_boot=n_boot)
        row["auc"] = [d.mean, d.lo, d.hi]
        row["verdict"] = verdict(row["macro_f1"], higher="holds", lower="reversed") + " (macro-F1)"
        rows.append(row)
    return rows


def stuck_rows(result: dict, n_boot: int = 2000) -> list[dict]:
    """Accuracy on the stuck RL prompts per system (query-bootstrap interval), and replay's paired gain there."""
    stuck, rows = result["stuck"], []
    for name, s in stuck.items():
        right, groups = np.asarray(s["right"], dtype=float), np.asarray(s["query_id"])
        if not len(right):
            continue
        iv = query_bootstrap(metric=lambda r, x=right: float(x[r].mean()), groups=groups, n_boot=n_boot)
        rows.append({"system": name, "n": len(right), "accuracy": [iv.mean, iv.lo, iv.hi]})
    if {"grpo", "grpo_replay"} <= set(stuck) and stuck["grpo"]["right"]:
        a, b = (np.asarray(stuck[x]["right"], dtype=float) for x in ("grpo_replay", "grpo"))
        d = paired_metric_bootstrap(lambda r: float(a[r].mean()), lambda r: float(b[r].mean()),
                                    np.asarray(stuck["grpo"]["query_id"]), n_boot=n_boot)
        rows.append({"system": "grpo_replay - grpo", "n": len(a), "accuracy": [d.mean, d.lo, d.hi],
                     "verdict": verdict(d, higher="holds", lower="reversed")})
    return rows


def _level(r: dict, m: str) -> str:
    return format_interval([r[m], *r["x_ci"][m]]) if m in r.get("x_ci", {}) else "-"


def metric_tables(rows: list[dict], claims: list[dict], stab: dict, caption: str = "") -> list[dict]:
    """The systems' table (metrics with intervals; train-reward variance where logged) and the claims' table."""
    systems = []
    for r in rows:
        logged = [x["reward_var"] for x in stab.get(r["system"], []) if not np.isnan(x["reward_var"])]
        var = f"{np.mean(logged):.4f}" if logged else "-"  # no train reward: SFT, DPO, or under 2 steps
        systems.append([r["system"], _level(r, "macro_f1"), _level(r, "good_f1"), f"{r['accuracy']:.3f}",
                        _level(r, "x_good_auc_per_query"), var])
    return [table(["system", "macro-F1 [95% CI]", "Good-F1 [95% CI]", "accuracy", "per-query AUC [95% CI]",
                   "train reward var"], systems, caption),
            table(["claim", "macro-F1 difference [95% CI]", "Good-F1 difference", "per-query AUC difference",
                   "verdict"],
                  [[f"{c['claim']} ({c['better']} - {c['worse']})", format_difference(c["macro_f1"]),
                    format_difference(c["good_f1"]), format_difference(c["auc"]), c["verdict"]] for c in claims])]


def tables(report: dict) -> tuple[list[dict], list[str]]:
    """(tables, notes) of a relevance_rl_stages report."""
    stab, scope = report["stability"], report["scope"]
    out = metric_tables(report["rows"], report["claims"], stab)
    out.append(table(["on the stuck RL prompts (SFT's N samples all wrong)", "prompts", "accuracy [95% CI]"],
                     [[r["system"], r["n"], (format_difference(r["accuracy"]) if " - " in r["system"] else
                                            format_interval(r["accuracy"]))
                       + (f" ({r['verdict']})" if "verdict" in r else "")] for r in report["stuck"]]))
    notes = []
    replay = stab.get("grpo_replay", [])
    if replay:
        own = [x["guided_groups_acc"] for x in replay if "guided_groups_acc" in x]
        baseline = (f"those groups' own rollouts {np.nanmean(own):.3f}" if own and not np.isnan(own).all() else
                    "those groups' own rollouts: below 0.25 by selection, not logged by this run")
        notes.append(f"guided replay: guided rollouts are right {np.nanmean([x['guided_acc'] for x in replay]):.3f} "
                     f"of the time under the hint, on the groups that were below 0.25 without it ({baseline}); "
                     f"every unguided rollout {np.nanmean([x['train_acc'] for x in replay]):.3f}")
    pairs = report.get("dpo_pairs") or {}
    if pairs.get("pairs"):
        down, up = pairs["toward_not_good"], pairs["toward_good"]
        notes.append(f"DPO pairs (pass@N on the RL half): {down} of {pairs['pairs']} choose L1/L2 over a rejected "
                     f"L3/L4, {up} the reverse" + (": where the SFT model errs it grades too high, so DPO on the "
                                                   "grade token moves probability away from Good" if down > 2 * up
                                                   else ""))
    notes.append(f"{len(scope['folds'])} fold(s), {scope['queries']} test queries, {scope['pairs']} pairs, seeds "
                 f"{scope['seeds']}; wall time {report['wall_s'] / 60:.0f} min")
    rule = report.get("rule_graded") or {}
    if rule.get("rows"):
        out += metric_tables(rule["rows"], rule["claims"], {}, caption=(
            f"On held-out rule-graded queries (the rule engine's grades; {scope['rule_queries']} catalogue-written "
            f"queries, {scope['rule_pairs']} pairs, scored on each fold):"))
    return out, notes


def markdown(report: dict) -> str:
    t, notes = tables(report)
    return tables_markdown(t[:3], notes) + ("\n\n" + tables_markdown(t[3:]) if len(t) > 3 else "")


def glance(report: dict) -> list[dict]:
    """The claims page's one-line rows: each contrast on human labels and on the rule-graded queries, and
    replay on the stuck prompts."""
    scope = report["scope"]
    where = f"relevance_rl_stages, {len(scope['folds'])} fold(s), {scope['queries']} queries"
    rule = {c["claim"]: c for c in (report.get("rule_graded") or {}).get("claims", [])}
    rows = []
    for c in report["claims"]:
        r = rule.get(c["claim"])
        rows.append({"claim": f"{c['claim']} ({c['better']} - {c['worse']})",
                     "difference": f"macro-F1 {format_difference(c['macro_f1'])}"
                                   + (f"; rule-graded {format_difference(r['macro_f1'])}" if r else ""),
                     "where": where,
                     "verdict": f"human labels: {c['verdict']}" + (f"; rule-graded: {r['verdict']}" if r else "")})
    for s in report["stuck"]:
        if "verdict" in s:
            rows.append({"claim": "guided replay un-sticks (grpo_replay - grpo, accuracy on the stuck RL prompts)",
                         "difference": f"{format_difference(s['accuracy'])} on {s['n']} prompts", "where": where,
                         "verdict": s["verdict"]})
    return rows
