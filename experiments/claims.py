"""Each recipe's claim, tested: runs the claim experiments and writes docs/results/claims.md from their JSON.

    python -m experiments.claims [--data runs/quickstart/data] [--model runs/quickstart/export/model]
        [--cv-dir runs/default_model_cv/default] [--out runs/claims] [--seeds 0] [--folds 0,1] ...
    python -m experiments.claims --only label_vs_cot_first,rule_shaping   # those side by side, one thread each
    python -m experiments.claims --from-json        # the page from OUT/*.json of an earlier run, nothing run
    python -m experiments.claims --from-last-run    # the page from experiments/last_run_claims.json

It runs, each writing OUT/NAME.json and OUT/NAME.md (logs in OUT/NAME.log):

1. experiments.rgrpo_judge_quality: Retrieval-GRPO with judges of known quality (random, bm25, model, rules,
   oracle) against SFT and hardneg, and exclusivity on/off (``--seeds``, ``--judges``, ``--max-products``,
   ``--steps``);
2. experiments.relevance_rl_stages: relevance RL with room to improve (``--folds``), with the default SFT on all
   labels beside it when ``--cv-dir`` holds a finished experiments.default_model_cv run;
3. experiments.label_vs_cot_first on ``--order-folds``, beside experiments.pass_at_n (the SFT models of the
   main command and of `pipeline --config llm`, ``--pass-models``);
4. experiments.rule_shaping (``--shaping-seeds``, ``--shaping-steps``, one refill round);

the first two side by side, one thread each, then the next two, then the last (``--only NAMES``: those alone,
side by side). Each finished run's sections replace theirs in experiments/last_run_claims.json, the record of
every section's last figures and the run they come from; a section this run did not make is taken from there.
The page (eval.results_page.ResultsPage: the command, date, machine and wall time) has every claim at a
glance, then each experiment's tables. Every
comparison is a paired bootstrap over queries (and seeds where there are several); a verdict says "holds" or
"better" only when the 95% interval excludes 0 (metrics.stats.verdict).

Needs the quickstart's data and exported relevance model (bash scripts/quickstart.sh; pass_at_n also samples
`pipeline --config llm`'s SFT model where it exists). Simplifies: one retriever seed and two folds at the
defaults (``--seeds 0,1 --folds 0,1,2`` for fuller tables, about 3.5 hours). Wall time at the defaults, each on
one thread with 2 cores shared by four to six runs: relevance_rl_stages 55-62 min a fold, label_vs_cot_first
46 min, rule_shaping 26 min (and about 10 min a further seed), pass_at_n 10 min, rgrpo_judge_quality 32 min;
so about two hours end to end, the relevance RL folds being the longest lane.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from experiments import cv_compare, label_vs_cot_first, pass_at_n, rgrpo_judge_quality, rl_stage_tables, rule_shaping
from searchrl.eval.results_page import ResultsPage

ROOT = Path(__file__).resolve().parents[1]
LAST_RUN = Path(__file__).resolve().parent / "last_run_claims.json"
GLANCE = ["claim", "measured difference [95% CI]", "where", "verdict"]


def experiment_args(a, out: Path) -> dict[str, tuple[list[str], int]]:
    """{experiment: (its arguments, torch threads)} at the claims command's sizes."""
    def io(name):
        return ["--out", str(out / name), "--json", str(out / f"{name}.json"), "--md", str(out / f"{name}.md")]
    cv = ["--cv-dir", a.cv_dir] if a.cv_dir and Path(a.cv_dir).is_dir() else []
    return {
        "rgrpo_judge_quality": (["--data", a.data, "--model", a.model, "--seeds", a.seeds, "--judges", a.judges,
                                 "--set", f"max_products={a.max_products}", "--set", f"optim.max_steps={a.steps}",
                                 *io("rgrpo_judge_quality")], 1),
        "relevance_rl_stages": (["--data", a.data, "--folds", a.folds, "--seeds", "0", *cv,
                                 *io("relevance_rl_stages")], 1),
        "label_vs_cot_first": (["--data", a.data, "--folds", a.order_folds, *io("label_vs_cot_first")], 1),
        "rule_shaping": (["--data", a.data, "--seeds", a.shaping_seeds, "--steps", str(a.shaping_steps),
                          "--grpo-set", "rollout.max_refill_rounds=1", *io("rule_shaping")], 2),
        "pass_at_n": (["--data", a.data, "--models", a.pass_models, *io("pass_at_n")], 1),
    }


def start(name: str, args: list[str], threads: int, out: Path) -> subprocess.Popen:
    """``python -m experiments.NAME ARGS`` in the background, ``threads`` torch threads, its output to OUT/NAME.log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    with open(out / f"{name}.log", "a") as log:  # the child holds its own handle
        return subprocess.Popen([sys.executable, "-m", f"experiments.{name}", *args], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)


BATCHES = (["rgrpo_judge_quality", "relevance_rl_stages"], ["label_vs_cot_first", "pass_at_n"], ["rule_shaping"])
NAMES = [name for batch in BATCHES for name in batch]


def run_experiments(a, out: Path, only: list[str]) -> None:
    """The experiments in BATCHES, a batch at a time; ``only``: those named, side by side with one thread each."""
    out.mkdir(parents=True, exist_ok=True)
    plan = experiment_args(a, out)
    for batch in ([only] if only else BATCHES):
        running = {name: start(name, plan[name][0], 1 if only else plan[name][1], out) for name in batch}
        failed = [name for name, p in running.items() if p.wait()]
        if failed:
            logs = ", ".join(str(out / f"{n}.log") for n in failed)
            raise SystemExit(f"error: experiments {failed} failed: see {logs}")


def section(name: str, title: str, command: str, claims: list[dict], tables: list[dict], notes: list[str]) -> dict:
    return {"name": name, "title": title, "command": command, "claims": claims, "tables": tables, "notes": notes}


def sections_from_json(out: Path) -> list[dict]:
    """The page's sections from each experiment's JSON in ``out`` (those that ran)."""
    def load(name):
        path = out / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None
    found = []
    r = load("rgrpo_judge_quality")
    if r:
        found.append(section("rgrpo_judge_quality", "Retrieval-GRPO: does the gain grow with the judge's quality?",
                             "python -m experiments.rgrpo_judge_quality", rgrpo_judge_quality.glance(r),
                             rgrpo_judge_quality.tables(r), [rgrpo_judge_quality.scope(r)]))
    r = load("relevance_rl_stages")
    if r:
        tables, notes = rl_stage_tables.tables(r)
        found.append(section("relevance_rl_stages", "Relevance RL with room to improve",
                             "python -m experiments.relevance_rl_stages", rl_stage_tables.glance(r), tables, notes))
    r = load("label_vs_cot_first")
    if r:
        found.append(section("label_vs_cot_first", "Label-first vs CoT-first",
                             "python -m experiments.label_vs_cot_first", label_vs_cot_first.glance(r),
                             [*cv_compare.tables(r["rows"], "label_first"), label_vs_cot_first.reasoning_table(r["rows"])],
                             label_vs_cot_first.reasons(r)))
    r = load("pass_at_n")
    if r:
        found.append(section("pass_at_n", "pass@N over reasoning samples (TaoSR1)", "python -m experiments.pass_at_n",
                             pass_at_n.glance(r), pass_at_n.tables(r),
                             [f"Left out: {'; '.join(r['missing'])}."] if r.get("missing") else []))
    r = load("rule_shaping")
    if r:
        found.append(section("rule_shaping", "Rule-aware shaping (TaoSR-AGRL)", "python -m experiments.rule_shaping",
                             rule_shaping.glance(r), rule_shaping.tables(r),
                             [f"{r['queries']} test queries, {r['pairs']} pairs, seeds {r['seeds']}",
                              *rule_shaping.reasons(r)]))
    return found


def merged(found: list[dict], recorded: list[dict], run: str) -> list[dict]:
    """The recorded sections with those ``found`` now in their places (each marked with ``run``), then any new."""
    new = {s["name"]: {**s, "run": run} for s in found}
    out = [new.pop(s["name"], s) for s in recorded]
    return out + list(new.values())


def page(sections: list[dict], command: str, about: str) -> ResultsPage:
    """The claims page: the note, every claim at a glance, then each section's command, tables and notes."""
    p = ResultsPage("claims", "Each recipe's claim, tested", command)
    p.text(about)
    p.section("Every claim at a glance")
    p.table(GLANCE, [[c["claim"], c["difference"], c["where"], c["verdict"]] for s in sections for c in s["claims"]])
    for s in sections:
        p.section(s["title"], f"Command: `{s['command']}`" + (f"\n\nFigures from: {s['run']}." if s.get("run") else ""))
        for t in s["tables"]:
            p.table(t["columns"], t["rows"], t.get("caption", ""))
        for note in s["notes"]:
            p.text(note)
    return p


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/quickstart/data")
    ap.add_argument("--model", default="runs/quickstart/export/model", help="the relevance model judging R-GRPO")
    ap.add_argument("--cv-dir", default="runs/default_model_cv/default", help="adds sft_all when it exists")
    ap.add_argument("--out", default="runs/claims")
    ap.add_argument("--seeds", default="0", help="retriever seeds")
    ap.add_argument("--judges", default="random,bm25,model,rules,oracle")
    ap.add_argument("--max-products", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=40, help="retriever steps a stage")
    ap.add_argument("--folds", default="0,1", help="relevance_rl_stages folds")
    ap.add_argument("--order-folds", default="0")
    ap.add_argument("--shaping-seeds", default="0")
    ap.add_argument("--shaping-steps", type=int, default=10)
    ap.add_argument("--pass-models", default="default=runs/quickstart/sft/final,llm=runs/llm/sft/final",
                    help="pass_at_n's NAME=DIR models (the main command's and `pipeline --config llm`'s SFT models)")
    ap.add_argument("--results", default=str(ROOT / "docs" / "results"), help="where claims.md is written")
    ap.add_argument("--only", default="", help="comma-separated experiments to run, side by side, one thread each")
    ap.add_argument("--run", default="", help="where the figures come from, as the page names it (default: this "
                                               "command, its date and wall time)")
    ap.add_argument("--from-json", action="store_true", help="render from OUT/*.json without running anything")
    ap.add_argument("--from-last-run", action="store_true", help=f"render from {LAST_RUN.name}")
    a = ap.parse_args(argv)
    only = [n.strip() for n in a.only.split(",") if n.strip()]
    if unknown := sorted(set(only) - set(NAMES)):
        ap.error(f"--only: no experiment named {', '.join(unknown)} (one of {', '.join(NAMES)})")
    started, out = time.time(), Path(a.out)
    how = ("Every comparison is a paired bootstrap over queries (and seeds where there are several); a verdict "
           "says \"holds\" or \"better\" only when the 95% interval excludes 0. Each section names the command "
           "that measures it and the run its figures come from.")
    if a.from_last_run:
        doc = json.loads(LAST_RUN.read_text())
        note = how + " The date, machine and wall time above are this rendering's."
        written = page(doc["sections"], "python -m experiments.claims --from-last-run", note).write(a.results, 0.0)
    else:
        if not a.from_json:
            run_experiments(a, out, only)
        doc = json.loads(LAST_RUN.read_text())  # read after the run: another claims run may have written it since
        command = " ".join(["python -m experiments.claims", shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
        found = [s for s in sections_from_json(out) if not only or s["name"] in only]
        run = a.run or f"`{command}` ({time.strftime('%Y-%m-%d')}, {(time.time() - started) / 60:.0f} min)"
        sections = merged(found, doc["sections"], run)
        if found:  # the record now holds these sections' figures
            LAST_RUN.write_text(json.dumps({**doc, "sections": sections}, indent=1) + "\n")
        note = how + (f" This rendering's figures for {', '.join(s['name'] for s in found) or 'no section'} are "
                      f"from {out}/*.json; the others are each section's last run (experiments/{LAST_RUN.name}).")
        written = page(sections, command, note).write(a.results, time.time() - started)
    print(f"wrote {written}")
    return written


if __name__ == "__main__":
    main()
