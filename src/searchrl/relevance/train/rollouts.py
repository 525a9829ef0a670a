"""The data side of relevance GRPO: the rollout config, prompt sampling, rollouts with dynamic sampling, log-probs.

Prompts are examples.split_examples of the train split (built exactly as SFT builds its
examples; the teacher completion rides along as the reference that rule-aware rewards
compare step verdicts against), rendered with the model's own prompt settings.

- :class:`RolloutConfig` (``rollout.*``): group size, prompts per step, sampling, dynamic sampling.
- :class:`PromptSampler`: shuffled passes over the prompts; with class balance one
  pass per gold grade, drawn round robin, so every draw has equal numbers per grade
  (+-1). Its state is a plain dict, saved in checkpoints for exact resume.
- :func:`collect_groups`: draws prompts, samples G completions each (rollout.sample_groups:
  one prefill per prompt), scores them, and with dynamic sampling keeps only the
  groups whose rewards differ, drawing more prompts (x oversample) up to a cap of
  refill rounds; with guided replay (guided_replay.py), low-accuracy groups get their
  guided rollouts before that filter sees them.
- :func:`completion_logps`: per-token log-probs (and entropies) of the sampled completions.

Simplifies: refills are class balanced as draws, but filtering can leave the kept
groups unbalanced (an easy grade is filtered more); when a rank keeps no group at
all it trains on its last round's groups, whose advantages are 0 (only the KL term
acts), so that every data-parallel rank still runs its forward/backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from searchrl.config import check_choices
from searchrl.errors import ConfigError
from searchrl.relevance.format.parser import parse_completion
from searchrl.rl.grpo_loss import dynamic_sampling_mask, token_logps
from searchrl.rl.rollout import Rollout, sample_groups


@dataclass
class RolloutConfig:
    group_size: int = 8  # G: completions sampled per prompt
    prompts_per_step: int = 8  # groups trained on per step, over all ranks (divisible by the world size)
    temperature: float = 1.0  # sampling temperature (> 0); log-probs are scored under the same temperature
    top_p: float = 1.0  # nucleus sampling; 1 = off
    max_new_tokens: int = 160  # completion length cap (label-first: the grade is the first token)
    dynamic_sampling: bool = True  # drop groups with all-equal rewards and draw more prompts (DAPO)
    oversample: float = 2.0  # with dynamic sampling, draw this many prompts per group still needed
    max_refill_rounds: int = 3  # cap: at most this many extra sampling rounds per step; train on what was kept
    ds_std_tol: float = 0.0  # a group is kept only if its reward std is above this (0: rewards not all equal)
    ds_signal: str = "grade"  # what dynamic sampling tests for spread: "grade" = the reward's grade-correctness
    #   component (TaoSR1: 0 < #correct < G) when it has one, else the total | "reward" = the total reward
    class_balance: bool = True  # draw prompts with equal numbers per gold grade (TaoSR1's balanced mix)

    def __post_init__(self):
        check_choices(self, ds_signal=("grade", "reward"))
        if self.group_size < 2 or self.prompts_per_step < 1:
            raise ConfigError("group_size must be >= 2 and prompts_per_step >= 1")
        if self.temperature <= 0 or self.oversample < 1:
            raise ConfigError("temperature must be > 0 and oversample >= 1")


class PromptSampler:
    """Draws prompt indices; see the module docstring. ``seed`` may be a list (e.g. [seed, rank])."""

    def __init__(self, grades: list[int], class_balance: bool, seed):
        self.rng = np.random.default_rng(seed)
        if class_balance:
            self.pools = {g: [i for i, x in enumerate(grades) if int(x) == g] for g in sorted({int(x) for x in grades})}
        else:
            self.pools = {0: list(range(len(grades)))}
        self.keys = sorted(self.pools)
        self.queues: dict[int, list[int]] = {k: [] for k in self.keys}
        self.turn = 0  # which pool the next draw comes from (round robin over grades)

    def draw(self, n: int) -> list[int]:
        out = []
        for _ in range(n):
            key = self.keys[self.turn % len(self.keys)]
            self.turn += 1
            if not self.queues[key]:  # a new shuffled pass over this pool
                self.queues[key] = [int(i) for i in self.rng.permutation(self.pools[key])]
            out.append(self.queues[key].pop())
        return out

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "queues": {k: list(v) for k, v in self.queues.items()},
                "turn": self.turn}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.queues = {int(k): list(v) for k, v in state["queues"].items()}
        self.turn = int(state["turn"])


# ---------------------------------------------------------------- rollouts

@dataclass
class Groups:
    """The groups one rank trains on in one step, plus what was sampled to get them (for logging)."""
    pieces: list[Rollout]  # kept groups, one Rollout per sampling round and part (paddings and group sizes differ)
    rewards: list[torch.Tensor]  # [n_i * G] per piece, same order
    drawn_rewards: torch.Tensor  # [N * G] every sampled completion's reward, filtered groups included
    components: dict[str, float] = field(default_factory=dict)  # name -> sum over every sampled completion
    n_correct: int = 0  # sampled completions whose parsed grade equals the gold grade
    n_drawn_groups: int = 0  # groups sampled, filtered ones included
    n_zero_std: int = 0  # sampled groups whose rewards were all equal
    n_filtered: int = 0  # groups dropped by dynamic sampling (0 when it is off)
    completion_tokens: int = 0  # sampled completion tokens (EOS included), filtered groups included


def ds_signal(scored, rewards: torch.Tensor, kind: str) -> torch.Tensor:
    """What dynamic sampling looks at: the grade-correctness component when the reward reports one ("grade",
    TaoSR1's 0 < #correct < G; a format bonus that differs between samples would otherwise keep almost every
    group), else the total reward."""
    if kind == "grade" and "grade" in scored.components:
        return torch.tensor(scored.components["grade"], dtype=torch.float32)
    return rewards


def collect_groups(model, tok, encoded: list[list[int]], prompts: list[dict], sampler: PromptSampler,
                   generator: torch.Generator, reward_fn, cfg: RolloutConfig, order: str, target: int,
                   replay=None, grammar=None) -> Groups:
    """Up to ``target`` groups for this rank; see the module docstring. ``order`` is the completion order the
    parser expects; ``replay`` a guided_replay.GuidedReplay (draws through its hard-prompt buffer, guides
    low-accuracy groups) or None; ``grammar`` the completion grammar sampling keeps to (format.grammar)."""
    g = cfg.group_size
    out = Groups([], [], torch.zeros(0))
    drawn, kept = [], 0
    rounds = 1 + (cfg.max_refill_rounds if cfg.dynamic_sampling else 0)
    last = None
    for _ in range(rounds):
        need = target - kept
        if need <= 0:
            break
        n = math.ceil(need * cfg.oversample) if cfg.dynamic_sampling else need
        idx = replay.draw(sampler, n) if replay else sampler.draw(n)
        bound = grammar and grammar.bind([prompts[i].get("linked_slugs") for i in idx])  # rules.engine.link_examples
        ro = sample_groups(model, tok, [encoded[i] for i in idx], g, cfg.max_new_tokens, cfg.temperature,
                           cfg.top_p, generator, grammar=bound)
        texts = ro.texts(tok)
        infos = [prompts[i] for i in idx for _ in range(g)]
        scored = reward_fn(texts, infos)
        drawn.append(torch.tensor(scored.rewards, dtype=torch.float32))  # [n*G] the policy's own rollouts
        for name, vals in scored.components.items():
            out.components[name] = out.components.get(name, 0.0) + float(sum(vals))
        correct = [parse_completion(t, order).grade == int(i["grade"]) for t, i in zip(texts, infos)]
        out.n_correct += sum(correct)
        out.completion_tokens += int(ro.completion_mask.sum())
        out.n_drawn_groups += len(idx)
        parts = [(ro, scored)]
        if replay is not None:  # may regroup (join) and adds guided rows before the filter sees the groups
            parts = replay.guide(model, ro, idx, infos, scored, correct, reward_fn, cfg, order, generator,
                                 lambda m, r: completion_logps(m, r, next(m.parameters()).device, cfg.temperature)[0])
        for part, part_scored in parts:
            gp = part.group_size
            rewards = torch.tensor(part_scored.rewards, dtype=torch.float32)  # [k*Gp]
            spread = dynamic_sampling_mask(ds_signal(part_scored, rewards, cfg.ds_signal), gp, cfg.ds_std_tol)  # [k]
            out.n_zero_std += int((~spread).sum())
            keep = spread if cfg.dynamic_sampling else torch.ones_like(spread)
            keep_groups = keep.nonzero().squeeze(1)[:max(target - kept, 0)]  # DAPO keeps exactly the batch size
            out.n_filtered += int((~keep).sum())
            last = (part, rewards)
            if len(keep_groups):
                rows = (keep_groups[:, None] * gp + torch.arange(gp)).flatten()  # [k*Gp]: the kept groups' rows
                out.pieces.append(part.take(rows))
                out.rewards.append(rewards[rows])
                kept += len(keep_groups)
    if not out.pieces:  # nothing kept: train on the last part (advantages 0), so DDP ranks stay in step
        part, rewards = last
        gp = part.group_size
        rows = torch.arange(min(target, part.completion_ids.shape[0] // gp) * gp)
        out.pieces.append(part.take(rows))
        out.rewards.append(rewards[rows])
    out.drawn_rewards = torch.cat(drawn)
    return out


def split_rows(r: Rollout, size: int) -> list[Rollout]:
    """Chunks of at most ``size`` rows (0 = one chunk)."""
    n = r.completion_ids.shape[0]
    size = size or n
    return [r.take(torch.arange(s, min(s + size, n))) for s in range(0, n, size)]


def completion_logps(model, r: Rollout, device, temperature: float = 1.0,
                     entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """([N, T] log-probs of the sampled completion tokens at `temperature`, [N, T] entropies or None).

    One forward over prompt + completion; padding completion positions get log-prob 0.
    The entropy is that of the distribution each token was sampled from (detached).
    """
    ids = torch.cat([r.prompt_ids, r.completion_ids], 1).to(device)  # [N, P+T]
    mask = torch.cat([r.prompt_mask, r.completion_mask], 1).to(device)  # [N, P+T]
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # [N, P+T]: left padding does not shift positions
    t = r.completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=t + 1).logits[:, :-1]
    labels = r.completion_ids.to(device).masked_fill(r.completion_mask.to(device) == 0, -100)  # [N, T]
    logp = token_logps(logits, labels, temperature)  # [N, T]
    ent = None
    if entropy:
        with torch.no_grad():
            lp = torch.log_softmax(logits.float() / temperature, -1)  # [N, T, V]
            ent = -(lp.exp() * lp).sum(-1)  # [N, T]
    return logp, ent
