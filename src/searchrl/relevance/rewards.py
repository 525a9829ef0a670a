"""Reward functions for relevance RL (GRPO): decoded completions in, one float per completion out.

The interface is a plain callable (see :class:`RewardFunction`): it gets the decoded
completions and, for each, what is known of its prompt -- the example dict the
trainer was given: ``grade`` (gold, 1..4), and when known ``query``, ``prompt``,
``completion`` (the teacher's reference completion, whose step verdicts the
rule-aware rewards of TaoSR-AGRL will compare against), ``query_id``,
``product_id``. It returns a :class:`RewardOutput`: the total reward per completion
and named components (each one float per completion) that the trainer logs as
means. Rule-aware rewards plug in by being another such callable.

:class:`GradeReward` is the plain GRPO reward: correctness of the parsed grade plus
a format term. Format term (our choice; the papers do not pin one down): ``+w``
when the completion parses with no format error (grade token where the order puts
it, five well-formed step lines, the verdict line stating the same grade), else 0.
A bonus rather than a penalty, so that with ``w = 0`` nothing changes and with a
label-only completion (no reasoning) the reward is just correctness; a completion
whose grade cannot be read is simply wrong.

Simplifies: no reward normalisation or clipping here (advantages are group
normalised in the trainer); no batching across prompts beyond a Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from searchrl.relevance.parser import parse_completion


@dataclass
class RewardOutput:
    rewards: list[float]  # total reward per completion
    components: dict[str, list[float]] = field(default_factory=dict)  # name -> one value per completion (logged)


class RewardFunction(Protocol):
    def __call__(self, completions: list[str], infos: list[dict]) -> RewardOutput:
        """completions[i] was sampled for the prompt described by infos[i] (one info per completion)."""
        ...


@dataclass
class GradeReward:
    """``correct`` / ``wrong`` for the parsed grade vs ``info["grade"]``, plus ``format_weight`` if well formed."""
    correct: float = 1.0  # reward when the parsed grade equals the gold grade
    wrong: float = 0.0  # reward when it differs or cannot be read
    format_weight: float = 0.1  # bonus for a completion without format errors (0 = label-only reward)
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
