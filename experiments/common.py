"""What the experiments share: the trainers' packaged configs, the pipeline's chain run under a directory,
a child process per unit of training, tables, and printing and writing a report.

Every experiment trains its relevance models through the pipeline's own stage runner
(``searchrl.pipeline.run_pipeline``): reuse by fingerprint, resume from the last checkpoint, one
code path for SFT -> pass@N -> DPO -> GRPO.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import searchrl
from searchrl.config import load_config
from searchrl.eval.results_page import markdown_table
from searchrl.pipeline import PipelineConfig, run_pipeline

CONFIGS = Path(searchrl.__file__).resolve().parent / "configs"


def trainer_config(cls, name: str, overrides: list[str] | None = None):
    """A trainer's config from the packaged ``configs/NAME.yaml`` plus ``key=value`` overrides."""
    return load_config(cls, CONFIGS / f"{name}.yaml", overrides)


def run_chain(cfg: PipelineConfig, out: Path, stages: list[str], command: str) -> dict[str, Path]:
    """The pipeline's ``data`` stage and ``stages`` under ``out`` (finished ones reused, a killed one resumed),
    their output appended to ``out/stages.log``; {stage: its final/} for each relevance stage that has one.
    ``command``: the experiment, recorded in the run's pipeline.json."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stages.log", "a") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        run_pipeline(cfg, out, stages=["data", *stages], command=command)
    return {s: out / s / "final" for s in stages if (out / s / "final" / "relevance_config.json").exists()}


def in_child(fn, *args) -> None:
    """``fn(*args)`` in a fresh process, so the memory its models took is returned when it ends (one process
    holding several training runs grows by about a model's worth each)."""
    child = multiprocessing.get_context("spawn").Process(target=fn, args=args)
    child.start()
    child.join()
    if child.exitcode:
        raise SystemExit(f"error: {getattr(fn, '__name__', fn)}{args[1:]} failed (exit {child.exitcode}); "
                         "its log is beside its models")


def searchrl_cli(*args: str, log: Path, threads: int = 1) -> None:
    """One ``searchrl`` command in its own process (``threads`` torch threads), its output appended to ``log``."""
    cmd = [sys.executable, "-m", "searchrl.cli", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"$ searchrl {' '.join(args)}\n")
        f.flush()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False).returncode:
            raise SystemExit(f"error: searchrl {' '.join(args[:2])} failed (see {log})")


def crossval_lanes(data: str, out: Path, lanes: list[tuple[str, list[int], list[str]]], decode: bool = False) -> None:
    """`searchrl eval relevance --cv 5` of sft_chorus.yaml, each fold in its own process (one process for all
    folds grows ~1.5 GB a fold); the lanes (run name, folds, extra ``key=value`` overrides) run side by side,
    one thread each. A finished fold is reused; then one call per run name writes its crossval.json over every
    fold it has. ``decode``: ``--decode`` too (the reasoning measured on every test pair)."""
    def cv(name, folds, sets):
        args = ["eval", "relevance", "--cv", "5", "--config", str(CONFIGS / "sft_chorus.yaml"), "--data", str(data),
                "--out", str(out / name), *[x for s in sets for x in ("--set", s)]]
        return args + (["--folds", ",".join(map(str, folds))] if folds else []) + (["--decode"] if decode else [])
    errors = []

    def lane(i, name, folds, sets):
        try:
            for fold in folds:
                searchrl_cli(*cv(name, [fold], sets), log=out / f"{name}.lane{i}.log")
        except SystemExit as e:
            errors.append(str(e))
    threads = [threading.Thread(target=lane, args=(i, *spec)) for i, spec in enumerate(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("; ".join(errors))
    runs = {name: (sorted({f for n, fs, _ in lanes if n == name for f in fs}), sets) for name, _, sets in lanes}
    for name, (folds, sets) in runs.items():
        searchrl_cli(*cv(name, folds, sets), log=out / f"{name}.log")


def table(columns: list[str], rows: list[list], caption: str = "") -> dict:
    """A table as the experiments hand it on (to their Markdown and to the claims page)."""
    return {"caption": caption, "columns": columns, "rows": rows}


def tables_markdown(tables: list[dict], notes: list[str] | None = None) -> str:
    blocks = [(f"{t['caption']}\n\n" if t.get("caption") else "") + markdown_table(t["columns"], t["rows"])
              for t in tables]
    return "\n\n".join(blocks + list(notes or []))


def write_report(report: dict, markdown: str, json_path: str | None, md_path: str | None) -> dict:
    """Print the Markdown; write it to ``md_path`` and the report to ``json_path`` when given."""
    print(markdown)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(report, indent=1, default=float) + "\n")
    if md_path:
        Path(md_path).parent.mkdir(parents=True, exist_ok=True)
        Path(md_path).write_text(markdown + "\n")
    return report


def run_main(main) -> None:
    """``main()``, a UserError (a bad override, data directory or option) printed as one line, as the CLI does."""
    from searchrl.errors import UserError
    try:
        main()
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
