"""Measures of the written reasoning (relevance/scoring/reasoning.py) on hand-made completions, each shown able to
fail; through `searchrl eval relevance --decode`; and on the results page."""

import math

import numpy as np
import pytest

from searchrl.cli import main
from searchrl.metrics.measures import read_metrics_json
from searchrl.relevance.format.parser import parse_completion
from searchrl.relevance.format.prompt import STEPS, PromptConfig, build_completion
from searchrl.relevance.scoring.reasoning import (
    REASONING_MEASURES,
    STEP_AGREEMENT,
    add_counts,
    reasoning_counts,
    reasoning_measures,
    rates_of_rows,
    reasoning_per_pair,
    reasoning_rates,
    reference_verdicts,
)

# the rule engine's verdicts for three pairs: an exact match (L4), a sibling type (L2), another kind of product (L1)
RULES = [{"query": "laptop", "item": "laptop", "category": "match", "attribute": "match", "verdict": "L4"},
         {"query": "laptop_bag", "item": "backpack", "category": "related", "attribute": "match", "verdict": "L2"},
         {"query": "mouse", "item": "speaker", "category": "mismatch", "attribute": "unclear", "verdict": "L1"}]


def agreeing(rule: dict) -> str:
    """The completion the rule engine itself would write for the pair."""
    return build_completion(int(rule["verdict"][1]), rule, {s: f"note on {s}" for s in STEPS})


def test_completions_that_repeat_the_rules_score_one_everywhere():
    m = reasoning_measures([agreeing(r) for r in RULES], RULES)
    assert m["x_parse_rate"] == m["x_step_agreement"] == m["x_self_consistency"] == 1.0
    assert m["x_discriminative_hallucination_rate"] == 0.0
    assert all(m[key] == 1.0 for key, _ in STEP_AGREEMENT)
    assert set(m) == {k for k, _ in REASONING_MEASURES} | {k for k, _ in STEP_AGREEMENT}


def test_per_pair_values_give_the_pooled_measures_on_any_subset_of_pairs():
    contradicted = build_completion(4, RULES[2], {})  # L4 over the rules' L1 steps: only its verdict disagrees
    texts = [agreeing(RULES[0]), "not a completion", contradicted]
    per_pair = reasoning_per_pair(texts, RULES)
    assert per_pair == {"parsed": [1, 0, 1], "consistent": [1, 0, 0], "agree": [5, 0, 4]}
    arrays = {k: np.asarray(v) for k, v in per_pair.items()}
    everything = rates_of_rows(arrays, np.arange(3))
    pooled = reasoning_measures(texts, RULES)
    assert all(everything[k] == pytest.approx(pooled[k]) for k in everything)
    assert rates_of_rows(arrays, np.array([2, 2]))["x_self_consistency"] == 0.0  # a bootstrap draw
    assert rates_of_rows(arrays, np.array([1]))["x_step_agreement"] is None  # nothing parsed


def test_a_completion_that_does_not_parse_lowers_parse_rate_and_leaves_the_other_denominators():
    broken = agreeing(RULES[1]).replace("attribute: ", "attribute ", 1)  # the attribute line no longer reads
    assert not parse_completion(broken).ok
    m = reasoning_measures([agreeing(RULES[0]), broken, agreeing(RULES[2])], RULES)
    assert m["x_parse_rate"] == pytest.approx(2 / 3)
    assert m["x_step_agreement"] == m["x_self_consistency"] == 1.0  # over the two parsed ones only
    for strictly_broken in ("", "<L4>", agreeing(RULES[0]) + "\nmore text", agreeing(RULES[0]).replace("L4", "L3", 1)):
        assert reasoning_measures([strictly_broken], RULES[:1])["x_parse_rate"] == 0.0, strictly_broken


def test_a_wrong_step_verdict_lowers_agreement_at_that_step_only():
    wrong = dict(RULES[1], attribute="partial")  # the model says partial, the rules say match
    m = reasoning_measures([agreeing(RULES[0]), agreeing(wrong), agreeing(RULES[2])], RULES)
    assert m["x_parse_rate"] == 1.0
    assert m["x_step_agreement_attribute"] == pytest.approx(2 / 3)
    assert all(m[key] == 1.0 for key, step in STEP_AGREEMENT if step != "attribute")
    assert m["x_step_agreement"] == pytest.approx(14 / 15)  # pooled over 3 completions x 5 steps
    wrong_type = dict(RULES[0], item="notebook")  # a free-form step counts the same way
    assert reasoning_measures([agreeing(wrong_type)], RULES[:1])["x_step_agreement_item"] == 0.0


def test_verdicts_implying_l1_under_an_l4_grade_lower_self_consistency():
    contradicted = build_completion(4, {"query": "mouse", "item": "speaker", "category": "mismatch",
                                        "attribute": "unclear"})  # <L4> ... verdict L4, yet the verdicts imply L1
    assert parse_completion(contradicted).ok
    m = reasoning_measures([agreeing(RULES[0]), contradicted], [RULES[0], RULES[2]])
    assert m["x_self_consistency"] == 0.5 and m["x_discriminative_hallucination_rate"] == 0.5
    assert m["x_step_agreement_verdict"] == 0.5  # the rules say L1 where it wrote L4
    # stricter than rule adherence: L4 is allowed for (match, partial), but those verdicts imply L3
    allowed = build_completion(4, {"query": "laptop", "item": "laptop", "category": "match", "attribute": "partial"})
    assert reasoning_measures([allowed], RULES[:1])["x_self_consistency"] == 0.0


def test_the_grade_compared_is_the_first_token_grade_given_not_the_verdict_line():
    texts = [agreeing(r) for r in RULES]
    assert reasoning_measures(texts, RULES, grades=[4, 2, 1])["x_self_consistency"] == 1.0
    assert reasoning_measures(texts, RULES, grades=[4, 4, 1])["x_self_consistency"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 completions, 3 rule verdicts, 2 grades"):
        reasoning_measures(texts, RULES, grades=[4, 2])


def test_no_parsed_completion_gives_none_not_zero_or_nan():
    m = reasoning_measures(["garbage", None, 42], RULES)
    assert m["x_parse_rate"] == 0.0
    for key, value in m.items():
        if key != "x_parse_rate":
            assert value is None, key
    assert all(v is None for v in reasoning_measures([], []).values())
    assert not any(isinstance(v, float) and math.isnan(v) for v in m.values())


def test_cot_first_parsed_objects_and_pooled_counts():
    cot = PromptConfig(order="cot_first")
    texts = [build_completion(int(r["verdict"][1]), r, cfg=cot) for r in RULES]
    assert reasoning_measures(texts, RULES, order="cot_first")["x_self_consistency"] == 1.0
    parsed = [parse_completion(t, "cot_first") for t in texts]
    assert reasoning_measures(parsed, RULES) == reasoning_measures(texts, RULES, order="cot_first")
    # counts add over folds: the rates of the sum are the pooled rates, not a mean of the folds' rates
    mixed = [texts[0], "junk", texts[2]]
    halves = add_counts(reasoning_counts(mixed[:1], RULES[:1], order="cot_first"),
                        reasoning_counts(mixed[1:], RULES[1:], order="cot_first"))
    assert halves == reasoning_counts(mixed, RULES, order="cot_first")
    assert reasoning_rates(halves)["x_parse_rate"] == pytest.approx(2 / 3)


def test_rule_verdicts_are_compared_as_a_completion_writes_them():
    rule = {"query": "Camera Bag", "item": "camera_bag", "category": "match", "attribute": "match", "verdict": "L4"}
    assert reference_verdicts(rule)["query"] == "camera_bag"
    decoded = agreeing(dict(rule, query="camera_bag")).replace("camera_bag", "camera _ bag")  # as WordPiece decodes
    assert reasoning_measures([decoded], [rule])["x_step_agreement"] == 1.0


def test_agreement_with_the_rule_engine_itself(tiny_data):
    from searchrl.data.schema import load_dataset, pair_products
    from searchrl.relevance.rules.engine import RuleEngine
    pairs = load_dataset(tiny_data).split("test").pairs()
    engine = RuleEngine.from_yaml()
    judged = [engine.judge(q, p) for q, p in zip(pairs["text"], pair_products(pairs))]
    texts = [build_completion(j.grade, j.verdicts, j.notes) for j in judged]
    m = reasoning_measures(texts, [j.verdicts for j in judged])
    assert m["x_parse_rate"] == m["x_step_agreement"] == m["x_self_consistency"] == 1.0


def test_eval_relevance_decode_prints_and_writes_the_reasoning_measures(tiny_model_dir, tiny_data, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["eval", "relevance", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--split", "test",
                 "--decode", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    row = read_metrics_json(out)["rows"][0]
    keys = [k for k, _ in REASONING_MEASURES + STEP_AGREEMENT]
    for key in keys + ["x_format_error_rate", "x_rule_adherence", "x_hallucination_rate"]:
        assert key in row and key in printed, key
    assert 0 <= row["x_parse_rate"] <= 1
    for key in keys[1:]:  # a share of the parsed completions, None when none parsed (the random model's case)
        assert (row[key] is None) == (row["x_parse_rate"] == 0), key
        assert row[key] is None or 0 <= row[key] <= 1, key


def test_eval_relevance_decode_compares_each_completion_with_the_rules_for_its_own_pair(tiny_model_dir, tiny_data,
                                                                                       tmp_path, monkeypatch):
    """The decoded completions stand in for the rule engine's own, in the split's pair order: everything agrees; the
    same completions one pair shifted agree less -- the rule verdicts are matched pair by pair."""
    from searchrl.data.schema import load_dataset, pair_products
    from searchrl.relevance.rules.engine import RuleEngine
    from searchrl.relevance.scoring import evaluate
    pairs = load_dataset(tiny_data).split("test").pairs()
    engine = RuleEngine.from_yaml()
    texts = [build_completion(j.grade, j.verdicts) for j in
             (engine.judge(q, p) for q, p in zip(pairs["text"], pair_products(pairs)))]
    for completions, agree in ((texts, True), (texts[1:] + texts[:1], False)):
        monkeypatch.setattr(evaluate, "decode_completions", lambda *a, c=completions, **k: list(c))
        assert main(["eval", "relevance", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--split",
                     "test", "--decode", "--json", str(tmp_path / "m.json")]) == 0
        row = read_metrics_json(tmp_path / "m.json")["rows"][0]
        assert row["x_parse_rate"] == 1.0 and row["x_self_consistency"] == 1.0
        assert (row["x_step_agreement"] == 1.0) == agree, row["x_step_agreement"]


def test_the_results_page_shows_the_reasoning_measures_and_the_failed_checks(tmp_path):
    from searchrl.eval.report_example import example_report
    from searchrl.pipeline.results import write_results_pages
    doc = example_report()
    write_results_pages(doc, tmp_path)
    text = (tmp_path / "relevance.md").read_text()
    final = doc["relevance"]["rows"][-1]
    assert "| parse rate | step agreement | self-consistency | discriminative hallucination |" in text
    assert (f"| {final['system']} | {final['x_parse_rate']:.3f} | {final['x_step_agreement']:.3f} | "
            f"{final['x_self_consistency']:.3f} | {final['x_discriminative_hallucination_rate']:.3f} |") in text
    assert "| agreement: attribute |" in text and f"{final['x_step_agreement_attribute']:.3f}" in text
    assert "warning: sft is below minilm-cosine on per-query AUC of P(Good)" in text


def test_a_decoded_cv_recipe_reports_its_reasoning_pooled_over_folds(tiny_data, tmp_path):
    from conftest import sft_config_for_tests

    from searchrl.data.schema import load_dataset
    from searchrl.eval.crossval import crossval, summarize
    cfg = sft_config_for_tests({"model": "tiny-qwen2", "prompt": {"order": "cot_first", "instruction": "Grade.",
                                                                  "max_note_chars": 20},
                                "max_length": 256, "batch_size": 4, "optim": {"lr": 3e-3, "max_steps": 2},
                                "eval": {"max_new_tokens": 12}, "run": {"device": "cpu", "progress": False}})
    result = crossval(cfg, load_dataset(tiny_data), k=2, seeds=(0,), out=tmp_path, baselines=False)
    counts = result["systems"]["model"]["reasoning"]
    assert counts["completions"] == len(result["grade"])  # every test pair of both folds, once
    row = summarize(result, "model", n_boot=20)[0]
    assert row["x_parse_rate"] == counts["parsed"] / counts["completions"]
    assert {k for k, _ in REASONING_MEASURES + STEP_AGREEMENT} <= set(row)
