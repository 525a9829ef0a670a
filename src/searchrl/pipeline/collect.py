"""The report's input, gathered from a pipeline run directory (eval/report.py renders it).

Reads what the stages wrote -- the dataset card, each ``stage.json``, the evaluation rows
and per-pair predictions, the tiering curve, every trainer's ``metrics.jsonl``, the
retrieval table -- and decodes a few test pairs per grade with the final relevance model so
the page shows its chain of thought. A stage that did not run leaves its section out, and
the page says "not run".
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np

from searchrl.data.prepare import counts
from searchrl.data.schema import GRADES, SPLITS, pair_products
from searchrl.pipeline.config import STAGES
from searchrl.pipeline.context import Context

# independent raters against Chorus's labels (DESIGN.md, "The human ceiling on Chorus")
CHORUS_CEILING = {"label": "human ceiling (second raters vs Chorus)", "macro_f1": [0.43, 0.47],
                  "good_f1": [0.85, 0.88], "accuracy": [0.60, 0.67],
                  "note": "a system above ~0.47 macro-F1 is fitting one set of raters"}
TRAINER_RUNS = {"sft": "sft", "dpo": "dpo", "grpo": "grpo", "retriever sft": "retriever/ret_sft",
                "retriever hardneg": "retriever/ret_hardneg", "retriever rgrpo": "retriever/ret_rgrpo"}


def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _dataset(ctx: Context) -> dict | None:
    try:
        ds = ctx.ds()
    except Exception:  # no dataset yet: the section says "not run"
        return None
    pairs = ds.judgments.merge(ds.queries[["query_id", "split"]], on="query_id")
    mix = {split: {str(g): int((pairs.loc[pairs["split"] == split, "grade"] == g).sum()) for g in GRADES}
           for split in SPLITS if (pairs["split"] == split).any()}
    prov = ds.card.get("provenance") or {}
    files = [{k: f.get(k) for k in ("name", "url", "sha256") if f.get(k)} for f in prov.get("files", [])]
    if not files and prov.get("imported_from"):
        files = [{"name": f"{table}: {path}"} for table, path in prov["imported_from"].items()]
    c = counts(ds)
    return {"name": ds.card.get("name", ctx.data_dir.name),
            "counts": {k: c[k] for k in ("products", "queries", "judgments")}, "grades_by_split": mix,
            "provenance": {"description": prov.get("description"), "licence": prov.get("licence"), "files": files}}


def _stages(ctx: Context, rendering: str | None = None) -> list[dict]:
    """A row per stage with a record; ``rendering``: the stage writing this report, shown as running (a record
    left "running" by any other stage means that stage was interrupted)."""
    out = []
    for stage in STAGES:
        rec = _json(ctx.dir(stage) / "stage.json")
        if rec is None:
            continue
        status = {"done": "ran", "running": "failed"}.get(rec.get("status"), rec.get("status"))
        if stage not in ctx.plan and status == "ran":
            status = "reused"
        row = {"name": stage, "status": status, "wall_seconds": rec.get("seconds"),
               "config_diff": [{**d, "default": json.dumps(d["default"]), "value": json.dumps(d["value"])}
                               for d in rec.get("config_diff") or []][:40]}
        if stage == rendering and rec.get("status") == "running":
            row.update(status="running", message="writing this report")
        elif rec.get("message") or rec.get("status") == "running":
            row["message"] = rec.get("message") or "interrupted (re-run the pipeline to continue it)"
        out.append(row)
    return out


def _relevance(ctx: Context) -> tuple[dict | None, dict | None]:
    doc = _json(ctx.dir("evaluate") / "relevance.json")
    if doc is None:
        return None, None
    evaluated = (_json(ctx.dir("evaluate") / "stage.json") or {}).get("summary", {})
    final = evaluated.get("final")
    section = {"split": doc.get("split"), "rows": doc["rows"]}
    if doc.get("dataset") == "chorus":
        section["human_ceiling"] = CHORUS_CEILING
    if final:
        section["confusion_system"] = final
        preds = _json(ctx.dir("evaluate") / "predictions.json")
        score = preds["systems"].get(final, {}).get("score") if preds else None
        if score is not None:
            section["calibration"] = {"system": final, "p_good": score, "gold": preds["grade"]}
    return section, final


def _tiering(ctx: Context) -> dict | None:
    t = _json(ctx.dir("tiering") / "tiering.json")
    if t is None or "curve" not in t:
        return None
    return {"betas": t["curve"]["betas"], "macro_f1": t["curve"]["macro_f1"], "chosen_beta": t["beta"],
            "system": Path(t.get("model", "sft")).parent.name, "split": t.get("split")}


def _curves(ctx: Context) -> dict | None:
    curves = {}
    for name, rel in TRAINER_RUNS.items():
        path = ctx.out / rel / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
            if rows:
                curves[name] = rows
    return curves or None


def _retrieval(ctx: Context) -> dict | None:
    doc = _json(ctx.dir("retriever") / "retrieval.json")
    if doc is None:
        return None
    curves = {"ndcg": {}, "hitrate": {}}
    for row in doc["rows"]:
        for metric in curves:
            points = {int(k.split("@")[1]): v for k, v in row.items() if k.startswith(f"{metric}@")}
            if len(points) > 1:
                curves[metric][row["system"]] = points
    return {"split": doc.get("split"), "rows": doc["rows"], "curves": {k: v for k, v in curves.items() if v}}


def _examples(ctx: Context, final: str | None) -> list[dict] | None:
    """A few pairs per gold grade of the evaluation split, graded and decoded by the final model."""
    if not final:
        return None
    from searchrl.relevance.rules.engine import pair_slugs
    from searchrl.relevance.rules.kb import completion_grammar
    from searchrl.relevance.scoring.evaluate import decode_completions
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    model = ctx.dir(final) / "final"
    if not model.exists():
        return None
    pairs = ctx.ds().split(ctx.cfg.evaluate.split).pairs()
    rng = np.random.default_rng(0)
    picked = []
    for g in GRADES:
        rows = np.flatnonzero(pairs["grade"].to_numpy() == g)
        picked += rng.permutation(rows)[:ctx.cfg.report.examples_per_grade].tolist()
    if not picked:
        return None
    sub = pairs.iloc[picked]
    scorer = RelevanceScorer.load(model)
    products = pair_products(sub)
    results = [scorer.score(q, [p])[0] for q, p in zip(sub["text"], products)]
    cots = decode_completions(scorer.model, scorer.tokenizer, [scorer.prompt(q, p) for q, p in zip(sub["text"], products)],
                              ctx.cfg.report.max_new_tokens, progress=False,
                              grammar=completion_grammar(scorer.tokenizer, scorer.config.prompt,
                                                         ctx.cfg.sft.rules or None),
                              linked=pair_slugs(scorer.config.prompt, sub["text"], products, ctx.cfg.sft.rules or None))
    return [{"query": str(q), "title": p["title"], "gold": int(g), "pred": r["tier"], "p_good": r["p_good"],
             "cot": c, "system": final} for q, p, g, r, c in zip(sub["text"], products, sub["grade"], results, cots)]


def collect_report(ctx: Context, rendering: str | None = None) -> dict:
    """The report dict (eval/report.py's contract) for the run directory ``ctx.out``; ``rendering``: the stage that
    is writing it (the pipeline's report stage), shown as running rather than as interrupted."""
    pipeline = _json(ctx.out / "pipeline.json") or {}
    stages = _stages(ctx, rendering)
    relevance, final = _relevance(ctx)
    return {"run": {"name": ctx.out.name, "date": datetime.date.today().isoformat(),
                    "command": pipeline.get("command") or "searchrl pipeline",
                    "wall_seconds": sum(s.get("wall_seconds") or 0 for s in stages if s["status"] == "ran")},
            "dataset": _dataset(ctx), "stages": stages, "relevance": relevance, "tiering": _tiering(ctx),
            "curves": _curves(ctx), "retrieval": _retrieval(ctx), "examples": _examples(ctx, final)}
