"""Measures of a relevance model's written reasoning, read from its decoded completions.

Pure functions of the completions (text or parsed), the rule engine's verdicts for each pair
and, optionally, the model's first-token grades; no model, no data set. With ``n`` completions
of which ``k`` parse (see below):

- ``x_parse_rate`` = k / n: the share of completions the strict parser reads whole --
  ``ParsedCompletion.ok``: the grade token where the order puts it, all five step lines in
  order with a valid verdict each, the verdict line naming the grade token, nothing else
  (the test of the GRPO format reward). None when n = 0.
- ``x_step_agreement`` = (matching step verdicts) / (5 k): over the parsed completions, the
  share of their step verdicts (query, item, category, attribute, verdict) equal to the rule
  engine's verdict for the same pair and step, pooled over the five steps;
  ``x_step_agreement_<step>`` = (matches at that step) / k. The rule engine's verdicts are
  compared as a completion writes them (built by ``build_completion`` and read back by the
  parser: slugs joined, values canonical). None when k = 0.
- ``x_self_consistency`` = (consistent) / k: over the parsed completions, the share whose
  first-token grade equals the grade their own category and attribute verdicts imply by the
  rule engine's mapping (``grade_implied_by_verdicts``, i.e. ``RULE_TABLE``) -- not the grade
  the verdict line writes. None when k = 0.
- ``x_discriminative_hallucination_rate`` = 1 - x_self_consistency: a grade the model's own
  reasoning contradicts. None when k = 0.

The older, looser keys of ``evaluate_model`` stay beside these: ``x_format_error_rate`` counts a
completion readable once it has the grade token and five valid verdicts (an extra line or a
verdict line naming another grade tolerated), and ``x_rule_adherence`` asks only that the grade
lie in the set RULE_TABLE *allows* for the verdicts (``is_consistent``), not that it equal the
implied one.

Counts (:func:`reasoning_counts`) add up over folds and seeds (:func:`add_counts`), so a
cross-validation reports pooled rates (:func:`reasoning_rates`) rather than a mean of rates.

Simplifies: one decoded completion per pair (greedy), so no sampling spread is measured.
"""

from __future__ import annotations

from searchrl.relevance.format.parser import ParsedCompletion, grade_implied_by_verdicts, parse_completion
from searchrl.relevance.format.prompt import STEPS, build_completion

# (key, heading) of every reasoning measure, in the order tables print them
REASONING_MEASURES = [("x_parse_rate", "parse rate"), ("x_step_agreement", "step agreement"),
                      ("x_self_consistency", "self-consistency"),
                      ("x_discriminative_hallucination_rate", "discriminative hallucination")]
STEP_AGREEMENT = [(f"x_step_agreement_{s}", s) for s in STEPS]  # per step


def _parsed(completions, order: str) -> list[ParsedCompletion]:
    return [c if isinstance(c, ParsedCompletion) else parse_completion(c, order) for c in completions]


def reference_verdicts(verdicts: dict) -> dict:
    """The rule engine's step verdicts (``RuleJudgment.verdicts``) as a completion writes them: written by
    build_completion and read back by the parser, so they went through the same normalisation as the model's."""
    grade = int(str(verdicts.get("verdict", "")).lstrip("Ll") or grade_implied_by_verdicts(verdicts))
    return parse_completion(build_completion(grade, verdicts), "label_first").verdicts


def _outcomes(completions, rule_verdicts: list[dict], grades, order: str) -> list[tuple[bool, bool, dict]]:
    """Per pair: (parsed, self-consistent, {step: agrees with the rules}); the last two False/{} where unparsed."""
    parsed = _parsed(completions, order)
    if len(rule_verdicts) != len(parsed) or (grades is not None and len(grades) != len(parsed)):
        raise ValueError(f"{len(parsed)} completions, {len(rule_verdicts)} rule verdicts"
                         + ("" if grades is None else f", {len(grades)} grades"))
    grades = [p.grade for p in parsed] if grades is None else list(grades)
    out = []
    for p, rule, grade in zip(parsed, rule_verdicts, grades):
        if not p.ok:
            out.append((False, False, {}))
            continue
        ref = reference_verdicts(rule)
        out.append((True, bool(grade_implied_by_verdicts(p.verdicts) == grade),
                    {step: bool(p.verdicts.get(step) == ref.get(step)) for step in STEPS}))
    return out


def reasoning_counts(completions, rule_verdicts: list[dict], grades=None, order: str = "label_first") -> dict:
    """{"completions": n, "parsed": k, "self_consistent": c, "step_agree": {step: matches}} for ``completions``
    (strings, parsed with ``order``, or ParsedCompletion), ``rule_verdicts`` (the rule engine's step -> value
    per pair, same order) and ``grades`` (the model's first-token grade per pair; default: the grade token each
    completion wrote)."""
    outcomes = _outcomes(completions, rule_verdicts, grades, order)
    return {"completions": len(outcomes), "parsed": int(sum(ok for ok, _, _ in outcomes)),
            "self_consistent": int(sum(c for _, c, _ in outcomes)),
            "step_agree": {step: int(sum(a.get(step, False) for _, _, a in outcomes)) for step in STEPS}}


def reasoning_per_pair(completions, rule_verdicts: list[dict], grades=None, order: str = "label_first") -> dict:
    """Per pair (arguments as :func:`reasoning_counts`): {"parsed": 0/1, "consistent": 0/1 (0 where not parsed),
    "agree": matching step verdicts 0..5 (0 where not parsed)} as lists: what a query bootstrap of the measures
    resamples (:func:`rates_of_rows`)."""
    outcomes = _outcomes(completions, rule_verdicts, grades, order)
    return {"parsed": [int(ok) for ok, _, _ in outcomes], "consistent": [int(c) for _, c, _ in outcomes],
            "agree": [sum(a.values()) for _, _, a in outcomes]}


def rates_of_rows(pairs: dict, rows) -> dict:
    """parse rate, step agreement and self-consistency of the pairs ``rows`` index in :func:`reasoning_per_pair`'s
    lists (numpy arrays); None where nothing parsed."""
    parsed = pairs["parsed"][rows]
    k = parsed.sum()
    return {"x_parse_rate": float(k / max(len(parsed), 1)),
            "x_step_agreement": float(pairs["agree"][rows].sum() / (len(STEPS) * k)) if k else None,
            "x_self_consistency": float(pairs["consistent"][rows].sum() / k) if k else None}


def add_counts(a: dict | None, b: dict) -> dict:
    """The counts of two sets of completions together (``a`` None: ``b``)."""
    if a is None:
        return {**b, "step_agree": dict(b["step_agree"])}
    return {"completions": a["completions"] + b["completions"], "parsed": a["parsed"] + b["parsed"],
            "self_consistent": a["self_consistent"] + b["self_consistent"],
            "step_agree": {s: a["step_agree"][s] + b["step_agree"][s] for s in STEPS}}


def reasoning_rates(counts: dict) -> dict:
    """The x_ measures (module docstring) of :func:`reasoning_counts`' counts; None where the denominator is 0."""
    n, k = counts["completions"], counts["parsed"]

    def share(num, den):
        return num / den if den else None
    consistent = share(counts["self_consistent"], k)
    return {"x_parse_rate": share(k, n),
            "x_step_agreement": share(sum(counts["step_agree"].values()), len(STEPS) * k),
            **{key: share(counts["step_agree"][step], k) for key, step in STEP_AGREEMENT},
            "x_self_consistency": consistent,
            "x_discriminative_hallucination_rate": None if consistent is None else 1 - consistent}


def reasoning_measures(completions, rule_verdicts: list[dict], grades=None, order: str = "label_first") -> dict:
    """The x_ measures of the module docstring for one set of completions (arguments as :func:`reasoning_counts`)."""
    return reasoning_rates(reasoning_counts(completions, rule_verdicts, grades, order))
