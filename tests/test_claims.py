"""experiments/claims.py: the claims page from the recorded last runs, and from the claim experiments' own JSON
(each experiment's tables and one-line claims, the verdict rule of metrics.stats), without running anything."""

import argparse
import json

import numpy as np
import pytest

from experiments import claims
from experiments.rl_stage_tables import contrasts, stuck_rows
from searchrl.eval.crossval import summarize
from searchrl.relevance.train.sample import summarize as pass_summary


def test_the_page_from_the_last_runs_says_where_its_figures_come_from(tmp_path):
    doc = json.loads(claims.LAST_RUN.read_text())
    for s in doc["sections"]:
        assert s["command"].startswith("python -m experiments.") and s["run"]
        for t in s["tables"]:
            assert t["rows"] and all(len(r) == len(t["columns"]) for r in t["rows"])
    path = claims.main(["--from-last-run", "--results", str(tmp_path)])
    page = path.read_text()
    assert path.name == "claims.md" and page.startswith("# Each recipe's claim, tested")
    assert "Written by `python -m experiments.claims --from-last-run`" in page
    glance = page.split("## Every claim at a glance")[1].split("\n## ")[0]
    claimed = [c for s in doc["sections"] for c in s["claims"]]
    assert len([x for x in glance.splitlines() if x.startswith("| ")]) == 1 + len(claimed)  # header + every claim
    assert all(f"| {c['claim']} | {c['difference']} |" in glance for c in claimed)
    for s in doc["sections"]:
        assert f"## {s['title']}" in page and s["command"] in page and s["run"] in page


def test_a_run_replaces_its_sections_in_the_record_and_keeps_the_others():
    recorded = [{"name": n, "run": "old", "claims": []} for n in ("a", "b", "c")]
    found = [{"name": "b", "claims": [1]}, {"name": "d", "claims": []}]
    out = claims.merged(found, recorded, "new")
    assert [(s["name"], s["run"]) for s in out] == [("a", "old"), ("b", "new"), ("c", "old"), ("d", "new")]
    assert out[1]["claims"] == [1] and recorded[1]["run"] == "old"  # the record passed in is not changed
    with pytest.raises(SystemExit):  # an unknown experiment is refused before anything runs
        claims.main(["--only", "rule_shapin"])


def rl_stages_report() -> dict:
    """A relevance_rl_stages report of made-up predictions: grpo right everywhere, sft wrong on half."""
    rng = np.random.default_rng(0)
    qids = [f"q{i // 8}" for i in range(80)]
    gold = np.array([1, 2, 3, 4] * 20)
    noisy = np.where(rng.random(80) < 0.5, gold, 1)
    systems = {name: {"pred": [p.tolist()], "score": [(p + rng.random(80)).tolist()]}
               for name, p in (("sft", noisy), ("dpo", noisy), ("grpo", gold), ("grpo_replay", gold))}
    result = {"query_id": qids, "grade": gold.tolist(), "fold": [0] * 80, "seeds": [0], "systems": systems,
              "stuck": {"grpo": {"query_id": qids[:16], "right": [1] * 16},
                        "grpo_replay": {"query_id": qids[:16], "right": [0] * 16}}}
    return {"rows": summarize(result, "sft", n_boot=100), "claims": contrasts(result, n_boot=100),
            "stability": {"grpo_replay": [{"reward_var": 0.01, "train_acc": 0.5, "guided_acc": 0.1,
                                            "guided_groups_acc": 0.02}]},
            "stuck": stuck_rows(result, n_boot=100), "rule_graded": {"rows": [], "claims": []},
            "scope": {"folds": [0], "seeds": [0], "queries": 10, "pairs": 80, "rule_queries": 0, "rule_pairs": 0},
            "wall_s": 60.0}


def test_the_page_from_the_experiments_json_carries_each_ones_tables_and_verdicts(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    record = tmp_path / "last_run_claims.json"
    record.write_text(claims.LAST_RUN.read_text())
    monkeypatch.setattr(claims, "LAST_RUN", record)
    rgrpo = {"claims": [{"claim": "gain grows with judge quality (nDCG@10, rgrpo:rules - rgrpo:random)",
                         "mean": 0.1, "lo": 0.02, "hi": 0.2, "verdict": "better"}],
             "seeds": [0], "queries": 21, "catalogue": 3000, "retriever": {"max_steps": 40},
             "rows": [{"system": "sft", "ndcg@10": 0.7, "hitrate@10": 0.5, "bm25_overlap@10": 0.4, "quality@10": 0.8,
                       "goodrate@10": 0.5, "seconds": 60.0}]}
    level = {"x_good_auc_per_query": 0.9, "good_f1": 0.7, "macro_f1": 0.4, "accuracy": 0.5, "n": 811,
             "x_queries": 27, "x_ci": {"x_good_auc_per_query": [0.8, 0.95], "good_f1": [0.6, 0.8],
                                      "macro_f1": [0.3, 0.5]}}
    order = {"folds": [0], "cot_first_decoded": {"completions": 811, "format_errors": 0.0},
             "rows": [{"system": "label_first", **level, "x_step_agreement": 0.5, "x_self_consistency": 0.55},
                      {"system": "cot_first", **level, "x_auc_diff_vs_ref": [0.38, 0.31, 0.45],
                       "x_good_f1_diff_vs_ref": [0.18, 0.02, 0.33], "x_self_consistency": 0.7,
                       "x_step_agreement": 0.43}]}
    shaping = {"queries": 27, "pairs": 802, "seeds": [0],
               "rows": [{"system": "sft", "adherence": [0.6, 0.5, 0.7], "format_error": [0.4, 0.3, 0.5],
                         "accuracy": [0.7, 0.6, 0.8], "macro_f1": [0.4, 0.3, 0.5]}],
               "claims": [{"contrast": c, "adherence": [-0.2, -0.36, -0.02], "format_error": [0.0, -0.3, 0.3],
                           "macro_f1": [0.03, 0.0, 0.05], "verdict": "lower"}
                          for c in ("grpo_shaping - grpo_outcome", "grpo_shaping - sft")]}
    sampled = {**pass_summary([4, 4, 0, 1] * 3, 4, [f"q{i // 2}" for i in range(12)], n_boot=100),
               "format_error_rate": 0.0, "pairs": 6, "pairs_from_samples": 4, "pairs_from_teacher": 2}
    passn = {"models": {"default": sampled}, "missing": ["llm (L: no relevance model there)"]}
    for name, doc in (("rgrpo_judge_quality", rgrpo), ("relevance_rl_stages", rl_stages_report()),
                      ("label_vs_cot_first", order), ("rule_shaping", shaping), ("pass_at_n", passn)):
        (out / f"{name}.json").write_text(json.dumps(doc))
    monkeypatch.setattr(claims, "run_experiments", lambda *a: pytest.fail("--from-json runs nothing"))
    page = claims.main(["--from-json", "--out", str(out), "--results", str(tmp_path / "results")]).read_text()
    glance = page.split("## Every claim at a glance")[1].split("\n## ")[0]
    assert "| gain grows with judge quality (nDCG@10, rgrpo:rules - rgrpo:random) | +0.100 [+0.020, +0.200] |" in glance
    assert "GRPO > SFT (grpo - sft) | macro-F1 +" in glance and "human labels: holds (macro-F1)" in glance
    assert "guided replay un-sticks" in glance and "| reversed |" in glance  # replay right 0 of 16, grpo 16 of 16
    assert "per-query AUC +0.380 [+0.310, +0.450]" in glance
    assert "| holds (CoT-first: 811 completions, parse rate 1.000, self-consistency 0.700)" in glance
    assert "| label_first | - | 0.500 | 0.550 | - |" in page  # each order's reasoning table row
    assert "follows them (self-consistency 0.700, label-first 0.550); those steps agree with the rule engine's on " \
           "0.430" in page  # the measured reason
    assert "| shaping raises rule adherence (grpo_shaping - sft) | adherence -0.200 [-0.360, -0.020] |" in glance
    for title in ("Retrieval-GRPO", "Relevance RL with room to improve", "Label-first vs CoT-first", "Rule-aware"):
        assert f"## {title}" in page
    assert "guided rollouts are right 0.100 of the time under the hint" in page  # against the same groups' own
    assert "(those groups' own rollouts 0.020); every unguided rollout 0.500" in page
    gain = sampled["pass@4"] - sampled["pass@1"]
    assert f"| pass@N finds right grades one sample misses (default) | pass@4 - pass@1 {gain:+.3f}" in glance
    assert "DPO pairs 4 from samples, 2 from the teacher" in glance and "Left out: llm (L: no relevance" in page
    record = json.loads(record.read_text())  # the record now holds this run's sections, the others kept
    assert {s["name"]: s["run"] for s in record["sections"]}["rule_shaping"].startswith("`python -m experiments.claims")
    assert "rgrpo_judge_quality_whole_catalogue" in {s["name"] for s in record["sections"]}


def test_the_claims_command_runs_each_experiment_at_its_documented_size(tmp_path):
    a = argparse.Namespace(
        data="D", model="M", cv_dir=str(tmp_path), seeds="0", judges="random,model", max_products=3000, steps=40,
        folds="0,1", order_folds="0", shaping_seeds="0", shaping_steps=10, pass_models="default=S")
    plan = claims.experiment_args(a, tmp_path)
    assert list(plan) == ["rgrpo_judge_quality", "relevance_rl_stages", "label_vs_cot_first", "rule_shaping",
                          "pass_at_n"]
    assert sorted(claims.NAMES) == sorted(plan)  # every experiment runs in one batch
    rgrpo, rl, order, shaping, passn = (" ".join(args) for args, _ in plan.values())
    assert "--models default=S" in passn
    assert "--set max_products=3000 --set optim.max_steps=40" in rgrpo and "--model M" in rgrpo
    assert "--folds 0,1" in rl and f"--cv-dir {tmp_path}" in rl  # sft_all: the CV run is there
    assert "--folds 0" in order
    assert "--steps 10 --grpo-set rollout.max_refill_rounds=1" in shaping and plan["rule_shaping"][1] == 2
    assert all(f"--json {tmp_path / name}.json" in " ".join(args) for name, (args, _) in plan.items())


def test_a_section_another_run_writes_meanwhile_is_kept(tmp_path, monkeypatch):
    """Two `--only` runs side by side: the record is read after this run's experiments, so the section the other
    run wrote in the meantime stays in it."""
    out, record = tmp_path / "run", tmp_path / "last_run_claims.json"
    out.mkdir()
    record.write_text(claims.LAST_RUN.read_text())
    monkeypatch.setattr(claims, "LAST_RUN", record)

    def other_run_writes_meanwhile(*a):
        doc = json.loads(record.read_text())
        doc["sections"] = [{**s, "run": "the other run"} if s["name"] == "pass_at_n" else s for s in doc["sections"]]
        record.write_text(json.dumps(doc))
        (out / "rule_shaping.json").write_text(json.dumps({
            "queries": 27, "pairs": 802, "seeds": [0],
            "rows": [{"system": "sft", "adherence": [0.6, 0.5, 0.7], "format_error": [0.0, 0.0, 0.0],
                      "accuracy": [0.7, 0.6, 0.8], "macro_f1": [0.4, 0.3, 0.5]}],
            "claims": [{"contrast": c, "adherence": [-0.2, -0.36, -0.02], "format_error": [0.0, 0.0, 0.0],
                        "macro_f1": [0.03, 0.0, 0.05], "verdict": "lower"}
                       for c in ("grpo_shaping - grpo_outcome", "grpo_shaping - sft")]}))
    monkeypatch.setattr(claims, "run_experiments", other_run_writes_meanwhile)
    claims.main(["--only", "rule_shaping", "--out", str(out), "--results", str(tmp_path / "results")])
    runs = {s["name"]: s["run"] for s in json.loads(record.read_text())["sections"]}
    assert runs["pass_at_n"] == "the other run" and runs["rule_shaping"].startswith("`python -m experiments.claims")
