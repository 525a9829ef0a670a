"""Property-based fuzzing of the completion parser (relevance/parser.py) and the completion it reads back.

parse_completion must never raise for any input (a reward function calls it on every sample), and its
catch-all must not be what keeps it from raising: an internal exception shows up as a "parser error:"
format error, which these properties forbid. A completion written by build_completion, whatever its notes
say, must read back exactly (grade, verdicts, notes), and a parse that says ``ok`` must be self-consistent.
"""

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from searchrl.relevance.format.parser import ParsedCompletion, allowed_grades, is_consistent, parse_completion
from searchrl.relevance.format.prompt import (
    ATTRIBUTE_VALUES,
    CATEGORY_VALUES,
    STEPS,
    PromptConfig,
    build_completion,
    clean_note,
)

# derandomize: CI sees the same examples on every run; deadline=None: a loaded 2-core machine is slow
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
ORDERS = ("label_first", "cot_first")

# pieces of the grammar, so that random text often comes close to a valid completion
TOKENS = ["<L1>", "<L2>", "<L3>", "<L4>", "<L0>", "<L5>", "<l3>", "<<L3>>", "=>", ":", "\n", "\r\n", " ", "\t",
          "query", "item", "category", "attribute", "verdict", "intent", "type", "grade", "match", "partial",
          "mismatch", "unclear", "related", "L3", "l4", "laptop_bag", "-", "\x00", "\u2028", "\x85", "é", "İ"]
grammarish = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=5)), max_size=60).map("".join)
any_text = st.one_of(st.text(max_size=300), grammarish)
notes_text = st.one_of(st.text(max_size=40), st.lists(st.sampled_from(TOKENS), max_size=12).map("".join))


def _check_invariants(parsed: ParsedCompletion) -> None:
    assert isinstance(parsed, ParsedCompletion)
    assert parsed.grade in (None, 1, 2, 3, 4)
    # an exception inside the parser is a bug even though parse_completion swallows it
    assert not any(e.startswith("parser error") for e in parsed.format_errors), parsed.format_errors
    assert set(parsed.verdicts) <= set(STEPS) and set(parsed.notes) == set(parsed.verdicts)
    if parsed.ok:
        assert list(parsed.verdicts) == list(STEPS)  # ok means all five steps, in order
        assert parsed.verdicts["verdict"] == f"L{parsed.grade}"
        # is_consistent is a pure function of what was parsed
        assert is_consistent(parsed.grade, parsed.verdicts) == (parsed.grade in allowed_grades(parsed.verdicts))


@FUZZ
@given(text=any_text, order=st.sampled_from(ORDERS + ("bogus",)))
@example(text="<L4>" * 1000, order="label_first")
@example(text="=>" * 5000 + ":" * 5000, order="cot_first")
def test_any_text_parses_without_raising(text, order):
    _check_invariants(parse_completion(text, order))


@FUZZ
@given(value=st.one_of(st.none(), st.integers(), st.binary(max_size=20), st.lists(st.text(max_size=5)),
                       st.dictionaries(st.text(max_size=3), st.integers(), max_size=3)))
def test_non_strings_are_a_format_error(value):
    parsed = parse_completion(value)
    _check_invariants(parsed)
    assert not parsed.ok and parsed.format_errors


@FUZZ
@given(grade=st.integers(1, 4), category=st.sampled_from(CATEGORY_VALUES), attribute=st.sampled_from(ATTRIBUTE_VALUES),
       query=st.text(max_size=20), item=st.text(max_size=20),
       notes=st.fixed_dictionaries({s: notes_text for s in STEPS}), order=st.sampled_from(ORDERS),
       max_note_chars=st.integers(0, 200))
# a note "<<L3>>" must lose both layers of brackets: one left would put a grade token inside the completion
@example(grade=2, category="match", attribute="match", query="laptop", item="laptop",
         notes={"query": "<<L3>>", "item": "-", "category": "-", "attribute": "-", "verdict": "-"},
         order="label_first", max_note_chars=160)
@example(grade=1, category="unclear", attribute="partial", query="", item="",
         notes={"query": "<<<L4>>>", "item": "<L<L1>1>", "category": "", "attribute": "", "verdict": ""},
         order="cot_first", max_note_chars=160)
def test_a_written_completion_reads_back(grade, category, attribute, query, item, notes, order, max_note_chars):
    cfg = PromptConfig(order=order, max_note_chars=max_note_chars)
    text = build_completion(grade, {"query": query, "item": item, "category": category, "attribute": attribute},
                            notes, cfg)
    parsed = parse_completion(text, order)
    _check_invariants(parsed)
    assert parsed.ok, (text, parsed.format_errors)
    assert parsed.grade == grade
    assert parsed.verdicts["category"] == category and parsed.verdicts["attribute"] == attribute
    assert parsed.notes == {s: clean_note(notes[s] or "-", max_note_chars) for s in STEPS}


@FUZZ
@given(text=any_text, cut=st.integers(0, 400), junk=st.text(max_size=10))
def test_truncated_or_extended_completions_never_raise(text, cut, junk):
    good = build_completion(3, {"query": "laptop", "item": "laptop", "category": "match", "attribute": "partial"})
    for sample in (good[:cut], good + junk, junk + good, good[:cut] + text):
        for order in ORDERS:
            _check_invariants(parse_completion(sample, order))
