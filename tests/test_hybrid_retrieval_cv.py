"""experiments/hybrid_retrieval_cv.py: the --quick setting end to end on Chorus (what CI runs, ~30 s on 2 idle
cores), and on the tiny catalogue a dense-only subset of systems, --choose-fusion and argument checks."""

import dataclasses
import json

import pytest

from experiments import hybrid_retrieval_cv as hcv
from searchrl.retrieval.hybrid import FUSION_GRID

KS = (10, 100, 1000)
ALL_ROWS = ["bm25", "zero-shot", "sft", "hardneg", "rgrpo", "rgrpo-nox", "hybrid(zero-shot)", "hybrid(sft)",
            "hybrid(hardneg)", "hybrid(rgrpo)", "hybrid(rgrpo-nox)"]


def test_quick_run_trains_every_system_and_writes_the_page(chorus_dir, tmp_path, capsys):
    run = tmp_path / "run"
    result = hcv.main(["--data", str(chorus_dir), "--quick", "--out", str(run)])
    printed = capsys.readouterr().out
    for stage in ("sft", "hardneg", "rgrpo", "rgrpo-nox"):  # each stage's wall time, each rebuild's cost
        assert f"[hybrid-cv] fold 0 {stage}: " in printed
    assert printed.count(" per rebuild (") == 2 and "encode and evaluate" in printed
    page = (run / "hybrid.md").read_text()
    assert page.startswith("# Hybrid retrieval") and "machine:" in page and "wall time" in page
    assert "Written by `python -m experiments.hybrid_retrieval_cv --data" in page and "--quick" in page
    doc = json.loads((run / "hybrid.json").read_text())
    assert doc["rows"] == ALL_ROWS and doc["folds"] == [0] and doc["summary"]["queries"] == 4  # 20 queries / 5
    assert doc["seconds"]["fold 0"]["rgrpo rebuild"] > 0 and doc["seconds"]["fold 0"]["sft"] > 0
    values = doc["values"]
    for system in ALL_ROWS:
        for k in KS:
            for q, hit in values[system][f"hitrate@{k}"].items():  # hitrate gained over BM25 = added - lost
                gain = hit - values["bm25"][f"hitrate@{k}"][q]
                assert gain == pytest.approx(values[system][f"added_recall@{k}"][q]
                                             - values[system][f"lost_recall@{k}"][q]), (system, k, q)
    assert set(values["bm25"]["added_recall@100"].values()) == {0.0}
    assert set(values["bm25"]["bm25_overlap@10"].values()) == {1.0}
    paired = {(p["system"], p["reference"], p["metric"]): p for p in doc["summary"]["paired"]}
    assert ("hybrid(rgrpo)", "bm25", "ndcg@10") in paired and ("rgrpo", "rgrpo-nox", "added_recall@1000") in paired
    assert {p["verdict"] for p in paired.values()} <= {"higher", "lower", "no difference"}
    assert result["summary"] == doc["summary"]


def test_a_dense_only_subset_trains_nothing(tiny_data, tmp_path):
    result = hcv.main(["--data", str(tiny_data), "--quick", "--systems", "bm25,zero-shot", "--out", str(tmp_path)])
    assert result["rows"] == ["bm25", "zero-shot", "hybrid(zero-shot)"]
    assert set(result["values"]) == set(result["rows"]) and not list(tmp_path.glob("fold0/ret_*"))
    assert (tmp_path / "hybrid.md").exists() and (tmp_path / "fold0" / "data").is_dir()


def test_choose_fusion_scores_the_grid_on_the_valid_split(tiny_data, tmp_path):
    result = hcv.main(["--data", str(tiny_data), "--quick", "--choose-fusion", "--out", str(tmp_path)])
    assert result["chosen"] in [dataclasses.asdict(g) for g in FUSION_GRID]
    assert {r["dense"] for r in result["rows"]} == {"bm25", "zero-shot", "sft", "mean"}
    assert [r["setting"] for r in result["rows"][:3]] == ["alone"] * 3  # each route alone, for reference
    assert len(result["rows"]) == 3 + 3 * len(FUSION_GRID)
    page = (tmp_path / "hybrid_fusion.md").read_text()
    assert "valid queries" in page and "**Chosen:" in page


@pytest.mark.parametrize("args", [["--systems", "bm25,colbert"], ["--folds", "5"], ["--judge", "model"],
                                  ["--judge", "crowd"]])
def test_bad_arguments_stop_before_any_work(args, tmp_path):
    with pytest.raises(SystemExit):
        hcv.main(["--data", str(tmp_path), *args])


def test_finished_folds_are_kept_and_reused_only_by_the_same_setting(tiny_data, tmp_path, capsys):
    """A fold's per-query values stay beside the page: a later run with the same setting reuses them (the page
    then covers them), a run with another setting measures afresh."""
    args = ["--data", str(tiny_data), "--quick", "--systems", "bm25,zero-shot", "--cv", "2", "--out",
            str(tmp_path / "run"), "--results-dir", str(tmp_path / "results")]
    first = hcv.main(args + ["--folds", "0"])
    assert len(list((tmp_path / "results" / "hybrid_folds").glob("*/fold0.json"))) == 1
    assert first["measured_folds"] == [0]
    assert "Partial: folds [1] of 2" in (tmp_path / "results" / "hybrid.md").read_text()
    capsys.readouterr()
    second = hcv.main(args + ["--folds", "1"])
    assert second["measured_folds"] == [0, 1] and "Partial" not in (tmp_path / "results" / "hybrid.md").read_text()
    assert second["values"]["bm25"]["ndcg@10"].items() >= first["values"]["bm25"]["ndcg@10"].items()
    again = hcv.main(args + ["--folds", "0"])
    assert "fold 0: reusing" in capsys.readouterr().out and again["values"] == second["values"]
    other = hcv.main(args[:-4] + ["--out", str(tmp_path / "run2"), "--results-dir", str(tmp_path / "results"),
                                  "--folds", "0", "--n-boot", "50"])
    assert other["measured_folds"] == [0, 1]  # n_boot is not part of what a fold measured: reused
    changed = hcv.main(args + ["--folds", "0", "--systems", "bm25"])
    assert changed["measured_folds"] == [0]  # another setting: fold 1's values are not its own
    assert hcv.main(args + ["--folds", "1"])["measured_folds"] == [0, 1]  # and it left the first setting's alone
