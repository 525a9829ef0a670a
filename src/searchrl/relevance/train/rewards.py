"""Reward functions for relevance RL (GRPO): decoded completions in, one float per completion out.

The interface is a plain callable (see :class:`RewardFunction`): it gets the decoded
completions and, for each, what is known of its prompt -- the example dict the
trainer was given: ``grade`` (gold, 1..4), and when known ``query``, ``product``,
``prompt``, ``completion`` (the teacher's reference completion, whose step verdicts
the rule-aware reward compares against), ``query_id``, ``product_id``. It returns a
:class:`RewardOutput`: the total reward per completion and named components (each one
float per completion) that the trainer logs as means.

Two rewards, one config (:class:`RewardConfig`, ``reward.kind``; :func:`build_reward`):

**GradeReward** (``kind: grade``, TaoSR1's GRPO): correctness of the parsed grade plus a
format term. Format term (our choice; the papers do not pin one down): ``+w`` when the
completion parses with no format error (grade token where the order puts it, five
well-formed step lines, the verdict line stating the same grade), else 0. A bonus rather
than a penalty, so that with ``w = 0`` nothing changes and with a label-only completion
(no reasoning) the reward is just correctness; a completion whose grade cannot be read is
simply wrong.

**RuleAwareReward** (``kind: rule_aware``, TaoSR-AGRL's rule-aware reward shaping).

Per completion it computes four components, each in [0, 1] and each returned (unweighted) in ``components`` so
the trainer logs it on its own:

- ``format``: the completion parses without a format error (grade token where the
  order puts it, the five step lines in order, the verdict line stating the
  grade) -- ``ParsedCompletion.ok``, the same test as GradeReward's format bonus.
- ``steps``: the share of the compared steps (``RuleRewardConfig.steps``; by
  default query, item, category, attribute -- the verdict step is the grade, which
  has its own component) whose verdict equals the reference verdict. The
  reference (``RuleRewardConfig.reference``) is either
  ``"completion"`` (default): the teacher's reference completion in
  ``info["completion"]``, read back with parse_completion. These are the rule
  engine's verdicts for the same (query, product), except that when the engine
  disagreed with the human grade the teacher moved category/attribute to a row
  of the rule table that allows the gold grade (teacher.condition_verdicts);
  so the step reward and the grade reward never pull in opposite directions.
  It is also free (no rule engine at reward time). Or ``"engine"``: the raw
  ``RuleEngine.judge(info["query"], info["product"])`` verdicts, which may
  contradict the gold grade.
- ``adherence``: 1 when the grade is one its own step verdicts allow under
  parser.RULE_TABLE (parser.is_consistent), else 0.
- ``grade``: 1 for the gold grade, ``adjacent_credit`` for a grade one level off,
  else 0 (also when no grade can be read).

Hard rules and the gate: a completion whose grade is *above* every grade the
rule table allows for its own category/attribute verdicts breaks a hard rule
(L3/L4 after "category: mismatch", L4 after "attribute: mismatch" or after
"category: related", L2+ after mismatch/mismatch, ...): it overstates relevance
against its own reasoning. Its total is capped at ``gate_value`` whatever else it
earned. Understating (e.g. L1 after match/match) only loses adherence. The
``violation`` component (1 = gated) is logged but never weighted.

Combination (``combine``, named after TRL's ``multi_objective_aggregation``):
``"sum"``: total = sum of weight * component. ``"normalize_then_sum"``: each
component is first z-scored within its group of ``group_size`` consecutive
completions (the trainer lays out infos as G consecutive rollouts per prompt and
sets ``group_size`` = G explicitly; inferring groups from repeated infos would
merge two draws of the same prompt), so that a component that varies little in
a group still moves the advantage. The gate is applied after combining (on the
normalised scale in that mode).

Simplifies: step agreement is exact string equality (no partial credit for a
near-synonym type such as "notebook" vs "laptop"); components are 0/1 per item
except ``steps`` and partial grade credit; no per-step weights; no reward
normalisation or clipping beyond normalize_then_sum (advantages are group
normalised in the trainer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

from searchrl.config import check_choices
from searchrl.errors import ConfigError
from searchrl.relevance.format.parser import allowed_grades, is_consistent, parse_completion
from searchrl.relevance.format.prompt import STEPS

REWARD_KINDS = ("grade", "rule_aware")


@dataclass
class RewardOutput:
    rewards: list[float]  # total reward per completion
    components: dict[str, list[float]] = field(default_factory=dict)  # name -> one value per completion (logged)


class RewardFunction(Protocol):
    def __call__(self, completions: list[str], infos: list[dict]) -> RewardOutput:
        """completions[i] was sampled for the prompt described by infos[i] (one info per completion)."""
        ...


# ---------------------------------------------------------------- grade reward

@dataclass
class GradeRewardConfig:
    correct: float = 1.0  # reward when the parsed grade equals the gold grade
    wrong: float = 0.0  # reward when it differs or cannot be read
    format_weight: float = 0.1  # bonus for a completion without format errors (0 = label-only reward)


@dataclass
class GradeReward(GradeRewardConfig):
    """``correct`` / ``wrong`` for the parsed grade vs ``info["grade"]``, plus ``format_weight`` if well formed."""
    order: str = "label_first"  # completion order the parser expects (the model's prompt.order)

    def __call__(self, completions: list[str], infos: list[dict]) -> RewardOutput:
        if len(completions) != len(infos):
            raise ValueError(f"{len(completions)} completions but {len(infos)} infos")
        grade, fmt = [], []
        for text, info in zip(completions, infos):
            parsed = parse_completion(text, self.order)
            grade.append(self.correct if parsed.grade == int(info["grade"]) else self.wrong)
            fmt.append(self.format_weight if parsed.ok else 0.0)
        return RewardOutput([g + f for g, f in zip(grade, fmt)], {"grade": grade, "format": fmt})


# ---------------------------------------------------------------- rule-aware reward (TaoSR-AGRL)
COMPONENTS = ("format", "steps", "adherence", "grade")
COMBINE = ("sum", "normalize_then_sum")
REFERENCES = ("completion", "engine")


@dataclass
class RuleRewardConfig:
    w_format: float = 0.1  # weight of the format component
    w_steps: float = 0.5  # weight of the per-step agreement with the reference verdicts
    w_adherence: float = 0.5  # weight of rule adherence (grade allowed by the completion's own verdicts)
    w_grade: float = 1.0  # weight of the final-grade component
    adjacent_credit: float = 0.0  # grade component for a grade one level from gold (0 = exact match only)
    gate: bool = True  # cap the total of a completion that breaks a hard rule at gate_value
    gate_value: float = 0.0  # the cap (on the normalised scale with normalize_then_sum)
    combine: str = "sum"  # sum | normalize_then_sum (components z-scored within each group first)
    norm_eps: float = 1e-4  # added to a component's group std before dividing (normalize_then_sum)
    reference: str = "completion"  # where the reference step verdicts come from: completion | engine (module doc)
    steps: list[str] = dataclasses.field(default_factory=lambda: ["query", "item", "category", "attribute"])
    #   steps compared with the reference; "verdict" may be added but duplicates the grade component

    def __post_init__(self):
        if self.combine not in COMBINE:
            raise ConfigError(f"combine must be one of {COMBINE}, got {self.combine!r}")
        if self.reference not in REFERENCES:
            raise ConfigError(f"reference must be one of {REFERENCES}, got {self.reference!r}")
        bad = [s for s in self.steps if s not in STEPS]
        if bad or not self.steps:
            raise ConfigError(f"steps must be a non-empty subset of {STEPS}, got {self.steps!r}")
        if not 0.0 <= self.adjacent_credit <= 1.0:
            raise ConfigError(f"adjacent_credit must be in [0, 1], got {self.adjacent_credit}")

    @property
    def weights(self) -> dict[str, float]:
        return {"format": self.w_format, "steps": self.w_steps, "adherence": self.w_adherence,
                "grade": self.w_grade}


def breaks_hard_rule(grade, verdicts: dict) -> bool:
    """True when `grade` is above every grade RULE_TABLE allows for the category/attribute verdicts.

    Without both verdicts (or without a grade) no hard rule can be shown broken; such
    completions lose format and adherence instead.
    """
    allowed = allowed_grades(verdicts)
    return grade in (1, 2, 3, 4) and bool(allowed) and grade > max(allowed)


@dataclass
class RuleAwareReward:
    """Rule-aware reward (module docstring); call it like any rewards.RewardFunction."""
    cfg: RuleRewardConfig = dataclasses.field(default_factory=RuleRewardConfig)  # weights, gate, combination
    order: str = "label_first"  # completion order the parser expects (the model's prompt.order)
    group_size: int = 0  # completions per prompt, consecutive in the batch; required by normalize_then_sum
    rules: str = ""  # rule file for reference="engine"; "" = the packaged rules.yaml

    def __post_init__(self):
        self._engine = None  # built on first use with reference="engine" (reading the rule file costs time)

    def reference_verdicts(self, info: dict, cache: dict) -> dict:
        if self.cfg.reference == "engine":
            if "query" not in info or "product" not in info:
                raise ValueError("reference='engine' needs info['query'] and info['product']")
            key = (info["query"], repr(sorted(info["product"].items())))
            if key not in cache:
                if self._engine is None:
                    from searchrl.relevance.rules.engine import RuleEngine
                    self._engine = RuleEngine.from_yaml(self.rules or None)
                cache[key] = self._engine.judge(info["query"], info["product"]).verdicts
            return cache[key]
        if "completion" not in info:
            raise ValueError("reference='completion' needs info['completion'] (the teacher's reference completion)")
        text = info["completion"]
        if text not in cache:
            cache[text] = parse_completion(text, self.order).verdicts
        return cache[text]

    def score(self, text: str, info: dict, cache: dict | None = None) -> tuple[dict[str, float], bool]:
        """({component: value in [0, 1]}, breaks a hard rule) for one completion."""
        cfg = self.cfg
        parsed = parse_completion(text, self.order)
        ref = self.reference_verdicts(info, {} if cache is None else cache)
        compared = [s for s in cfg.steps if s in ref]  # a step the reference lacks cannot be graded
        steps = sum(parsed.verdicts.get(s) == ref[s] for s in compared) / len(compared) if compared else 0.0
        gold = int(info["grade"])
        off = abs(parsed.grade - gold) if parsed.grade is not None else None
        grade = 1.0 if off == 0 else cfg.adjacent_credit if off == 1 else 0.0
        comps = {"format": float(parsed.ok), "steps": float(steps),
                 "adherence": float(is_consistent(parsed.grade, parsed.verdicts)), "grade": grade}
        return comps, breaks_hard_rule(parsed.grade, parsed.verdicts)

    def __call__(self, completions: list[str], infos: list[dict]) -> RewardOutput:
        if len(completions) != len(infos):
            raise ValueError(f"{len(completions)} completions but {len(infos)} infos")
        cfg, n = self.cfg, len(completions)
        if cfg.combine == "normalize_then_sum" and (self.group_size < 1 or n % self.group_size):
            raise ValueError(f"normalize_then_sum needs group_size >= 1 dividing the batch ({n}), "
                             f"got {self.group_size}")
        cache: dict = {}  # reference verdicts: each prompt's info repeats group_size times
        comps = {k: [0.0] * n for k in COMPONENTS}
        violation = [0.0] * n
        for i, (text, info) in enumerate(zip(completions, infos)):
            values, broken = self.score(text, info, cache)
            for k in COMPONENTS:
                comps[k][i] = values[k]
            violation[i] = float(broken)
        scaled = comps if cfg.combine == "sum" else {k: _group_z(v, self.group_size, cfg.norm_eps)
                                                     for k, v in comps.items()}
        total = [sum(cfg.weights[k] * scaled[k][i] for k in COMPONENTS) for i in range(n)]
        if cfg.gate:
            total = [min(t, cfg.gate_value) if v else t for t, v in zip(total, violation)]
        return RewardOutput(total, {**comps, "violation": violation})


def _group_z(values: list[float], g: int, eps: float) -> list[float]:
    """(v - group mean) / (group std + eps) over consecutive groups of g; a constant group gives zeros."""
    out = []
    for start in range(0, len(values), g):
        grp = values[start:start + g]
        mean = sum(grp) / len(grp)
        std = (sum((v - mean) ** 2 for v in grp) / len(grp)) ** 0.5
        out += [(v - mean) / (std + eps) for v in grp]
    return out


# ---------------------------------------------------------------- the config GRPO reads

@dataclass
class RewardConfig:
    kind: str = "grade"  # grade: GradeReward | rule_aware: TaoSR-AGRL's RuleAwareReward
    grade: GradeRewardConfig = field(default_factory=GradeRewardConfig)  # kind=grade: correct / wrong / format
    rule_aware: RuleRewardConfig = field(default_factory=RuleRewardConfig)  # kind=rule_aware: weights, gate,
    #   combination (its group size and completion order come from the trainer)

    def __post_init__(self):
        check_choices(self, kind=REWARD_KINDS)


def build_reward(cfg: RewardConfig, order: str, group_size: int, rules: str = "") -> RewardFunction:
    """The reward function ``cfg`` describes, for completions in ``order`` sampled ``group_size`` per prompt."""
    if cfg.kind == "rule_aware":
        return RuleAwareReward(cfg.rule_aware, order, group_size, rules)
    return GradeReward(**dataclasses.asdict(cfg.grade), order=order)
