"""pass@N over reasoning samples (TaoSR1's stage 2): how often N sampled completions hold the right grade, and
how many of the DPO pairs the samples give against the rule teacher.

    python -m experiments.pass_at_n [--data runs/quickstart/data]
        [--models default=runs/quickstart/sft/final,llm=runs/llm/sft/final] [--out runs/pass_at_n]
        [--json PATH] [--md PATH]

Each model is sampled exactly as the pipeline's sample stage samples it (relevance/train/sample.py, under its
completion grammar, at temperature 1), with the sample settings of the pipeline config it was trained by
(``default``: pipeline_quickstart.yaml, 128 train prompts x 4 samples, 64 new tokens; ``llm``:
pipeline_llm.yaml, 32 prompts, 128 tokens). Per model: pass@1..N with query-bootstrap 95% intervals, pass@N -
pass@1 (what sampling N adds to one sample; the claim holds when its interval excludes 0), the samples' format
errors, and the DPO pairs from samples vs from the teacher (a prompt whose N samples are all wrong takes the
teacher's completion as its chosen side). A model directory that does not exist is left out with a note.

Simplifies: one seed; the prompts are the seeded subset the pipeline's sample stage draws. Wall time: about
2 min for the default and 8 min for SmolLM2 on one thread; finished models are reused from OUT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.common import CONFIGS, run_main, table, tables_markdown, write_report
from searchrl.config import load_config
from searchrl.metrics.stats import format_difference, format_interval, verdict
from searchrl.pipeline import PipelineConfig

CONFIG_OF = {"default": "pipeline_quickstart", "llm": "pipeline_llm"}


def sample_model(name: str, model: Path, data: str, out: Path) -> dict:
    """The pass@k table of one model (cached in OUT/NAME.json), sampled with its pipeline config's settings."""
    cache = out / f"{name}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from searchrl.data.schema import load_dataset
    from searchrl.relevance.train.sample import sample_preferences
    s = load_config(PipelineConfig, CONFIGS / f"{CONFIG_OF.get(name, 'pipeline_quickstart')}.yaml").sample
    _, t = sample_preferences(model, load_dataset(data), s.n, s.split, s.temperature, s.top_p, s.max_new_tokens,
                              s.prompts_per_batch, s.seed, s.max_prompts)
    t = {**t, "model": str(model), "max_new_tokens": s.max_new_tokens}
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(t, indent=1) + "\n")
    return t


def gain(t: dict) -> list[float]:
    """[mean, lo, hi] of pass@N - pass@1."""
    n = t["n"]
    return [t[f"pass@{n}"] - t["pass@1"], *t["ci"][f"pass@{n} - pass@1"]]


def tables(report: dict) -> list[dict]:
    rows = report["models"]
    n = max(t["n"] for t in rows.values())
    return [table(["model", "prompts x samples", *[f"pass@{k} [95% CI]" for k in range(1, n + 1)],
                   f"pass@{n} - pass@1", "sample format errors", "DPO pairs: from samples / from the teacher"],
                  [[name, f"{t['prompts']} x {t['n']}",
                    *[format_interval([t[f"pass@{k}"], *t["ci"][f"pass@{k}"]]) for k in range(1, n + 1)],
                    format_difference(gain(t)), f"{t['format_error_rate']:.3f}",
                    f"{t['pairs_from_samples']} / {t['pairs_from_teacher']}"] for name, t in rows.items()],
                  "Train prompts, temperature 1, under the completion grammar; brackets: query-bootstrap 95% "
                  "intervals")]


def glance(report: dict) -> list[dict]:
    """The claims page's rows: what sampling N adds over one sample, per model."""
    return [{"claim": f"pass@N finds right grades one sample misses ({name})",
             "difference": f"pass@{t['n']} - pass@1 {format_difference(gain(t))}; DPO pairs "
                           f"{t['pairs_from_samples']} from samples, {t['pairs_from_teacher']} from the teacher",
             "where": f"pass_at_n, {t['prompts']} train prompts", "verdict": verdict(gain(t), "holds", "reversed")}
            for name, t in report["models"].items()]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/quickstart/data")
    ap.add_argument("--models", default="default=runs/quickstart/sft/final,llm=runs/llm/sft/final",
                    help="NAME=DIR,...: the SFT models to sample (NAME default or llm picks the pipeline config)")
    ap.add_argument("--out", default="runs/pass_at_n")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args(argv)
    specs = [m.split("=", 1) for m in a.models.split(",") if m.strip()]
    if any(len(s) != 2 for s in specs):
        ap.error(f"--models: expected NAME=DIR,..., got {a.models!r}")
    models, missing = {}, []
    for name, path in specs:
        if (Path(path) / "relevance_config.json").exists():
            models[name] = sample_model(name, Path(path), a.data, Path(a.out))
        else:
            missing.append(f"{name} ({path}: no relevance model there)")
    if not models:
        raise SystemExit(f"error: no model to sample: {'; '.join(missing)}")
    report = {"models": models, "missing": missing}
    notes = [f"Left out: {'; '.join(missing)}."] if missing else []
    return write_report(report, tables_markdown(tables(report), notes), a.json, a.md)


if __name__ == "__main__":
    run_main(main)
