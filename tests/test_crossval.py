"""Cross-validation over queries: disjoint folds that cover every query once, re-split datasets, a tiny run."""

import json

import numpy as np
import pytest
from conftest import sft_config_for_tests

from searchrl.data.schema import load_dataset, write_dataset
from searchrl.errors import ConfigError
from searchrl.eval.crossval import crossval, fold_dataset, query_folds, sft_rl_split, summarize


def test_folds_are_disjoint_cover_every_query_once_and_are_seeded(tiny_data):
    ds = load_dataset(tiny_data)
    folds = query_folds(ds.queries["query_id"], 5)
    assert set(folds) == set(ds.queries["query_id"]) and sorted(set(folds.values())) == [0, 1, 2, 3, 4]
    assert sorted(np.bincount(list(folds.values()))) == [2, 2, 2, 2, 2]
    assert query_folds(ds.queries["query_id"], 5) == folds and query_folds(ds.queries["query_id"], 5, seed=1) != folds
    tested = []
    for f in range(5):
        split = fold_dataset(ds, folds, f).queries.set_index("query_id")["split"]
        test, valid = set(split[split == "test"].index), set(split[split == "valid"].index)
        assert not test & valid and len(test) == len(valid) == 2 and len(split[split == "train"]) == 6
        tested += sorted(test)
    assert sorted(tested) == sorted(ds.queries["query_id"])  # each query tested exactly once
    with pytest.raises(ValueError, match="--cv 11"):
        query_folds(ds.queries["query_id"], 11)


def test_sft_rl_split_gives_sft_and_rl_disjoint_train_queries_and_keeps_valid_and_test(tiny_data, tmp_path):
    fds = fold_dataset(load_dataset(tiny_data), query_folds(load_dataset(tiny_data).queries["query_id"], 5), 0)
    sft, rl = sft_rl_split(fds, 0.5, seed=0)
    train = set(fds.split("train").queries["query_id"])
    a, b = set(sft.split("train").queries["query_id"]), set(rl.split("train").queries["query_id"])
    assert a and b and not a & b and a | b == train and len(a) == 3  # half of the 6 train queries each
    for part in (sft, rl):
        for name in ("valid", "test"):  # held-out splits untouched
            assert part.split(name).queries.equals(fds.split(name).queries)
        assert set(part.judgments["query_id"]) == set(part.queries["query_id"])  # the other share's labels gone
        write_dataset(part, tmp_path / f"d{len(list(tmp_path.iterdir()))}")  # a valid dataset on disk
    again, other = sft_rl_split(fds, 0.5, seed=0)[0], sft_rl_split(fds, 0.5, seed=1)[0]
    assert set(again.split("train").queries["query_id"]) == a
    assert set(other.split("train").queries["query_id"]) != a  # the split is seeded
    assert len(sft_rl_split(fds, 0.2)[0].split("train").queries) == 1
    for bad in (0, 1, 1.5):
        with pytest.raises(ConfigError, match="sft_fraction"):
            sft_rl_split(fds, bad)


@pytest.mark.slow
def test_crossval_predicts_every_pair_once_and_summarizes_with_intervals(tiny_data, tmp_path):
    ds = load_dataset(tiny_data)
    cfg = sft_config_for_tests({"model": "tiny-qwen2", "prompt": {"instruction": "Grade it.", "max_note_chars": 20},
                                       "max_length": 256, "batch_size": 4, "optim": {"lr": 3e-3, "max_steps": 2},
                                       "run": {"device": "cpu", "progress": False}})
    result = crossval(cfg, ds, k=2, seeds=(0,), out=tmp_path)
    assert sorted(zip(result["query_id"], result["grade"])) == sorted(
        zip(ds.judgments["query_id"], ds.judgments["grade"].astype(int)))
    for system, p in result["systems"].items():
        assert all(len(row) == len(result["grade"]) for row in p["score"] + p["pred"] if row), system
    rows = {r["system"]: r for r in summarize(result, "model", n_boot=100)}
    assert {"model", "bm25-thresholds", "minilm-cosine", "rules"} <= set(rows)
    lo, hi = rows["model"]["x_ci"]["good_f1"]
    assert lo <= rows["model"]["good_f1"] <= hi
    diff = rows["minilm-cosine"]["x_auc_diff_vs_ref"]
    assert diff[1] <= diff[0] <= diff[2]
    # a re-run reuses each finished fold (same config): no training step is taken again, same predictions
    from unittest import mock
    with mock.patch("searchrl.relevance.train.sft.run_sft", side_effect=AssertionError("retrained a finished fold")):
        again = crossval(cfg, ds, k=2, seeds=(0,), out=tmp_path)
    assert again["systems"]["model"]["score"] == result["systems"]["model"]["score"]
    with mock.patch("searchrl.relevance.train.sft.run_sft", side_effect=AssertionError("retrained a finished fold")):
        part = crossval(cfg, ds, k=2, seeds=(0,), out=tmp_path, folds_to_run=[1])  # a subset of the folds
    assert set(part["fold"]) == {1} and len(part["grade"]) == result["fold"].count(1)
    with pytest.raises(ConfigError):
        crossval(cfg, ds, k=2, seeds=(0,), out=tmp_path, folds_to_run=[2])
    # --decode: the label-first model's reasoning, on every test pair of every fold, with intervals; the
    # grammar makes even an untrained model's completions parse
    with mock.patch("searchrl.relevance.train.sft.run_sft", side_effect=AssertionError("retrained a finished fold")):
        decoded = crossval(cfg, ds, k=2, seeds=(0,), out=tmp_path, baselines=False, decode=True)
    assert len(decoded["systems"]["model"]["reasoning_pairs"][0]["parsed"]) == len(decoded["grade"])
    row = summarize(decoded, "model", n_boot=100)[0]
    assert row["x_parse_rate"] == 1.0 and 0.0 <= row["x_self_consistency"] <= 1.0
    for key in ("x_parse_rate", "x_step_agreement", "x_self_consistency"):
        lo, hi = row["x_ci"][key]
        assert lo <= row[key] <= hi, key
    with mock.patch("searchrl.relevance.scoring.evaluate.decode_completions",
                    side_effect=AssertionError("decoded a finished fold again")):
        again = crossval(cfg, ds, k=2, seeds=(0,), out=tmp_path, baselines=False, decode=True)
    assert again["systems"]["model"]["reasoning_pairs"] == decoded["systems"]["model"]["reasoning_pairs"]
    # a model saved with another decoder (here token-by-token intents) is decoded again, its fold alone
    import dataclasses

    from searchrl.relevance.model.scorer_config import load_scorer_config, update_scorer_config
    from searchrl.relevance.scoring.evaluate import decode_completions
    final = tmp_path / "fold0" / "seed0" / "sft" / "final"
    update_scorer_config(final, prompt=dataclasses.replace(load_scorer_config(final).prompt, intent_beam=1))
    with mock.patch("searchrl.relevance.scoring.evaluate.decode_completions", wraps=decode_completions) as decode:
        redone = crossval(cfg, ds, k=2, seeds=(0,), out=tmp_path, baselines=False, decode=True)
    assert decode.call_count == 1
    # a copy of the run directory is the same run: nothing is trained or decoded again
    import shutil
    copy = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(tmp_path, copy)
    with mock.patch("searchrl.relevance.train.sft.run_sft", side_effect=AssertionError("retrained a copied fold")), \
            mock.patch("searchrl.relevance.scoring.evaluate.decode_completions",
                       side_effect=AssertionError("decoded a copied fold again")):
        copied = crossval(cfg, ds, k=2, seeds=(0,), out=copy, baselines=False, decode=True)
    assert copied["systems"]["model"]["reasoning_pairs"] == redone["systems"]["model"]["reasoning_pairs"]


@pytest.mark.slow
def test_a_cot_first_recipe_is_decoded_and_its_written_grade_scored(tiny_data, tmp_path):
    ds = load_dataset(tiny_data)
    cfg = sft_config_for_tests({"model": "tiny-qwen2", "prompt": {"order": "cot_first", "instruction": "Grade.",
                                                                        "max_note_chars": 20},
                                       "max_length": 256, "batch_size": 4, "optim": {"lr": 3e-3, "max_steps": 2},
                                       "eval": {"max_new_tokens": 12}, "run": {"device": "cpu", "progress": False}})
    result = crossval(cfg, ds, k=2, seeds=(0,), out=tmp_path, baselines=False)
    pred, score = result["systems"]["model"]["pred"][0], result["systems"]["model"]["score"][0]
    assert len(pred) == len(result["grade"]) and set(pred) <= {1, 2, 3, 4} and score == [float(g) for g in pred]
    import json
    for fold in (0, 1):
        lines = [json.loads(x) for x in (tmp_path / f"fold{fold}" / "seed0" / "test_completions.jsonl").open()]
        assert len(lines) == result["fold"].count(fold) and all(set(x) == {"completion", "grade", "parsed",
                                                                             "self_consistent", "held_to", "rule_grade"} for x in lines)
        assert not (tmp_path / f"fold{fold}" / "seed0" / "test_probs.npy").exists()  # no probabilities to save


def test_a_fold_whose_training_config_changed_trains_afresh_and_one_changed_in_decoding_only_resumes(
        tiny_data, tmp_path, capsys):
    """A finished fold under another config is not resumed from its checkpoints (that would finish the other
    config's model): it trains from step 0. A change only decoding reads (the type slugs) keeps the model, which
    resumes its own run and is decoded again."""
    ds = load_dataset(tiny_data)
    base = {"model": "tiny-qwen2", "prompt": {"instruction": "Grade it.", "max_note_chars": 0},
            "max_length": 256, "batch_size": 4, "optim": {"lr": 3e-3, "max_steps": 2},
            "run": {"device": "cpu", "progress": False, "save_every": 1}}
    crossval(sft_config_for_tests(base), ds, k=2, out=tmp_path, baselines=False, folds_to_run=[0], decode=True)
    capsys.readouterr()
    crossval(sft_config_for_tests({**base, "optim": {"lr": 1e-3, "max_steps": 2}}), ds, k=2, out=tmp_path,
             baselines=False, folds_to_run=[0])
    assert "resumed from" not in capsys.readouterr().out
    sft_dir = tmp_path / "fold0" / "seed0" / "sft"
    assert [json.loads(x)["step"] for x in (sft_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    free = {**base, "optim": {"lr": 1e-3, "max_steps": 2}, "prompt": {**base["prompt"], "slugs": "free"}}
    crossval(sft_config_for_tests(free), ds, k=2, out=tmp_path, baselines=False, folds_to_run=[0], decode=True)
    assert "resumed from" in capsys.readouterr().out
    saved = json.loads((sft_dir / "final" / "relevance_config.json").read_text())
    assert saved["prompt"]["slugs"] == "free"
