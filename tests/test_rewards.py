"""TaoSR-AGRL rule-aware reward: each component on hand-written and malformed completions, the hard-rule gate,
both combination modes, partial grade credit, the engine reference, and config checks."""

import pytest

from searchrl.relevance.format.prompt import PromptConfig, build_completion
from searchrl.relevance.train.rewards import RuleAwareReward, RuleRewardConfig, breaks_hard_rule

REF_V = {"query": "laptop", "item": "laptop", "category": "match", "attribute": "partial"}
REF = build_completion(3, REF_V)  # the teacher's reference: L3, match/partial
INFO = {"grade": 3, "completion": REF, "query": "laptop 16gb", "product": {"title": "Dell laptop"}}
W = dict(w_format=0.1, w_steps=0.5, w_adherence=0.5, w_grade=1.0)


def score(texts, infos=None, **cfg):
    out = RuleAwareReward(RuleRewardConfig(**{**W, **cfg}))(texts, infos or [INFO] * len(texts))
    return out


def comps(out, i):
    return {k: out.components[k][i] for k in ("format", "steps", "adherence", "grade", "violation")}


def test_perfect_completion_earns_every_component():
    out = score([REF])
    assert comps(out, 0) == {"format": 1.0, "steps": 1.0, "adherence": 1.0, "grade": 1.0, "violation": 0.0}
    assert out.rewards == pytest.approx([2.1])


@pytest.mark.parametrize("text", ["", "hello world\nno structure here", "<L9> nothing", "   \n\n"])
def test_empty_and_garbage_earn_nothing(text):
    out = score([text])
    assert comps(out, 0) == {"format": 0.0, "steps": 0.0, "adherence": 0.0, "grade": 0.0, "violation": 0.0}
    assert out.rewards == [0.0]


def test_label_only_gets_grade_but_not_format_steps_or_adherence():
    out = score(["<L3>"])
    assert comps(out, 0) == {"format": 0.0, "steps": 0.0, "adherence": 0.0, "grade": 1.0, "violation": 0.0}
    assert out.rewards == pytest.approx([1.0])


def test_missing_attribute_line_loses_format_adherence_and_a_quarter_of_steps():
    text = "\n".join(line for line in REF.split("\n") if not line.startswith("attribute:"))
    c = comps(score([text]), 0)
    assert c["format"] == 0.0 and c["steps"] == 0.75 and c["adherence"] == 0.0 and c["grade"] == 1.0


def test_unreadable_grade_token_keeps_step_credit_only():
    c = comps(score([REF.replace("<L3>", "<L5>", 1)]), 0)
    assert c == {"format": 0.0, "steps": 1.0, "adherence": 0.0, "grade": 0.0, "violation": 0.0}


def test_verdict_line_contradicting_the_token_is_neither_well_formed_nor_adherent():
    text = REF.replace("<L3>", "<L4>", 1)  # the verdict line still says L3
    c = comps(score([text]), 0)
    assert c["format"] == 0.0 and c["adherence"] == 0.0 and c["grade"] == 0.0


def test_cot_first_order():
    cot = PromptConfig(order="cot_first")
    text = build_completion(3, REF_V, cfg=cot)
    c = comps(score([text]), 0)  # read as label-first: no grade token at the start
    assert c["format"] == 0.0 and c["grade"] == 0.0 and c["adherence"] == 0.0 and c["steps"] == 1.0
    info = {**INFO, "completion": text}  # the reference is written in the model's order too
    out = RuleAwareReward(RuleRewardConfig(**W), order="cot_first")([text], [info])
    assert comps(out, 0) == {"format": 1.0, "steps": 1.0, "adherence": 1.0, "grade": 1.0, "violation": 0.0}


def test_wrong_steps_and_adjacent_grade_partial_credit():
    text = build_completion(2, {**REF_V, "category": "related"})  # related/partial allows L2: adherent
    for credit, grade in ((0.0, 0.0), (0.5, 0.5)):
        out = score([text], adjacent_credit=credit)
        c = comps(out, 0)
        assert c == {"format": 1.0, "steps": 0.75, "adherence": 1.0, "grade": grade, "violation": 0.0}
        assert out.rewards == pytest.approx([0.1 + 0.375 + 0.5 + grade])
    far = build_completion(1, {**REF_V, "category": "mismatch", "attribute": "mismatch"})
    assert comps(score([far], adjacent_credit=0.5), 0)["grade"] == 0.0  # two levels off: no credit


def test_hard_rules_come_from_the_rule_table():
    mm = {"category": "mismatch", "attribute": "match"}
    assert breaks_hard_rule(4, mm) and breaks_hard_rule(3, mm) and not breaks_hard_rule(2, mm)
    assert breaks_hard_rule(4, {"category": "match", "attribute": "mismatch"})  # allows 1..3
    assert not breaks_hard_rule(3, {"category": "match", "attribute": "mismatch"})
    assert breaks_hard_rule(2, {"category": "mismatch", "attribute": "mismatch"})  # only L1
    assert not breaks_hard_rule(1, {"category": "match", "attribute": "match"})  # understating: adherence only
    assert not breaks_hard_rule(4, {"category": "match"}) and not breaks_hard_rule(None, mm)


def test_gate_caps_a_rule_breaking_completion_whatever_else_it_earned():
    info = {"grade": 4, "completion": build_completion(4, {**REF_V, "attribute": "match"})}
    bad = build_completion(4, {**REF_V, "category": "mismatch", "attribute": "match"})  # L4 after category mismatch
    under = build_completion(1, {**REF_V, "attribute": "match"})  # L1 after match/match: not gated
    out = score([bad, under], [info, info])
    assert comps(out, 0) == {"format": 1.0, "steps": 0.75, "adherence": 0.0, "grade": 1.0, "violation": 1.0}
    assert out.rewards[0] == 0.0  # would be 0.1 + 0.375 + 1.0 without the gate
    assert comps(out, 1)["violation"] == 0.0 and comps(out, 1)["adherence"] == 0.0
    assert out.rewards[1] == pytest.approx(0.1 + 0.5)
    assert score([bad], [info], gate=False).rewards == pytest.approx([1.475])
    assert score([bad], [info], gate_value=-1.0).rewards == [-1.0]


def test_normalize_then_sum_z_scores_each_component_within_its_group():
    bad = build_completion(4, {**REF_V, "category": "mismatch", "attribute": "match"})
    texts = [REF, "", REF, REF, bad, ""]
    r = RuleAwareReward(RuleRewardConfig(**W, combine="normalize_then_sum", norm_eps=1e-6), group_size=2)
    out = r(texts, [INFO] * 6)
    assert out.rewards[0] == pytest.approx(2.1, rel=1e-4) and out.rewards[1] == pytest.approx(-2.1, rel=1e-4)
    assert out.rewards[2:4] == [0.0, 0.0]  # identical completions: nothing to tell apart
    assert out.rewards[4] == 0.0  # normalised total is positive (format, steps beat ""), but the gate caps it
    assert out.rewards[5] < 0
    assert out.components["format"] == [1.0, 0.0, 1.0, 1.0, 1.0, 0.0]  # logged components stay raw
    summed = score(texts)  # "sum" ignores the groups
    assert summed.rewards[2] == summed.rewards[3] == pytest.approx(2.1)
    for gs in (0, 4):
        with pytest.raises(ValueError):
            RuleAwareReward(RuleRewardConfig(combine="normalize_then_sum"), group_size=gs)(texts, [INFO] * 6)


def test_engine_reference_matches_a_completion_of_the_engine_verdicts():
    from searchrl.relevance.rules.engine import RuleEngine
    query, product = "laptop bag", {"title": "Dell Latitude laptop", "category": "Laptops"}
    j = RuleEngine.from_yaml().judge(query, product)
    text = build_completion(j.grade, j.verdicts)
    wrong = build_completion(j.grade, {**j.verdicts, "item": "toaster"})
    r = RuleAwareReward(RuleRewardConfig(reference="engine"))
    out = r([text, wrong], [{"grade": j.grade, "query": query, "product": product}] * 2)
    assert out.components["steps"] == [1.0, 0.75]
    with pytest.raises(ValueError):
        r([text], [{"grade": 3}])
    with pytest.raises(ValueError):
        RuleAwareReward()([REF], [{"grade": 3}])  # reference="completion" without a completion


def test_config_is_checked():
    for bad in (dict(combine="mean"), dict(reference="llm"), dict(steps=["colour"]), dict(steps=[]),
                dict(adjacent_credit=2.0)):
        with pytest.raises(ValueError):
            RuleRewardConfig(**bad)
    with pytest.raises(ValueError):
        RuleAwareReward()([REF, REF], [INFO])
