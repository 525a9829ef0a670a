"""The relevance model's commands: ``train sft|dpo|grpo``, ``sample``, ``tune-tiering``, ``eval relevance``
(``--cv``: query cross-validation), ``score``, ``export``, ``teacher agreement``, ``baseline relevance``.
"""

from __future__ import annotations

import json
import os

from searchrl.config import load_config
from searchrl.data.schema import load_dataset
from searchrl.errors import ConfigError
from searchrl.eval.baselines import relevance_baselines
from searchrl.eval.crossval import crossval, summarize
from searchrl.metrics.measures import RELEVANCE_COLUMNS, print_table, write_metrics_json
from searchrl.metrics.stats import format_difference
from searchrl.relevance.rules.engine import RuleEngine
from searchrl.relevance.scoring.evaluate import evaluate_model, rule_agreement, tune_tiering
from searchrl.relevance.scoring.export import export_model
from searchrl.relevance.scoring.scorer import score_file
from searchrl.relevance.train.dpo import DPOConfig, train_dpo
from searchrl.relevance.train.grpo import GRPOConfig, train_grpo
from searchrl.relevance.train.sample import format_table, sample_preferences, write_pairs
from searchrl.relevance.train.sft import SFTConfig, run_sft


def cmd_baseline_relevance(a) -> None:
    ds = load_dataset(a.data)
    rows = relevance_baselines(ds, a.split)
    print_table(rows, RELEVANCE_COLUMNS, title=f"relevance baselines: {ds.card.get('name', a.data)} {a.split}")
    if a.json:
        write_metrics_json(a.json, "relevance", ds.card.get("name", str(a.data)), a.split, rows)


def cmd_train_sft(a) -> None:
    # no --config (or "default"): SFTConfig's defaults, the default relevance model's recipe
    cfg = load_config(SFTConfig, None if a.config == "default" else a.config, a.set)
    result = run_sft(cfg)
    if result.final_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"sft: saved {result.final_dir} after {result.step} steps; last eval {result.last_eval}")


def cmd_sample(a) -> None:

    rows, table = sample_preferences(a.model, load_dataset(a.data), a.n, a.split, a.temperature, a.top_p,
                                     a.max_new_tokens, a.prompts_per_batch, a.seed, a.max_prompts, a.rules)
    write_pairs(a.out, rows)
    print(format_table(table))
    print(f"wrote {len(rows)} preference pairs -> {a.out}")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(table, f, indent=2)


def cmd_train_dpo(a) -> None:
    result = train_dpo(load_config(DPOConfig, a.config, a.set))
    if result.final_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"dpo: saved {result.final_dir} after {result.step} steps; last eval {result.last_eval}")


def cmd_train_grpo(a) -> None:
    result = train_grpo(load_config(GRPOConfig, a.config, a.set))
    if result.final_dir is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"grpo: saved {result.final_dir} after {result.step} steps ({result.rollouts} rollouts); "
              f"last eval {result.last_eval}")


def cmd_eval_relevance(a) -> None:
    if a.cv:
        return _crossval(a)
    if not a.model:
        raise ConfigError("eval relevance needs --model DIR (or --cv K --config SFT.yaml)")
    ds = load_dataset(a.data)
    rows = evaluate_model(a.model, ds, a.split, decode=a.decode, batch_size=a.batch_size)
    extra = [k for k in rows[0] if k.startswith("x_")]
    print_table(rows, RELEVANCE_COLUMNS + extra, title=f"relevance: {a.model} on {a.split}")
    if a.json:
        write_metrics_json(a.json, "relevance", ds.card.get("name", str(a.data)), a.split, rows)


def cmd_tune_tiering(a) -> None:
    r = tune_tiering(a.model, load_dataset(a.data), a.split, batch_size=a.batch_size)
    print(f"tiering on {r['split']} ({r['n']} pairs): beta={r['beta']:g} macro-F1 {r['macro_f1_tiered']:.4f}; "
          f"per-grade thresholds {r['grade_thresholds']} macro-F1 {r['macro_f1_thresholds']:.4f}; "
          f"argmax macro-F1 {r['macro_f1_argmax']:.4f}")
    print(f"stored in {a.model}/relevance_config.json")


def cmd_score(a) -> None:
    r = score_file(a.model, a.input, a.output, on_error=a.on_error, batch_size=a.batch_size)
    print(f"scored {r['pairs']} pairs of {r['queries']} queries in {r['seconds']:.1f}s "
          f"({r['pairs_per_s']:.1f} pairs/s, {r['threads']} threads) -> {a.output}")
    if r["skipped"]:
        print(f"skipped {r['skipped']} bad row(s): {r['skipped_by_reason']}")


def cmd_export(a) -> None:
    out = export_model(a.model, a.output, overwrite=a.overwrite)
    print(f"exported {a.model} -> {out} (safetensors, tokenizer, relevance_config.json)")


def cmd_teacher_agreement(a) -> None:
    ds = load_dataset(a.data)
    rows = rule_agreement(ds, RuleEngine.from_yaml(a.rules))
    print_table(rows, RELEVANCE_COLUMNS, title="rule grade vs human grade")
    for r in rows:
        print(f"{r['system']} confusion (rows = human L1..L4, columns = rules L1..L4): {r['confusion']}")
    if a.json:
        write_metrics_json(a.json, "relevance", ds.card.get("name", str(a.data)), "all", rows)


def _crossval(a) -> None:
    cfg = load_config(SFTConfig, a.config, a.set + ["run.progress=false"])  # no --config: the default recipe
    ds = load_dataset(a.data)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    folds = [int(f) for f in a.folds.split(",") if f.strip()] if a.folds else None
    from searchrl.eval.free_signals import free_signal_failures, warning_line
    from searchrl.relevance.scoring.reasoning import REASONING_MEASURES
    result = crossval(cfg, ds, a.cv, seeds, a.out, folds_to_run=folds, decode=a.decode)
    rows = summarize(result, reference="model")
    keep = {"x_good_auc", "x_good_auc_per_query", *(k for k, _ in REASONING_MEASURES)}
    shown = [{**{k: v for k, v in r.items() if not k.startswith("x_") or k in keep},
              **{f"{m} 95%": f"[{lo:.3f}, {hi:.3f}]" for m, (lo, hi) in r.get("x_ci", {}).items()},
              **({"AUC diff (model - this)": format_difference(r["x_auc_diff_vs_ref"])}
                 if "x_auc_diff_vs_ref" in r else {})} for r in rows]
    print_table(shown, title=f"{a.cv}-fold cross-validation over {rows[0]['x_queries']} queries, seeds {seeds}")
    failures = free_signal_failures(rows, "model")  # the recipe against the free signals on the same folds
    for failure in failures:
        print(warning_line(failure))
    write_metrics_json(os.path.join(a.out, "crossval_summary.json"), "relevance", ds.card.get("name", str(a.data)),
                       f"cv{a.cv}", rows, free_signal_failures=failures)
