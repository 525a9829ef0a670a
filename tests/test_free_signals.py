"""The check that a trained model is not below the free signals (eval/free_signals.py), on hand-made rows."""

import pytest

from searchrl.eval.free_signals import FREE_SIGNAL_CHECKS, free_signal_failures, warning_line

SIGNALS = [{"system": "majority", "accuracy": 0.45, "macro_f1": 0.16},
           {"system": "bm25-thresholds", "accuracy": 0.40, "macro_f1": 0.33, "x_good_auc": 0.70,
            "x_good_auc_per_query": 0.72},
           {"system": "minilm-cosine", "x_good_auc": 0.665, "x_good_auc_per_query": 0.75}]
GOOD = {"system": "sft", "accuracy": 0.60, "macro_f1": 0.45, "x_good_auc": 0.80, "x_good_auc_per_query": 0.82}


def test_a_model_above_every_signal_passes():
    assert free_signal_failures(SIGNALS + [GOOD], "sft") == []
    tied = dict(GOOD, x_good_auc=0.70, macro_f1=0.33)  # equal is not below
    assert free_signal_failures(SIGNALS + [tied], "sft") == []


@pytest.mark.parametrize("key, value, failed", [
    ("x_good_auc", 0.596, [("pooled AUC of P(Good)", "minilm-cosine", 0.665),
                           ("pooled AUC of P(Good)", "bm25-thresholds", 0.70)]),
    ("x_good_auc", 0.68, [("pooled AUC of P(Good)", "bm25-thresholds", 0.70)]),
    ("x_good_auc_per_query", 0.73, [("per-query AUC of P(Good)", "minilm-cosine", 0.75)]),
    ("x_good_auc_per_query", 0.70, [("per-query AUC of P(Good)", "minilm-cosine", 0.75),
                                    ("per-query AUC of P(Good)", "bm25-thresholds", 0.72)]),
    ("macro_f1", 0.30, [("macro-F1", "bm25-thresholds", 0.33)]),
    ("accuracy", 0.44, [("accuracy", "majority", 0.45)]),
])
def test_a_model_below_a_signal_fails_that_measure_only(key, value, failed):
    got = free_signal_failures(SIGNALS + [dict(GOOD, **{key: value})], "sft")
    assert [(f["measure"], f["signal"], f["signal_value"]) for f in got] == failed
    assert all(f["model"] == value and f["system"] == "sft" for f in got)


def test_every_measure_is_checked_and_missing_values_are_not_failures():
    assert {m for m, _, _ in FREE_SIGNAL_CHECKS} == {"pooled AUC of P(Good)", "per-query AUC of P(Good)", "macro-F1",
                                                     "accuracy"}
    bad = {"system": "sft", "accuracy": 0.1, "macro_f1": 0.1, "x_good_auc": 0.1, "x_good_auc_per_query": 0.1}
    assert len(free_signal_failures(SIGNALS + [bad], "sft")) == 6  # 2 + 2 + 1 + 1 comparisons
    assert free_signal_failures([bad], "sft") == []  # no signal rows: nothing to compare
    assert free_signal_failures(SIGNALS + [{"system": "sft", "accuracy": None}], "sft") == []
    assert free_signal_failures(SIGNALS + [bad], "grpo") == []  # no row of that system


def test_the_warning_is_one_line_with_both_values():
    line = warning_line({"measure": "pooled AUC of P(Good)", "system": "grpo", "model": 0.596,
                         "signal": "minilm-cosine", "signal_value": 0.665})
    assert line == "warning: grpo is below minilm-cosine on pooled AUC of P(Good): 0.596 < 0.665"


def test_the_pipelines_evaluate_stage_records_prints_and_flags_the_failed_checks(tiny_model_dir, tiny_data,
                                                                                  tmp_path, capsys):
    """Hand-made baseline predictions that a random model cannot beat: every failure is in relevance.json's
    free_signal_failures and on the final model's row (the report's warning box reads it), one warning line each;
    the decoded reasoning measures are on that row and printed."""
    import json
    import shutil

    from searchrl.data.schema import load_dataset
    from searchrl.pipeline.config import PipelineConfig
    from searchrl.pipeline.context import Context
    from searchrl.pipeline.stages import _write_predictions, evaluate
    shutil.copytree(tiny_model_dir, tmp_path / "sft" / "final")
    pairs = load_dataset(tiny_data).split("test").pairs()
    gold = pairs["grade"].to_numpy()
    (tmp_path / "baselines").mkdir()
    _write_predictions(tmp_path / "baselines" / "predictions.json", pairs, {
        "majority": {"pred": [1] * len(gold), "score": None},  # the tiny test split is mostly L1
        "bm25-thresholds": {"pred": gold, "score": gold.astype(float)},  # a perfect signal
        "minilm-cosine": {"pred": None, "score": gold.astype(float)}})
    cfg = PipelineConfig()
    cfg.data.data_dir, cfg.evaluate.bootstrap, cfg.evaluate.max_decode = str(tiny_data), 20, 4
    summary = evaluate(Context(cfg=cfg, out=tmp_path, plan=["evaluate"]))
    doc = json.loads((tmp_path / "evaluate" / "relevance.json").read_text())
    rows = {r["system"]: r for r in doc["rows"]}
    failures = doc["free_signal_failures"]
    assert failures == summary["free_signal_failures"] == rows["sft"]["x_free_signal_failures"]
    assert {(f["measure"], f["signal"]) for f in failures} >= {
        ("pooled AUC of P(Good)", "minilm-cosine"), ("pooled AUC of P(Good)", "bm25-thresholds"),
        ("per-query AUC of P(Good)", "minilm-cosine"), ("macro-F1", "bm25-thresholds")}
    assert rows["minilm-cosine"]["x_good_auc"] == rows["minilm-cosine"]["x_good_auc_per_query"] == 1.0
    printed = capsys.readouterr().out
    assert sum(line.startswith("[evaluate] warning: sft is below ") for line in printed.splitlines()) == len(failures)
    assert "x_parse_rate" in printed and "x_step_agreement_verdict" in printed
    assert "x_parse_rate" in rows["sft"] and "x_self_consistency" in rows["sft"]


def cv_result() -> dict:
    """A hand-made crossval result (no training): 4 queries x 4 pairs; the model ranks worse than MiniLM cosine and
    grades worse than the majority class; its decoded reasoning counts pooled over two folds."""
    import numpy as np
    grade = [4, 3, 1, 1] * 4
    rng = np.random.default_rng(0)
    noisy = (np.asarray(grade) + rng.normal(0, 2.5, len(grade))).tolist()
    counts = {"completions": 16, "parsed": 12, "self_consistent": 9,
              "step_agree": {"query": 12, "item": 11, "category": 10, "attribute": 8, "verdict": 7}}
    return {"query_id": [f"q{i // 4}" for i in range(16)], "grade": grade, "fold": [i // 8 for i in range(16)],
            "k": 2, "seeds": [0], "systems": {
                "majority": {"pred": [[1] * 16], "score": [[]]},
                "bm25-thresholds": {"pred": [grade], "score": [[float(g) for g in grade]]},
                "minilm-cosine": {"pred": [[]], "score": [[float(g) for g in grade]]},
                "model": {"pred": [[2] * 16], "score": [noisy], "reasoning": counts}}}


def test_crossval_summary_rows_carry_pooled_auc_and_reasoning_and_fail_the_checks():
    from searchrl.eval.crossval import summarize
    rows = {r["system"]: r for r in summarize(cv_result(), "model", n_boot=50)}
    assert rows["minilm-cosine"]["x_good_auc"] == 1.0 and rows["model"]["x_good_auc"] < 1.0
    assert rows["model"]["x_parse_rate"] == 0.75 and rows["model"]["x_self_consistency"] == 0.75
    assert rows["model"]["x_step_agreement"] == pytest.approx(48 / 60)
    assert "x_parse_rate" not in rows["majority"] and rows["majority"]["accuracy"] == 0.5
    failed = {(f["measure"], f["signal"]) for f in free_signal_failures(list(rows.values()), "model")}
    assert failed == {("pooled AUC of P(Good)", "minilm-cosine"), ("pooled AUC of P(Good)", "bm25-thresholds"),
                      ("per-query AUC of P(Good)", "minilm-cosine"), ("per-query AUC of P(Good)", "bm25-thresholds"),
                      ("macro-F1", "bm25-thresholds"), ("accuracy", "majority")}


def test_eval_relevance_cv_prints_the_warnings_and_the_reasoning_and_records_the_failures(tiny_data, tmp_path,
                                                                                         monkeypatch, capsys):
    import json

    from searchrl.cli import main
    from searchrl.commands import relevance as relevance_commands
    # the folds' training is tested elsewhere
    monkeypatch.setattr(relevance_commands, "crossval", lambda *a, **k: cv_result())
    (tmp_path / "sft.yaml").write_text("{}\n")  # the default recipe (never trained here)
    assert main(["eval", "relevance", "--cv", "2", "--config", str(tmp_path / "sft.yaml"), "--data", str(tiny_data),
                 "--out", str(tmp_path / "cv")]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((tmp_path / "cv" / "crossval_summary.json").read_text())
    assert len(doc["free_signal_failures"]) == 6
    assert sum(line.startswith("warning: model is below ") for line in printed.splitlines()) == 6
    assert "x_parse_rate" in printed and "x_discriminative_hallucination_rate" in printed and "x_good_auc " in printed
