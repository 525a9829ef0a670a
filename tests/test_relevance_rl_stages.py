"""experiments/relevance_rl_stages.py at its smallest setting (what CI runs): one fold of 40 Chorus queries, tiny
stages, through the pipeline's own stages."""

import json

import numpy as np
import pytest

from experiments import relevance_rl_stages


@pytest.mark.slow
def test_the_smoke_setting_trains_every_stage_on_its_share_and_tables_the_claims(chorus_dir, tmp_path):
    out = tmp_path / "r"
    args = ["--data", str(chorus_dir), "--folds", "0", "--smoke", "--out", str(out), "--json", str(tmp_path / "r.json")]
    report = relevance_rl_stages.main(args)
    systems = {r["system"] for r in report["rows"]}
    assert systems == {"sft", "dpo", "grpo", "grpo_no_dynamic_sampling", "grpo_no_class_balance", "grpo_replay"}
    d = out / "fold0" / "seed0"
    from searchrl.data.schema import load_dataset
    sft_q = set(load_dataset(d / "sft_data").split("train").queries["query_id"])
    rl_q = set(load_dataset(d / "rl_data").split("train").queries["query_id"])
    assert sft_q and rl_q and not sft_q & rl_q  # RL prompts come from queries SFT never saw
    pairs = [json.loads(x) for x in (d / "rl_share" / "sample" / "pairs.jsonl").read_text().splitlines()]
    assert pairs and {p["query_id"] for p in pairs} <= rl_q
    grpo_log = [json.loads(x) for x in (d / "rl_share" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in grpo_log if "reward_mean" in r] == [1, 2]
    assert all(r["completion_len"] <= 1 for r in grpo_log if "completion_len" in r)  # grade-only rollouts
    claims = {c["claim"]: c for c in report["claims"]}
    assert {"DPO > SFT", "GRPO > DPO", "dynamic sampling helps", "guided replay helps"} <= set(claims)
    for c in claims.values():
        mean, lo, hi = c["macro_f1"]
        assert lo <= mean <= hi and c["verdict"].split(" (")[0] in {"holds", "reversed", "no difference"}
    stuck = {r["system"]: r for r in report["stuck"]}
    n_stuck = sum(p["source"] == "teacher" for p in pairs)
    assert all(r["n"] == n_stuck for r in stuck.values())  # every system scored on the same stuck prompts
    # how the DPO pairs lean, counted from the pairs file (the claims page's reason for a DPO verdict)
    grade = {k: [int(p[k][2]) for p in pairs] for k in ("chosen", "rejected")}  # "<L3>" -> 3
    down = sum(c <= 2 < r for c, r in zip(grade["chosen"], grade["rejected"]))
    assert report["dpo_pairs"] == {"pairs": len(pairs), "toward_not_good": down,
                                   "toward_good": sum(r <= 2 < c for c, r in zip(grade["chosen"], grade["rejected"]))}
    assert "hint_fraction: 0.1" in (d / "sft_share" / "sft" / "sft_config.yaml").read_text()
    # the systems really differ (each stage trained): not every prediction file is the same
    probs = [np.load(d / f"{s}.test_probs.npy") for s in ("sft", "dpo", "grpo")]
    assert not np.allclose(probs[0], probs[1]) and not np.allclose(probs[1], probs[2])
    # the held-out rule-graded queries: scored for every system, none of them a Chorus query or judged product
    rule = report["rule_graded"]
    assert {r["system"] for r in rule["rows"]} == systems and rule["claims"]
    rq = load_dataset(out / "rule_queries")
    chorus = load_dataset(chorus_dir)
    assert len(rq.queries) == 12 and not set(rq.queries["text"].str.lower()) & set(chorus.queries["text"].str.lower())
    assert not set(rq.judgments["product_id"].astype(str)) & set(chorus.judgments["product_id"].astype(str))
    assert (d / "grpo.rule_probs.npy").exists()
    # a re-run reuses every stage and the cached predictions
    again = relevance_rl_stages.main(args)
    assert [r["macro_f1"] for r in again["rows"]] == [r["macro_f1"] for r in report["rows"]]
    assert [r["macro_f1"] for r in again["rule_graded"]["rows"]] == [r["macro_f1"] for r in rule["rows"]]
