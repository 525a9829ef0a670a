"""Learning curves as PNG files, drawn from training runs' ``metrics.jsonl``.

Every trainer (SFT, DPO, GRPO, the retriever loop) appends one JSON object per logged
step to ``output_dir/metrics.jsonl``: ``{"step": N, "loss": ..., "reward_mean": ...}``;
eval metrics are merged into the row of the step they were taken at, named
``<eval_split>_<metric>`` (``valid_macro_f1``, ``valid_accuracy``, ``valid_good_f1``).

- :func:`read_metrics`: the rows of one run; a truncated final line (a killed run) is
  skipped, any other malformed line is an error naming ``file:line``.
- :func:`moving_average`: the trailing mean used to smooth noisy per-step metrics.
- :func:`plot_runs`: one PNG per metric key, one line per run, x = step
  (:func:`curve_figure` draws one key's figure without saving it).
- :func:`parse_run_args`: ``LABEL=DIR`` command-line items into ``{label: dir}``.

The command (cli.py)::

    searchrl plot --run LABEL=DIR [--run LABEL=DIR ...] --key KEY [--key KEY ...]
                  --out DIR [--smooth N] [--title TEXT]

e.g. ``searchrl plot --run grpo=runs/ablation_rl/grpo --run dpo=runs/ablation_rl/dpo
--key reward_mean --key valid_macro_f1 --out runs/ablation_rl/plots --smooth 5``
writes ``plots/reward_mean.png`` and ``plots/valid_macro_f1.png``. A bare ``DIR`` is
labelled with the directory's name.

Simplifications, on purpose: no confidence bands or seeds aggregation (one line per
run); x is always the optimizer step, not examples or wall time; a repeated step
(a resumed run whose log was not trimmed) keeps the later row; sparse series (eval
metrics, logged every ``eval_every`` steps) are never smoothed and are drawn with markers.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure  # Figure + savefig uses Agg with no pyplot global state

from searchrl.data.schema import DataError
from searchrl.errors import ConfigError, InputError, MissingFileError


def _metrics_file(path: Path | str) -> Path:
    p = Path(path)
    return p / "metrics.jsonl" if p.is_dir() else p


def read_metrics(path: Path | str) -> list[dict]:
    """The rows of a run directory's (or a file's) metrics.jsonl, in file order."""
    file = _metrics_file(path)
    if not file.exists():
        raise MissingFileError(f"no metrics file: {file}")
    lines = file.read_text().splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last:  # a run killed mid-write leaves half a line at the end; the rest is good
                print(f"note: {file}:{i + 1}: skipping truncated last line", file=sys.stderr)
                break
            raise DataError(file, str(i + 1), None, f"malformed JSON line: {e}") from None
        if not isinstance(row, dict) or not _is_number(row.get("step")):
            raise DataError(file, str(i + 1), None, "expected a JSON object with a numeric 'step'")
        rows.append(row)
    return rows


def _is_number(v) -> bool:
    # bool is an int subclass, but a True "loss" is a bug, not a value to plot
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def series(rows: Sequence[Mapping], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of key, sorted by step; rows without a numeric value are left out."""
    by_step = {r["step"]: float(r[key]) for r in rows if _is_number(r.get(key))}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values; the first ones average what exists so far."""
    if window < 1:
        raise ConfigError(f"smoothing window must be >= 1, got {window}")
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _filename(key: str) -> str:
    return re.sub(r"[^\w.-]", "_", key) + ".png"


def plot_runs(runs: Mapping[str, Path | str], keys: Sequence[str], out: Path | str, smooth: int = 1,
              title: str | None = None) -> list[Path]:
    """Write OUT/<key>.png per key, one line per run labelled by its runs key; the written paths."""
    if not runs:
        raise ConfigError("no runs to plot")
    if not keys:
        raise ConfigError("no metric keys to plot")
    if smooth < 1:
        raise ConfigError(f"smooth must be >= 1, got {smooth}")
    data = {label: read_metrics(p) for label, p in runs.items()}
    # Check every key before drawing, so a typo in the last key leaves no half-written output.
    available = sorted({k for rows in data.values() for r in rows for k, v in r.items()
                        if k != "step" and _is_number(v)})
    for key in keys:
        if key not in available:
            raise InputError(f"no run has metric {key!r}; available: {', '.join(available) or '(none)'}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for key in keys:
        path = out / _filename(key)
        curve_figure(data, key, smooth, title).savefig(path, dpi=120, bbox_inches="tight")
        written.append(path)
    return written


def curve_figure(data: Mapping[str, Sequence[Mapping]], key: str, smooth: int = 1,
                 title: str | None = None) -> Figure:
    """The figure for one key from {label: rows}; runs without the key are left out with a note."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    smoothed = False  # the title mentions smoothing only when some line was smoothed
    for label, rows in data.items():
        steps, values = series(rows, key)
        if not steps:
            print(f"note: run {label!r} has no {key!r}; left out of {_filename(key)}", file=sys.stderr)
            continue
        # Eval metrics appear only every eval_every steps and each is already a mean over
        # hundreds of examples: smoothing would blend checkpoints far apart, so draw them raw.
        sparse = len(steps) < len(rows) / 2
        if smooth > 1 and not sparse:
            smoothed = True
            (line,) = ax.plot(steps, moving_average(values, smooth), label=label, linewidth=1.8)
            ax.plot(steps, values, color=line.get_color(), alpha=0.25, linewidth=0.8, zorder=line.get_zorder() - 1)
        else:
            ax.plot(steps, values, label=label, marker="o" if sparse else None, markersize=4)
    suffix = f" (moving average of {smooth})" if smoothed else ""
    ax.set_title(f"{title}: {key}{suffix}" if title else f"{key}{suffix}")
    ax.set_xlabel("step")
    ax.set_ylabel(key)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def parse_run_args(items: Sequence[str]) -> dict[str, str]:
    """``["LABEL=DIR", "DIR", ...]`` -> ``{label: dir}``; a bare DIR is labelled by its name."""
    runs: dict[str, str] = {}
    for item in items:
        if "=" in item:
            label, _, path = item.partition("=")  # first "=" only, so a path may contain "="
            label, path = label.strip(), path.strip()
            if not label or not path:
                raise ConfigError(f"--run {item!r}: expected LABEL=DIR with both parts non-empty")
        else:
            path = item.strip()
            p = Path(path)
            label = (p.parent if p.name == "metrics.jsonl" else p).resolve().name if path else ""
            if not label:
                raise ConfigError(f"--run {item!r}: cannot take a label from this path; use LABEL=DIR")
        if label in runs:
            raise ConfigError(f"--run {item!r}: label {label!r} given twice")
        runs[label] = path
    return runs

