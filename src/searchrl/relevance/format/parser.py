"""Read a relevance completion back: grade token, step verdicts, format errors.

`parse_completion` never raises: a model's sample can be any string, and the
rewards (format, per-step, rule adherence) must still be computed for it.
The grammar is the one written by prompt.build_completion (see prompt.py).

The rule table below says which grades the step verdicts allow. It is the
single definition of "following the rules": the rule engine grades with it,
the teacher keeps conditioned completions inside it, and TaoSR-AGRL's
rule-adherence reward (and the discriminative hallucination rate: a grade its
own reasoning does not support) is `not is_consistent(grade, verdicts)`.
The stricter reading, a grade other than the one the verdicts imply
(`grade_implied_by_verdicts`), is scoring/reasoning.py's
x_discriminative_hallucination_rate.

Simplifies: only the category and attribute verdicts constrain the grade; the
query/item steps are free-form type names that are scored against a reference,
not against rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from searchrl.relevance.format.prompt import ALLOWED_VALUES, GRADE_TOKENS, SLUG, STEPS, VERDICT_KEYS

# (category, attribute) -> (implied grade, allowed grades)
#   category: match = same product type, related = sibling type or main/accessory pair (when the
#   rule file says so), mismatch = another kind of product, unclear = type could not be read.
#   attribute: match = every constraint of the query holds (also when there are none), partial = some
#   hold and the rest cannot be checked, unclear = none can be checked, mismatch = one is violated.
RULE_TABLE: dict[tuple[str, str], tuple[int, frozenset]] = {
    ("match", "match"): (4, frozenset({3, 4})),
    ("match", "partial"): (3, frozenset({3, 4})),
    ("match", "unclear"): (2, frozenset({2, 3})),  # a requested detail the item never mentions is usually absent
    ("match", "mismatch"): (2, frozenset({1, 2, 3})),
    ("related", "match"): (2, frozenset({2, 3})),
    ("related", "partial"): (2, frozenset({1, 2, 3})),
    ("related", "unclear"): (2, frozenset({1, 2, 3})),
    ("related", "mismatch"): (1, frozenset({1, 2})),
    ("mismatch", "match"): (1, frozenset({1, 2})),  # category mismatch caps the grade at L2 whatever else holds
    ("mismatch", "partial"): (1, frozenset({1, 2})),
    ("mismatch", "unclear"): (1, frozenset({1, 2})),
    ("mismatch", "mismatch"): (1, frozenset({1})),
    ("unclear", "match"): (2, frozenset({1, 2, 3})),  # the item never names the queried type: rarely it
    ("unclear", "partial"): (2, frozenset({1, 2, 3})),
    ("unclear", "unclear"): (1, frozenset({1, 2})),
    ("unclear", "mismatch"): (1, frozenset({1, 2})),
}

_GRADE_TOKEN = re.compile(r"<L([1-4])>")


@dataclass
class ParsedCompletion:
    grade: int | None = None  # from the grade token at the position the order requires; None if absent
    verdicts: dict = field(default_factory=dict)  # step -> value, only for well-formed lines
    notes: dict = field(default_factory=dict)  # step -> free text
    format_errors: list = field(default_factory=list)  # human-readable, empty when the format is perfect

    @property
    def ok(self) -> bool:
        return not self.format_errors and self.grade is not None


def _split_line(line: str):
    """(step, note, key, value) or None; string methods only, so any input is linear time."""
    left, sep, right = line.rpartition("=>")
    if not sep or ":" not in left or ":" not in right:
        return None
    step, _, note = left.partition(":")
    key, _, value = right.partition(":")
    # WordPiece decodes "camera_bag" as "camera _ bag": rejoin the slug (a slug has no spaces of its own to lose)
    step, key, value = step.strip(), key.strip(), "_".join(part.strip() for part in value.split("_"))
    if not (step.isalpha() and step.islower() and key.isalpha() and key.islower()) or len(value.split()) != 1:
        return None
    return step, note.strip(), key, value


def _parse_line(line: str, out: ParsedCompletion, seen: list) -> None:
    parts = _split_line(line)
    if parts is None:
        out.format_errors.append(f"unreadable line: {line[:60]!r}")
        return
    step, note, key, value = parts
    if step not in VERDICT_KEYS:
        out.format_errors.append(f"unknown step {step!r}")
        return
    if step in seen:
        out.format_errors.append(f"duplicate step {step!r}")
        return
    seen.append(step)
    if key != VERDICT_KEYS[step]:
        out.format_errors.append(f"{step}: expected key {VERDICT_KEYS[step]!r}, got {key!r}")
        return
    if step in ALLOWED_VALUES:
        # case-insensitive: uncased tokenizers (MiniLM's WordPiece) decode "L3" as "l3"
        value = {v.lower(): v for v in ALLOWED_VALUES[step]}.get(value.lower(), value)
        if value not in ALLOWED_VALUES[step]:
            out.format_errors.append(f"{step}: bad value {value!r}")
            return
    elif not SLUG.fullmatch(value):
        out.format_errors.append(f"{step}: bad value {value!r}")
        return
    out.verdicts[step] = value
    out.notes[step] = note


def parse_completion(text, order: str = "label_first") -> ParsedCompletion:
    """Parse `text`; every problem goes to format_errors, nothing raises."""
    out = ParsedCompletion()
    try:
        _parse(text, order, out)
    except Exception as exc:  # belt and braces: a reward function must never crash on a sample
        out.format_errors.append(f"parser error: {type(exc).__name__}")
    return out


def _parse(text, order: str, out: ParsedCompletion) -> None:
    if not isinstance(text, str):
        out.format_errors.append(f"not a string: {type(text).__name__}")
        return
    body = text.strip()
    if order == "label_first":
        m = _GRADE_TOKEN.match(body)
        if m:
            out.grade, body = int(m.group(1)), body[m.end():]
        else:
            out.format_errors.append("missing grade token at the start")
    elif order == "cot_first":
        m = re.search(r"<L([1-4])>\Z", body)
        if m:
            out.grade, body = int(m.group(1)), body[: m.start()]
        else:
            out.format_errors.append("missing grade token at the end")
    else:
        out.format_errors.append(f"unknown order {order!r}")
        return
    if _GRADE_TOKEN.search(body):
        out.format_errors.append("extra grade token")
        body = _GRADE_TOKEN.sub(" ", body)
    seen: list = []
    for line in body.split("\n"):
        if line.strip():
            _parse_line(line, out, seen)
    missing = [s for s in STEPS if s not in seen]
    if missing:
        out.format_errors.append(f"missing steps: {', '.join(missing)}")
    if [s for s in STEPS if s in seen] != seen:
        out.format_errors.append("steps out of order")
    stated = out.verdicts.get("verdict")
    if out.grade is not None and stated is not None and stated != f"L{out.grade}":
        out.format_errors.append(f"verdict says {stated} but the grade token is {GRADE_TOKENS[out.grade - 1]}")


def grade_implied_by_verdicts(verdicts: dict) -> int | None:
    """The grade RULE_TABLE implies for the category and attribute verdicts; None if either is missing."""
    row = RULE_TABLE.get((verdicts.get("category"), verdicts.get("attribute")))
    return row[0] if row else None


def allowed_grades(verdicts: dict) -> frozenset:
    row = RULE_TABLE.get((verdicts.get("category"), verdicts.get("attribute")))
    return row[1] if row else frozenset()


def is_consistent(grade, verdicts: dict) -> bool:
    """True when `grade` is one the step verdicts allow (and the verdict line, if any, states it).

    Missing category/attribute verdicts count as inconsistent: rule adherence
    cannot be shown without them.
    """
    if grade not in (1, 2, 3, 4):
        return False
    stated = verdicts.get("verdict")
    if stated is not None and stated != f"L{grade}":
        return False
    return grade in allowed_grades(verdicts)
