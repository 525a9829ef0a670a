"""experiments/rgrpo_judge_quality.py at its smallest setting (what CI runs): one seed, two judges, one step a
stage."""

import json

import pytest

from experiments import rgrpo_judge_quality


@pytest.mark.slow
def test_the_smallest_setting_trains_every_system_and_orders_the_judges(chorus_dir, tmp_path):
    out = tmp_path / "d"
    result = rgrpo_judge_quality.main(["--data", str(chorus_dir), "--seeds", "0", "--judges", "random,rules",
                                 "--out", str(out), "--json", str(tmp_path / "d.json"), "--md", str(tmp_path / "d.md"),
                                 "--set", "max_products=600", "--set", "optim.max_steps=1",
                                 "--set", "run.save_every=1"])
    systems = {r["system"]: r for r in result["rows"]}
    assert set(systems) == {"sft", "hardneg", "rgrpo:random", "rgrpo:rules", "rgrpo:rules:no_exclusivity"}
    claims = {c["claim"].split(" (")[0]: c for c in result["claims"]}
    assert set(claims) == {"gain grows with judge quality", "exclusivity lowers BM25 overlap@10"}
    assert "rgrpo:rules - rgrpo:random" in claims["gain grows with judge quality"]["claim"]  # ends by judge AUC
    assert all(c["lo"] <= c["mean"] <= c["hi"] for c in claims.values())
    q = result["judge_quality"]
    assert q["random"]["auc_per_query"] < 0.65 < q["rules"]["auc_per_query"]  # the judges differ in quality
    for name in ("rgrpo:random", "rgrpo:rules"):
        iv = systems[name]["vs_sft"]
        assert iv["lo"] <= iv["mean"] <= iv["hi"]
    assert json.loads((tmp_path / "d.json").read_text())["queries"] == result["queries"] > 0
    assert "rgrpo:rules" in (tmp_path / "d.md").read_text()
    # a re-run reuses every stage (same config) and only evaluates
    again = rgrpo_judge_quality.main(["--data", str(chorus_dir), "--seeds", "0", "--judges", "random,rules",
                                "--out", str(out), "--set", "max_products=600", "--set", "optim.max_steps=1",
                                "--set", "run.save_every=1"])
    assert [r["ndcg@10"] for r in again["rows"]] == pytest.approx([r["ndcg@10"] for r in result["rows"]])
