"""TaoSR1's RL stages and TaoSR-AGRL's shaping and replay on Chorus test, from an SFT model trained on every label.

    python -m experiments.rl_ablations_after_full_sft [--data runs/quickstart/data]
        [--sft runs/quickstart/sft/final] [--out runs/rl_ablations_after_full_sft] [--max-prompts 512]
        [--dpo-set KEY=VALUE ...] [--grpo-set KEY=VALUE ...] [--json PATH] [--md PATH]

From the quickstart's SFT model (``start_model``), through the pipeline's own stages (searchrl.pipeline:
finished stages reused by fingerprint): pass@4 on 512 train pairs and DPO (dpo_chorus.yaml), GRPO from the DPO
model (grpo_chorus.yaml), and from the same DPO model GRPO without dynamic sampling, without class balance, with
rule-aware shaping (``reward.kind=rule_aware``), and with shaping and adaptive guided replay. Every system is
evaluated on the test split with its CoT decoded greedily (searchrl.relevance.scoring.evaluate_model: macro-F1,
per-grade F1, rule adherence, hallucination, format errors), with the GRPO runs' stability (spread of the
train accuracy over steps, variance of the train reward) and guided replay's counts; learning curves go to
OUT/plots (PNG).

experiments/relevance_rl_stages.py measures the same stages with room to improve (SFT on half of each fold's
train queries), and experiments/rule_shaping.py shaping from a model whose CoT parses; this is the setting of the
papers' recipe as the quickstart runs it, where SFT has seen every label.

Simplifies: one seed, one split (27 test queries), no intervals: a table of where each stage lands, not a test of
a claim. Wall time: about 35 min for sample, DPO, GRPO and its two ablations on 2 cores, and 69 min more for the
two shaping runs on 2 cores shared with another job.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from experiments.common import run_chain, run_main, trainer_config, write_report
from searchrl.data.schema import load_dataset
from searchrl.eval.plot import plot_runs, read_metrics
from searchrl.metrics.measures import RELEVANCE_COLUMNS, format_table, read_metrics_json, write_metrics_json
from searchrl.pipeline import PipelineConfig
from searchrl.pipeline.config import DataStage, SampleStage
from searchrl.relevance.train.dpo import DPOConfig
from searchrl.relevance.train.grpo import GRPOConfig

COMMAND = "python -m experiments.rl_ablations_after_full_sft"
VARIANTS = {  # GRPO runs from the DPO model beside the pipeline's own grpo stage: name -> grpo overrides
    "grpo_no_dynamic_sampling": ["rollout.dynamic_sampling=false"],
    "grpo_no_class_balance": ["rollout.class_balance=false"],
    "grpo_shaping": ["reward.kind=rule_aware"],
    "grpo_shaping_replay": ["reward.kind=rule_aware", "replay.enabled=true"],
}
COLUMNS = RELEVANCE_COLUMNS + ["x_rule_adherence", "x_hallucination_rate", "x_format_error_rate", "train_acc_std",
                               "reward_var", "guided_groups", "guided_acc"]


def train(a, out: Path) -> dict[str, Path]:
    """{system: final/}: sft (given), dpo and grpo (one pipeline run), and the GRPO variants from dpo."""
    cfg = PipelineConfig(data=DataStage(data_dir=str(a.data)), start_model=str(a.sft),
                         sample=SampleStage(n=4, max_prompts=a.max_prompts, max_new_tokens=48, prompts_per_batch=16),
                         dpo=trainer_config(DPOConfig, "dpo_chorus", a.dpo_set),
                         grpo=trainer_config(GRPOConfig, "grpo_chorus", a.grpo_set))
    models = {"sft": Path(a.sft), **run_chain(cfg, out, ["sample", "dpo", "grpo"], COMMAND)}
    start = models.get("dpo", models["sft"])  # no preference pair: GRPO starts from SFT, as in the pipeline
    for name, sets in VARIANTS.items():
        grpo = trainer_config(GRPOConfig, "grpo_chorus", [*sets, *a.grpo_set])
        variant = dataclasses.replace(cfg, grpo=grpo, start_model=str(start))
        models[name] = run_chain(variant, out / name, ["grpo"], COMMAND)["grpo"]
    return models


def stability(run_dir: Path) -> dict:
    """The spread of GRPO's train accuracy over steps, its reward variance, and guided replay's counts."""
    log = read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    acc = [r["accuracy"] for r in log if "accuracy" in r and "reward_mean" in r]  # GRPO train accuracy per step
    rewards = [r["reward_mean"] for r in log if "reward_mean" in r]
    rollouts = sum(r.get("guided_rollouts", 0) for r in log)
    guided_right = sum(r.get("guided_accuracy", 0) * r.get("guided_rollouts", 0) for r in log)
    return {"train_acc_std": float(np.std(acc)) if acc else float("nan"),
            "reward_var": float(np.var(rewards)) if acc else float("nan"),
            "guided_groups": sum(r.get("guided_groups", 0) for r in log), "guided_acc": guided_right / max(rollouts, 1)}


def evaluate(models: dict[str, Path], data: str, out: Path) -> list[dict]:
    """Each system on test with its CoT decoded (cached in OUT/NAME.json), with its training stability."""
    from searchrl.relevance.scoring.evaluate import evaluate_model
    ds, rows = load_dataset(data), []
    for name, model in models.items():
        path = out / f"{name}.json"
        if not path.exists():
            write_metrics_json(path, "relevance", ds.card.get("name", data), "test",
                               evaluate_model(model, ds, "test", decode=True))
        rows.append({**read_metrics_json(path)["rows"][0], "system": name, **stability(model.parent)})
    return rows


def plot(models: dict[str, Path], out: Path) -> None:
    """Learning curves to OUT/plots: valid macro-F1 of DPO and the GRPO runs, GRPO's train reward and accuracy."""
    from searchrl.errors import UserError
    runs = {"DPO": models.get("dpo"), "GRPO": models["grpo"], "GRPO+shaping": models["grpo_shaping"],
            "GRPO+shaping+replay": models["grpo_shaping_replay"]}
    runs = {k: v.parent for k, v in runs.items() if v is not None}
    for chosen, keys, smooth in ((runs, ["valid_macro_f1"], 1),
                                 ({k: v for k, v in runs.items() if k != "DPO"}, ["reward_mean", "accuracy"], 5)):
        try:
            plot_runs(chosen, keys, out / "plots", smooth=smooth)
        except UserError as e:  # a metric no run logged (eval.every=0): the table stands without its curve
            print(f"(no plot of {keys}: {e})")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/quickstart/data", help="prepared dataset (the quickstart's)")
    ap.add_argument("--sft", default="runs/quickstart/sft/final", help="the SFT model every stage starts from")
    ap.add_argument("--out", default="runs/rl_ablations_after_full_sft")
    ap.add_argument("--max-prompts", type=int, default=512, help="pass@4 prompts: a seeded subset of the train pairs")
    ap.add_argument("--dpo-set", action="append", default=[], metavar="KEY=VALUE", help="a DPO override")
    ap.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE", help="a GRPO override (every run)")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args(argv)
    if not (Path(a.sft) / "relevance_config.json").exists():
        raise SystemExit(f"error: --sft {a.sft}: no relevance model there (run `bash scripts/quickstart.sh` first)")
    out = Path(a.out)
    models = train(a, out)
    rows = evaluate(models, a.data, out)
    plot(models, out)
    md = format_table(rows, COLUMNS, title="RL stages from the quickstart's SFT model, Chorus test "
                                           "(argmax grade; CoT decoded greedily)")
    return write_report({"rows": rows}, md, a.json, a.md)["rows"]


if __name__ == "__main__":
    run_main(main)
