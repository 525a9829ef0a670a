"""Parser: round trips, format errors, the rule table, and fuzzing (it must never raise)."""

import itertools
import random

import pytest

from searchrl.relevance.format.parser import (
    RULE_TABLE,
    ParsedCompletion,
    allowed_grades,
    grade_implied_by_verdicts,
    is_consistent,
    parse_completion,
)
from searchrl.relevance.format.prompt import ATTRIBUTE_VALUES, CATEGORY_VALUES, PromptConfig, build_completion

ORDERS = ("label_first", "cot_first")
NOTES = {"query": "user wants a laptop: 17 inch", "item": "HP notebook: silver", "category": "same: type",
         "attribute": "size ok", "verdict": "fine"}


def completion(grade, category="match", attribute="match", order="label_first"):
    verdicts = {"query": "laptop", "item": "laptop", "category": category, "attribute": attribute}
    return build_completion(grade, verdicts, NOTES, PromptConfig(order=order))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("grade", [1, 2, 3, 4])
def test_round_trip_every_grade_and_order(grade, order):
    for category, attribute in itertools.product(CATEGORY_VALUES, ATTRIBUTE_VALUES):
        verdicts = {"query": "usb_c_cable", "item": "cable", "category": category, "attribute": attribute}
        parsed = parse_completion(build_completion(grade, verdicts, NOTES, PromptConfig(order=order)), order)
        assert parsed.ok, parsed.format_errors
        assert parsed.grade == grade
        assert parsed.verdicts == {**verdicts, "verdict": f"L{grade}"}
        assert parsed.notes["query"] == NOTES["query"]  # notes may contain ':' and still read back


@pytest.mark.parametrize("order", ORDERS)
def test_round_trip_through_minilm_wordpiece_decode(order):
    # what a MiniLM-based model's sample looks like once decoded: "camera _ bag", " : ", "l3"; every multi-word
    # type must read back, or a model's whole CoT counts as a format error
    from searchrl.relevance.model.tokenizer import add_grade_tokens, minilm_tokenizer
    tok = minilm_tokenizer()
    add_grade_tokens(tok)
    verdicts = {"query": "usb_c_cable", "item": "camera_bag", "category": "related", "attribute": "partial"}
    text = build_completion(3, verdicts, NOTES, PromptConfig(order=order, max_note_chars=0))
    decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=False)
    assert "camera _ bag" in decoded  # the tokenizer still splits the slug: the parser must rejoin it
    parsed = parse_completion(decoded, order)
    assert parsed.ok, parsed.format_errors
    assert parsed.verdicts == {**verdicts, "verdict": "L3"} and parsed.grade == 3


def test_order_matters():
    lf = completion(3, order="label_first")
    parsed = parse_completion(lf, "cot_first")
    assert parsed.grade is None and any("end" in e for e in parsed.format_errors)
    parsed = parse_completion(completion(3, order="cot_first"), "label_first")
    assert parsed.grade is None and any("start" in e for e in parsed.format_errors)


def test_whitespace_tolerated():
    text = "  " + completion(2, "related").replace("\n", "\r\n") + "\n\n"
    parsed = parse_completion(text)
    assert parsed.ok and parsed.grade == 2 and parsed.verdicts["category"] == "related"


@pytest.mark.parametrize("mutate, error", [
    (lambda t: t.replace("<L3>\n", ""), "missing grade token"),
    (lambda t: t + "\n<L2>", "extra grade token"),
    (lambda t: t.replace("=> grade: L3", "=> grade: L2"), "verdict says L2"),
    (lambda t: t.replace("category: match", "category: maybe"), "bad value"),
    (lambda t: t.replace("=> intent: laptop", "=> intent: two words"), "unreadable line"),
    (lambda t: t.replace("=> type: laptop", "=> kind: laptop"), "expected key"),
    (lambda t: "\n".join(line for line in t.split("\n") if not line.startswith("attribute")), "missing steps"),
    (lambda t: t.replace("query:", "verdict:", 1), "duplicate step"),
    (lambda t: t.replace("item: HP notebook: silver => type: laptop\n", "") + "\nitem: x => type: laptop",
     "out of order"),
    (lambda t: t + "\nsomething else entirely", "unreadable line"),
    (lambda t: t.replace("query:", "question:"), "unknown step"),
])
def test_format_errors(mutate, error):
    parsed = parse_completion(mutate(completion(3, "match", "partial")))
    assert not parsed.ok
    assert any(error in e for e in parsed.format_errors), parsed.format_errors


def test_grade_only_is_not_ok_but_grade_is_read():
    parsed = parse_completion("<L4>")
    assert parsed.grade == 4 and not parsed.ok and "missing steps" in parsed.format_errors[-1]


def _garbage(rng):
    alphabet = "<>L1234 \n:=>abcdefgquerytmcaviL\t\x00é€" + "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(5))
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 400)))


def test_fuzz_never_raises():
    rng = random.Random(0)
    good = completion(4) + "\n" + completion(1, "mismatch", order="cot_first")
    samples = [None, 3, b"<L4>", ["<L4>"], "", "\n\n\n", "=>" * 1000, ":" * 1000, "<L4>" * 50, "x" * 100_000,
               "a => b: c\n" * 500, "<L9>\nquery: x => intent: y"]
    samples += [_garbage(rng) for _ in range(400)]
    samples += [good[:i] for i in range(len(good))]  # every truncation
    samples += ["".join(rng.sample(good, len(good))) for _ in range(50)]  # shuffles
    for order in ORDERS + ("bogus",):
        for s in samples:
            parsed = parse_completion(s, order)
            assert isinstance(parsed, ParsedCompletion)
            assert parsed.grade in (None, 1, 2, 3, 4)
            assert isinstance(parsed.verdicts, dict) and isinstance(parsed.format_errors, list)


def test_truncations_are_flagged():
    full = completion(2, "match", "mismatch")
    for cut in range(len(full) - 1):
        parsed = parse_completion(full[:cut])
        assert not parsed.ok, full[:cut]


def test_rule_table_covers_every_pair_and_implies_an_allowed_grade():
    assert set(RULE_TABLE) == set(itertools.product(CATEGORY_VALUES, ATTRIBUTE_VALUES))
    for implied, allowed in RULE_TABLE.values():
        assert implied in allowed and allowed <= {1, 2, 3, 4}


@pytest.mark.parametrize("category, attribute, grade", [
    ("match", "match", 4), ("match", "partial", 3), ("match", "mismatch", 2), ("related", "match", 2),
    ("mismatch", "match", 1), ("mismatch", "partial", 1), ("mismatch", "mismatch", 1), ("unclear", "unclear", 1),
])
def test_grade_implied_by_verdicts(category, attribute, grade):
    assert grade_implied_by_verdicts({"category": category, "attribute": attribute}) == grade


def test_implied_grade_needs_both_verdicts():
    assert grade_implied_by_verdicts({"category": "match"}) is None
    assert grade_implied_by_verdicts({}) is None and allowed_grades({}) == frozenset()


def test_is_consistent():
    assert not is_consistent(4, {"category": "mismatch", "attribute": "match"})  # L4 after a category mismatch
    assert not is_consistent(3, {"category": "mismatch", "attribute": "match"})
    assert is_consistent(2, {"category": "mismatch", "attribute": "match"})  # mismatch caps at L2
    assert is_consistent(1, {"category": "mismatch", "attribute": "match"})
    assert not is_consistent(4, {"category": "match", "attribute": "mismatch"})
    assert is_consistent(4, {"category": "match", "attribute": "match", "verdict": "L4"})
    assert not is_consistent(4, {"category": "match", "attribute": "match", "verdict": "L3"})  # says one thing
    assert not is_consistent(4, {"category": "match"})  # cannot show adherence without the attribute step
    assert not is_consistent(None, {"category": "match", "attribute": "match"})
    assert not is_consistent(7, {"category": "match", "attribute": "match"})


def test_parsed_completion_feeds_is_consistent():
    parsed = parse_completion(completion(4, "mismatch", "match"))  # well-formed but breaks the rules
    assert parsed.ok and not is_consistent(parsed.grade, parsed.verdicts)
    parsed = parse_completion(completion(1, "mismatch", "match"))
    assert is_consistent(parsed.grade, parsed.verdicts)
