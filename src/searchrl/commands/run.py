"""Whole runs and serving: ``pipeline``, ``quickstart``, ``serve``, ``plot``.
"""

from __future__ import annotations

import shlex

from searchrl.config import load_config
from searchrl.eval.plot import parse_run_args, plot_runs
from searchrl.pipeline import load_pipeline_config, run_pipeline
from searchrl.serve.server import ServerConfig, serve


def cmd_serve(a) -> None:
    serve(a.model, a.host, a.port, load_config(ServerConfig, a.config, a.set), threads=a.threads,
          retriever_dir=a.retriever, data_dir=a.data)


def cmd_plot(a) -> None:
    for path in plot_runs(parse_run_args(a.run), a.key, a.out, a.smooth, a.title):
        print(path)


def cmd_quickstart(a) -> None:
    """`searchrl quickstart` = `searchrl pipeline --config quickstart --dataset chorus --out runs/quickstart`."""
    cfg = load_pipeline_config("quickstart", ["data.dataset=chorus", "data.data_dir="]
                               + ([f"data.mirror={a.mirror}"] if a.mirror else []) + list(a.set))
    run_pipeline(cfg, a.out, command="searchrl " + shlex.join(a.argv))


def cmd_pipeline(a) -> None:
    overrides = list(a.set)
    if a.data:
        overrides.append(f"data.data_dir={a.data}")
    if a.dataset:
        overrides += [f"data.dataset={a.dataset}", "data.data_dir="]
    if a.mirror:
        overrides.append(f"data.mirror={a.mirror}")
    cfg = load_pipeline_config(a.config, overrides)
    run_pipeline(cfg, a.out, stages=a.stages.split(",") if a.stages else None, until=a.until, dry_run=a.dry_run,
                 command="searchrl " + shlex.join(a.argv))
