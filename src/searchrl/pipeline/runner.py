"""Running the stages: the plan, what is reused, progress a person can follow, and resuming a killed run.

``run_pipeline(cfg, out)`` walks the plan (``cfg.stages``, cut at ``until``) in order. Each
stage directory holds ``stage.json``: its status (running / done / skipped / failed), its
*fingerprint* -- a sha256 of the stage's config section and of the fingerprints of the stages
it reads from -- wall seconds, a short summary and the config diff from the defaults.

- A stage whose ``stage.json`` says done with the same fingerprint is **reused** (its
  inputs and config are unchanged).
- A stage that says running with the same fingerprint was killed: it runs again, and its
  trainer resumes from its last valid checkpoint (``run.resume`` is on for every trainer), so
  the result is the one an uninterrupted run gives.
- A different fingerprint (the config or an input changed) clears the stage directory and
  runs it from scratch; the stages that read from it change fingerprint in turn.

Progress: one line as each stage starts and ends, with the elapsed time and an estimate
for the rest (a previous run's seconds for the stage when known, else a rough figure from
the config), plus each trainer's own tqdm bar. ``dry_run`` prints the plan and exits.

Simplifies: stages run one after another in one process; estimates are rough by design.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from searchrl.config import identity
from searchrl.errors import UserError
from searchrl.pipeline.config import STAGES, PipelineConfig
from searchrl.pipeline.context import Context, SkipStage
from searchrl.pipeline.stages import RUNNERS
from searchrl.relevance.model.load import MINILM_BUILDS
from searchrl.stage_records import fingerprint as stage_fingerprint
from searchrl.stage_records import read_record, write_record

DEPENDS = {  # the stages whose outputs a stage reads (absent ones are simply not part of the fingerprint)
    "data": (), "baselines": ("data",), "sft": ("data",), "tiering": ("sft",), "sample": ("tiering", "sft"),
    "dpo": ("sample", "sft"), "grpo": ("dpo", "sft"), "export": ("grpo", "dpo", "sft"),
    "retriever": ("data", "export"), "evaluate": ("baselines", "tiering", "sft", "dpo", "grpo", "export"),
    "report": ("data", "baselines", "sft", "tiering", "sample", "dpo", "grpo", "export", "retriever", "evaluate"),
}


def plan_stages(cfg: PipelineConfig, stages: list[str] | None = None, until: str | None = None) -> list[str]:
    """The stages to run, in pipeline order: ``stages`` (default cfg.stages) up to and including ``until``."""
    wanted = stages or cfg.stages
    bad = [s for s in list(wanted) + ([until] if until else []) if s not in STAGES]
    if bad:
        raise UserError(f"unknown stage(s) {bad}; the stages, in order: {', '.join(STAGES)}")
    order = [s for s in STAGES if s in wanted]
    return order[:order.index(until) + 1] if until and until in order else order


def section(cfg: PipelineConfig, stage: str):
    """The config a stage's fingerprint covers."""
    e = cfg.evaluate
    return {"data": cfg.data, "baselines": {"split": e.split, "rules": cfg.sft.rules}, "sft": cfg.sft,
            "tiering": cfg.tiering, "sample": cfg.sample, "dpo": cfg.dpo, "grpo": cfg.grpo, "export": {},
            "retriever": {"retriever": cfg.retriever, "split": e.split, "ks": e.ks}, "evaluate": e,
            "report": cfg.report}[stage]


def record(ctx: Context, stage: str) -> dict:
    return read_record(ctx.dir(stage))


def fingerprint(ctx: Context, stage: str) -> str:
    parts = {"stage": stage, "config": identity(section(ctx.cfg, stage)),
             "inputs": {d: record(ctx, d).get("fingerprint") for d in DEPENDS[stage]
                        if record(ctx, d).get("status") == "done"}}
    if stage == "data" and ctx.cfg.data.data_dir:  # a given dataset: its card names what it holds
        card = Path(ctx.cfg.data.data_dir) / "dataset.json"
        parts["dataset"] = hashlib.sha256(card.read_bytes()).hexdigest() if card.exists() else None
    if stage != "data" and ctx.cfg.start_model:  # a model from elsewhere, and the data it now meets
        parts["start_model"] = {"files": model_files(ctx.cfg.start_model),
                                "data": record(ctx, "data").get("fingerprint")}
    return stage_fingerprint(parts)


def model_files(model_dir: str | Path) -> list | None:
    """[name, size, mtime] of each file of a model directory (None if it is not there): a model trained again in
    place changes it."""
    d = Path(model_dir)
    if not d.is_dir():
        return None
    files = [f for f in sorted(d.rglob("*")) if f.is_file()]
    return [[str(f.relative_to(d)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def config_diff(stage: str, cfg: PipelineConfig) -> list[dict]:
    """[{key, default, value}] where the stage's section differs from PipelineConfig's defaults."""
    def flat(x, prefix=""):
        x = identity(x)
        if not isinstance(x, dict):
            return {prefix.rstrip("."): x}
        return {k: v for key, val in x.items() for k, v in flat(val, f"{prefix}{key}.").items()}
    used, default = flat(section(cfg, stage)), flat(section(PipelineConfig(), stage))
    return [{"key": k, "default": default.get(k), "value": v} for k, v in used.items() if default.get(k) != v]


# Seconds per unit of work for a pretrained decoder LLM on 2 CPU cores, one thread beside another run: SmolLM2-135M
# with LoRA, ~200-token examples, measured by the llm config (docs/results/llm/timing.md); a larger model takes longer
DECODER_SECONDS = {"sft_example": 2.8, "score_pair": 0.26, "sample": 1.15, "dpo_pair": 7.6, "grpo_rollout": 7.2,
                   "decode_pair": 3.0}
PAIRS = {"train": 2200, "valid": 660, "test": 800}  # a split's judged pairs when the plan cannot know (Chorus's)


def _decoder_estimate(c: PipelineConfig, stage: str) -> float | None:
    """Rough seconds of a stage whose relevance model is a pretrained decoder LLM, from DECODER_SECONDS; None for a
    stage it does not change."""
    u, s = DECODER_SECONDS, c.sft
    examples = (s.optim.max_steps * s.batch_size * s.grad_accum if s.optim.max_steps else
                (s.max_train_examples or PAIRS["train"]) * s.optim.epochs)
    models = len([x for x in ("sft", "dpo", "grpo") if x in c.stages])
    decoded = min(c.evaluate.max_decode or PAIRS[c.evaluate.split], PAIRS[c.evaluate.split]) if c.evaluate.decode else 0
    return {"sft": u["sft_example"] * examples, "tiering": u["score_pair"] * PAIRS[c.tiering.split],
            "sample": u["sample"] * c.sample.n * (c.sample.max_prompts or PAIRS[c.sample.split]),
            "dpo": u["dpo_pair"] * (c.dpo.optim.max_steps or 60) * c.dpo.batch_size * c.dpo.grad_accum,
            "grpo": u["grpo_rollout"] * c.grpo.optim.max_steps * c.grpo.rollout.prompts_per_step
            * c.grpo.rollout.group_size,
            "evaluate": models * (u["score_pair"] * PAIRS[c.evaluate.split] + u["decode_pair"] * decoded),
            }.get(stage)


def estimate(ctx: Context, stage: str) -> float:
    """Seconds a stage will take: a previous run's, else a rough figure for 2 CPU cores from the config (the default
    relevance model's, or a pretrained decoder's)."""
    previous = record(ctx, stage).get("seconds")
    if previous:
        return float(previous)
    c = ctx.cfg
    if c.sft.model not in MINILM_BUILDS and (decoder := _decoder_estimate(c, stage)) is not None:
        return decoder
    rough = {"data": 10, "baselines": 40, "tiering": 20, "export": 10, "evaluate": 90, "report": 20,
             "sft": 125 * c.sft.optim.epochs if not c.sft.optim.max_steps else 1.4 * c.sft.optim.max_steps,
             "sample": 0.05 * c.sample.n * (c.sample.max_prompts or 2000),
             "dpo": 2.0 * (c.dpo.optim.max_steps or 60), "grpo": 17.0 * c.grpo.optim.max_steps,
             "retriever": 3 * 5.0 * (c.retriever.optim.max_steps or 40)}
    return float(rough[stage])


def _minutes(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _write_record(ctx: Context, stage: str, **fields) -> None:
    write_record(ctx.dir(stage), stage=stage, **fields)


def describe_plan(ctx: Context) -> list[dict]:
    """Per stage of the plan: what would happen (run / reuse / resume) and the estimated seconds."""
    rows = []
    for stage in ctx.plan:
        rec, fp = record(ctx, stage), fingerprint(ctx, stage)
        action = ("reuse" if rec.get("status") == "done" and rec.get("fingerprint") == fp else
                  "resume" if rec.get("status") == "running" and rec.get("fingerprint") == fp else "run")
        rows.append({"stage": stage, "action": action, "estimate_s": 0.0 if action == "reuse" else estimate(ctx, stage)})
    return rows


def run_pipeline(cfg: PipelineConfig, out: str | Path, stages: list[str] | None = None, until: str | None = None,
                 dry_run: bool = False, command: str | None = None) -> dict:
    """Run (or, with dry_run, describe) the plan under ``out``; returns {stage: its record}."""
    out = Path(out)
    ctx = Context(cfg, out, plan_stages(cfg, stages, until))
    if dry_run:  # fingerprints of later stages assume earlier ones keep theirs: a plan, not a promise
        rows = describe_plan(ctx)
        print(f"[pipeline] plan for {out} ({len(rows)} stages, estimated {_minutes(sum(r['estimate_s'] for r in rows))}"
              " on 2 CPU cores):")
        for i, r in enumerate(rows, 1):
            print(f"  {i:>2}. {r['stage']:<10} {r['action']:<7} ~{_minutes(r['estimate_s'])}")
        return {r["stage"]: r for r in rows}
    out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # per-file loading bars would bury the stage lines; trainers keep theirs
    (out / "pipeline.json").write_text(json.dumps({"command": command, "stages": ctx.plan,
                                                   "config": dataclasses.asdict(cfg)}, indent=1, default=str) + "\n")
    t_start, results = time.perf_counter(), {}
    for i, stage in enumerate(ctx.plan):
        rest = sum(estimate(ctx, s) for s in ctx.plan[i:] if describe_one(ctx, s) != "reuse")
        fp, rec = fingerprint(ctx, stage), record(ctx, stage)
        elapsed = _minutes(time.perf_counter() - t_start)
        if rec.get("status") == "done" and rec.get("fingerprint") == fp:
            print(f"[pipeline] {i + 1}/{len(ctx.plan)} {stage}: reused (same inputs and config) | elapsed {elapsed}",
                  flush=True)
            results[stage] = {**rec, "status": "reused"}
            continue
        if rec and rec.get("fingerprint") != fp and (stage != "data" or not cfg.data.data_dir):
            shutil.rmtree(ctx.dir(stage), ignore_errors=True)  # config or inputs changed: start the stage afresh
        resumed = rec.get("status") == "running" and rec.get("fingerprint") == fp
        print(f"[pipeline] {i + 1}/{len(ctx.plan)} {stage}: {'resuming' if resumed else 'start'} | elapsed {elapsed},"
              f" estimated rest ~{_minutes(rest)}", flush=True)
        _write_record(ctx, stage, status="running", fingerprint=fp, started=time.time())
        t0 = time.perf_counter()
        try:
            summary = RUNNERS[stage](ctx)
            status, message = "done", None
        except SkipStage as e:
            summary, status, message = {}, "skipped", str(e)
        except BaseException as e:
            _write_record(ctx, stage, status="failed", fingerprint=fp, message=f"{type(e).__name__}: {e}",
                          seconds=time.perf_counter() - t0)
            if stage != "report" and "report" in ctx.plan:
                _try_report(ctx)  # what ran so far, readable in a browser
            raise
        seconds = time.perf_counter() - t0
        _write_record(ctx, stage, status=status, fingerprint=fp, seconds=seconds, summary=summary, message=message,
                      config_diff=config_diff(stage, cfg))
        results[stage] = record(ctx, stage)
        note = f"skipped: {message}" if status == "skipped" else f"done in {_minutes(seconds)}"
        print(f"[pipeline] {i + 1}/{len(ctx.plan)} {stage}: {note}", flush=True)
    total = time.perf_counter() - t_start
    report = out / "report.html"
    print(f"[pipeline] finished in {_minutes(total)}; "
          + (f"report: {report}" if report.exists() else f"results under {out}"), flush=True)
    return results


def describe_one(ctx: Context, stage: str) -> str:
    rec = record(ctx, stage)
    return "reuse" if rec.get("status") == "done" and rec.get("fingerprint") == fingerprint(ctx, stage) else "run"


def _try_report(ctx: Context) -> None:
    try:
        RUNNERS["report"](ctx)
        print(f"[pipeline] partial report: {ctx.out / 'report.html'}", file=sys.stderr)
    except Exception as e:  # the original failure matters more than a report of it
        print(f"[pipeline] (no partial report: {type(e).__name__}: {e})", file=sys.stderr)
