"""`searchrl tune-tiering` and `searchrl eval relevance` (argmax, tiered and per-grade thresholds side by side)."""

import shutil

import numpy as np

from searchrl.cli import main
from searchrl.data.schema import load_dataset
from searchrl.metrics.measures import classification_metrics, read_metrics_json
from searchrl.relevance.model.scorer_config import load_scorer_config
from searchrl.relevance.scoring.evaluate import split_probs, tune_tiering
from searchrl.relevance.scoring.scorer import RelevanceScorer
from searchrl.relevance.scoring.tiering import tiered_grades


def test_tune_tiering_stores_beta_and_eval_reports_three_decisions(tiny_model_dir, tiny_data, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    ds = load_dataset(tiny_data)
    assert main(["tune-tiering", "--model", str(model), "--data", str(tiny_data), "--split", "train"]) == 0
    assert "stored in" in capsys.readouterr().out
    cfg = load_scorer_config(model)
    probs, gold, _ = split_probs(RelevanceScorer.load(model), ds, "train")
    assert len(gold) == len(ds.split("train").pairs())
    tuned = classification_metrics(gold, tiered_grades(probs, cfg.beta).tolist())["macro_f1"]
    assert tuned >= classification_metrics(gold, tiered_grades(probs, 0.5).tolist())["macro_f1"] - 1e-12
    assert cfg.grade_thresholds is not None and len(cfg.grade_thresholds) == 3
    assert tune_tiering(model, ds, "train")["beta"] == cfg.beta  # deterministic

    assert main(["eval", "relevance", "--model", str(model), "--data", str(tiny_data), "--split", "train",
                 "--json", str(tmp_path / "m.json")]) == 0
    rows = read_metrics_json(tmp_path / "m.json")["rows"]
    assert [r["system"].split(" ")[-1] if i == 0 else r["system"].split(" ")[1] for i, r in enumerate(rows)] == \
        ["model", "tiered", "thresholds"]
    assert f"beta={cfg.beta:g}" in rows[1]["system"]
    assert np.isclose(rows[1]["macro_f1"], tuned)
