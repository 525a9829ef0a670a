"""The data side of relevance GRPO: prompts, prompt sampling, rollouts with dynamic sampling, policy log-probs.

- :func:`dataset_prompts`: {prompt, grade, completion, query, product, ...} per
  judged pair of a split, built exactly as SFT builds its examples (rule teacher,
  human grade wins); the teacher completion rides along as the reference that
  rule-aware rewards will compare step verdicts against.
- :func:`model_scorer_config`: the prompt settings the model was trained with
  (its relevance_config.json), so GRPO prompts look like the SFT ones.
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
from pathlib import Path

import numpy as np
import torch

from searchrl.relevance.parser import parse_completion
from searchrl.relevance.prompt import PromptConfig
from searchrl.relevance.scorer_config import CONFIG_FILE, ScorerConfig, load_scorer_config
from searchrl.rl.grpo_loss import dynamic_sampling_mask, token_logps
from searchrl.rl.rollout import Rollout, sample_groups


# ---------------------------------------------------------------- prompts

def model_scorer_config(model: str, prompt: PromptConfig, chat_template: bool) -> ScorerConfig:
    """The model directory's scorer config when it has one, else one made of the given prompt settings."""
    if Path(model).is_dir() and (Path(model) / CONFIG_FILE).exists():
        return load_scorer_config(model)
    return ScorerConfig(prompt=prompt, chat_template=chat_template)


def dataset_prompts(data_dir: str, split: str, prompt_cfg: PromptConfig, rules: str = "") -> list[dict]:
    """One {"prompt", "grade", "completion", "query", "product", "query_id", "product_id"} per pair of `split`."""
    from searchrl.data.schema import load_dataset
    from searchrl.relevance.rules import RuleEngine
    from searchrl.relevance.teacher import PRODUCT_FIELDS, RuleTeacher, build_sft_examples
    from searchrl.relevance.vocab import field_text
    pairs = load_dataset(data_dir).split(split).pairs()
    teacher = RuleTeacher(RuleEngine.from_yaml(rules or None), prompt_cfg, "condition")  # "condition" drops nothing
    examples, _ = build_sft_examples(pairs, teacher, prompt_cfg)
    for ex, row in zip(examples, pairs.to_dict("records")):
        ex["query"] = str(row["text"])
        ex["product"] = {f: field_text(row, f) for f in PRODUCT_FIELDS}
    return examples


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
                   generator: torch.Generator, reward_fn, cfg, target: int, replay=None) -> Groups:
    """Up to ``target`` groups for this rank; see the module docstring. ``cfg`` is a GRPOConfig; ``replay`` a
    guided_replay.GuidedReplay (draws through its hard-prompt buffer, guides low-accuracy groups) or None."""
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
        ro = sample_groups(model, tok, [encoded[i] for i in idx], g, cfg.max_new_tokens, cfg.temperature,
                           cfg.top_p, generator)
        texts = ro.texts(tok)
        infos = [prompts[i] for i in idx for _ in range(g)]
        scored = reward_fn(texts, infos)
        drawn.append(torch.tensor(scored.rewards, dtype=torch.float32))  # [n*G] the policy's own rollouts
        for name, vals in scored.components.items():
            out.components[name] = out.components.get(name, 0.0) + float(sum(vals))
        correct = [parse_completion(t, cfg.prompt.order).grade == int(i["grade"]) for t, i in zip(texts, infos)]
        out.n_correct += sum(correct)
        out.completion_tokens += int(ro.completion_mask.sum())
        out.n_drawn_groups += len(idx)
        parts = [(ro, scored)]
        if replay is not None:  # may regroup (join) and adds guided rows before the filter sees the groups
            parts = replay.guide(model, ro, idx, infos, scored, correct, reward_fn, cfg, generator,
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
