"""CoT teachers: write the SFT target completion for (query, product, gold grade).

The rule teacher turns the rule engine's step verdicts and notes into a
completion. The human grade always wins: when the engine disagrees, either the
verdict step is rewritten to the gold grade and the fewest step verdicts are
moved so that they imply it (parser.RULE_TABLE) -- "condition" -- or the example is dropped --
"drop". Counts go to a TeacherReport.

Simplifies: a conditioned completion keeps the engine's query/item notes as
they are; only the steps whose verdict changed get a new note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from searchrl.data.schema import GRADE_NAMES
from searchrl.relevance.format.parser import RULE_TABLE, grade_implied_by_verdicts
from searchrl.relevance.format.prompt import PromptConfig, build_completion

ON_DISAGREE = ("condition", "drop")


@dataclass
class TeacherOutput:
    completion: str  # the SFT target, in the prompt config's order
    teacher_grade: int  # what the teacher itself concluded before the gold grade was applied
    agreed: bool  # teacher_grade == gold grade
    verdicts: dict = field(default_factory=dict)  # step -> value as written in the completion


class Teacher(Protocol):
    def write(self, query: str, product: dict, gold_grade: int) -> TeacherOutput | None: ...


@dataclass
class TeacherReport:
    agreed: int = 0  # teacher grade == gold grade
    conditioned: int = 0  # disagreed; completion rewritten toward the gold grade
    dropped: int = 0  # disagreed (or the teacher failed) and on_disagree="drop"
    by_gold: dict = field(default_factory=dict)  # gold grade -> {"agreed", "conditioned", "dropped"} counts

    def add(self, gold: int, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        row = self.by_gold.setdefault(int(gold), {"agreed": 0, "conditioned": 0, "dropped": 0})
        row[outcome] += 1

    @property
    def total(self) -> int:
        return self.agreed + self.conditioned + self.dropped

    @property
    def agreement(self) -> float:
        return self.agreed / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {"agreed": self.agreed, "conditioned": self.conditioned, "dropped": self.dropped,
                "total": self.total, "agreement": round(self.agreement, 4), "by_gold": self.by_gold}


def condition_verdicts(verdicts: dict, gold: int) -> dict:
    """Step verdicts that imply exactly `gold` (parser.grade_implied_by_verdicts), changing as few of
    category/attribute as possible: a completion whose own steps lead to another grade than its grade token
    would teach discriminative hallucination. Ties prefer changing the attribute (a detail) over the category
    (the product type).
    """
    cat, attr = verdicts.get("category"), verdicts.get("attribute")
    if grade_implied_by_verdicts(verdicts) == gold:
        return dict(verdicts)
    best = min(((c, a) for (c, a), (implied, _) in RULE_TABLE.items() if implied == gold),
               key=lambda ca: ((ca[0] != cat) * 2 + (ca[1] != attr) * 1.5, ca))
    return {**verdicts, "category": best[0], "attribute": best[1]}


_CONDITIONED_NOTES = {
    "category": {"match": "annotators accept it as the product type asked for",
                 "related": "annotators see a closely related product, not the one asked for",
                 "mismatch": "annotators see a different kind of product",
                 "unclear": "the product type cannot be settled from the listing"},
    "attribute": {"match": "annotators find the requested details satisfied",
                  "partial": "annotators find only some requested details satisfied",
                  "mismatch": "annotators find a requested detail violated",
                  "unclear": "the requested details cannot be checked"},
}


class RuleTeacher:
    """CoT from the rule engine; the gold grade wins on disagreement."""

    def __init__(self, engine, prompt_cfg: PromptConfig | None = None, on_disagree: str = "condition"):
        if on_disagree not in ON_DISAGREE:
            raise ValueError(f"on_disagree must be one of {ON_DISAGREE}, got {on_disagree!r}")
        self.engine, self.cfg, self.on_disagree = engine, prompt_cfg or PromptConfig(), on_disagree

    def write(self, query: str, product: dict, gold_grade: int) -> TeacherOutput | None:
        gold = int(gold_grade)
        judgment = self.engine.judge(query, product)
        agreed = judgment.grade == gold
        if not agreed and self.on_disagree == "drop":
            return None
        verdicts, notes = dict(judgment.verdicts), dict(judgment.notes)
        if not agreed:
            new = condition_verdicts(verdicts, gold)
            for step in ("category", "attribute"):
                if new[step] != verdicts[step]:
                    notes[step] = f"{_CONDITIONED_NOTES[step][new[step]]} (rules said {verdicts[step]}: {notes[step]})"
            verdicts = new
            notes["verdict"] = (f"category {verdicts['category']}, attributes {verdicts['attribute']} -> "
                                f"{GRADE_NAMES[gold]} (rules alone gave L{judgment.grade})")
        verdicts["verdict"] = f"L{gold}"
        return TeacherOutput(completion=build_completion(gold, verdicts, notes, self.cfg),
                             teacher_grade=judgment.grade, agreed=agreed, verdicts=verdicts)
