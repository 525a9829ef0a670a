"""TaoSR-AGRL adaptive guided replay: guided rollouts for prompts the policy keeps getting wrong.

After a round of rollouts is scored, every group whose accuracy (share of its G completions
with the gold grade) is below ``accuracy_threshold`` gets M = ``num_guided`` extra rollouts
sampled from the same policy under a *hinted* prompt: the prompt plus a line carrying the gold
grade and the rules that apply (the reference completion's category/attribute verdicts and the
grades the rule table allows for them; the reference is the rule teacher's completion, already
conditioned on the gold grade). The guided rollouts are scored by the same reward function and
either replace the group's M lowest-reward rollouts (``mode: replace``, default: the group keeps
G rows, so the batch shape and the advantage scale do not change) or join it (``mode: join``: a
group of G + M). A stuck group (all wrong: zero reward spread, which dynamic sampling would drop
and whose advantages are all 0) so gets a spread and a gradient towards the right answer.

How guided rollouts are trained (``train_prompt``):

- ``unhinted`` (default): under the prompt *without* the hint, because that is the prompt the
  model will see at serving time; the policy must learn to reach the answer without help. The
  rollouts were sampled from pi(. | hinted prompt), so they are off-policy for the un-hinted
  prompt: each token carries the importance ratio w = pi_theta(y_t | x, y_<t) / pi_b(y_t | x_hint,
  y_<t) against the hinted behaviour, clipped to [``ratio_min``, 1 + eps_high] and used as the
  ratio of the clipped surrogate (:func:`guided_old_logps`). The floor is ours: a stuck policy gives
  the right answer a tiny probability without the hint, so the raw ratio (and with it the gradient
  w * A * grad log pi) is near 0 exactly where guidance is needed; a floor keeps a bounded,
  biased-but-useful signal (LUFFY's policy shaping makes the same point with r / (r + gamma)).
- ``hinted``: under the hinted prompt itself, on-policy (ratio 1). Cheaper and unbiased, but it
  teaches the policy to use hints, which it will not get at serving time.

Hard-prompt buffer (:class:`HardPromptBuffer`): a prompt whose unguided group accuracy is below
the threshold enters the buffer (oldest evicted beyond ``buffer_capacity``); each prompt slot of
a draw comes from the buffer with probability ``revisit_prob``; a prompt leaves when a revisit
scores at or above the threshold. Its state (members, RNG) is saved in checkpoints.

Simplifies: the hint is one fixed English sentence; guided rollouts are not themselves re-guided;
the buffer is per rank under torchrun.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from searchrl.config import check_choices
from searchrl.errors import ConfigError
from searchrl.relevance.format.parser import allowed_grades, parse_completion
from searchrl.relevance.format.prompt import MARKER
from searchrl.relevance.model.tokenizer import encode_prompt, render_prompt
from searchrl.relevance.train.rewards import RewardOutput
from searchrl.rl.rollout import Rollout, concat_rollouts, sample_groups

ANSWER_CUE = "Answer:"  # prompt.build_prompt ends with it; the hint goes right before it


@dataclass
class GuidedReplayConfig:
    enabled: bool = False  # off by default: plain GRPO
    accuracy_threshold: float = 0.25  # a group with accuracy below this (e.g. 0 or 1 right of G=8) is guided
    num_guided: int = 2  # M: guided rollouts per such group
    mode: str = "replace"  # replace = they take the place of the group's M lowest-reward rollouts | join = G + M
    train_prompt: str = "unhinted"  # unhinted = trained under the serving prompt with a clipped importance
    #   ratio against the hinted behaviour (the default: the policy must learn to answer without help) | hinted
    ratio_min: float = 0.2  # unhinted: floor of the guided rows' importance ratio (see the module docstring)
    hint_rules: bool = True  # the hint also names the reference step verdicts and the grades they allow
    buffer_capacity: int = 64  # hard-prompt buffer size per rank; 0 = no buffer
    revisit_prob: float = 0.25  # share of drawn prompts taken from the buffer (when it is not empty)

    def __post_init__(self):
        check_choices(self, mode=("replace", "join"), train_prompt=("unhinted", "hinted"))
        if self.num_guided < 1 or not 0 < self.ratio_min <= 1 or not 0 <= self.revisit_prob <= 1:
            raise ConfigError("num_guided must be >= 1, ratio_min in (0, 1], revisit_prob in [0, 1]")
        if not 0 < self.accuracy_threshold <= 1 or self.buffer_capacity < 0:
            raise ConfigError("accuracy_threshold must be in (0, 1] and buffer_capacity >= 0")


def hint_text(info: dict, rules: bool = True) -> str:
    """The guidance line: the gold grade, and (from the reference completion) the rule verdicts that lead to it."""
    grade = int(info["grade"])
    text = f"Hint: the correct grade is L{grade}."
    ref = parse_completion(info.get("completion") or "", "label_first") if rules else None
    if ref is None or ref.grade is None:  # the reference may be cot-first
        ref = parse_completion(info.get("completion") or "", "cot_first") if rules else None
    if ref is not None and "category" in ref.verdicts and "attribute" in ref.verdicts:
        allowed = ", ".join(f"L{g}" for g in sorted(allowed_grades(ref.verdicts))) or "none"
        text += (f" Rules that apply: category {ref.verdicts['category']}, attribute {ref.verdicts['attribute']};"
                 f" the rules allow {allowed}.")
    return text


def hinted_prompt(prompt: str, hint: str) -> str:
    """The plain prompt with the hint inserted before its final answer cue (appended if it has none); in the
    segments layout, before the read marker (the hint is read with the query and the product)."""
    if prompt.endswith(MARKER + MARKER):
        return f"{prompt[:-len(MARKER)]}{hint}{MARKER}"
    body = prompt.rstrip("\n")
    if body.endswith(ANSWER_CUE):
        return f"{body[:-len(ANSWER_CUE)].rstrip()}\n{hint}\n\n{ANSWER_CUE}\n"
    return f"{body}\n{hint}\n"


def guided_old_logps(logp: torch.Tensor, old_logp: torch.Tensor | None, rollout: Rollout,
                     ratio_min: float, ratio_max: float) -> torch.Tensor | None:
    """[N, T] "old" log-probs such that guided rows' ratio is clamp(pi_theta / pi_b, ratio_min, ratio_max).

    logp: [N, T] current log-probs (with gradient); old_logp: [N, T] or None (on-policy). Rows without
    behaviour log-probs keep old_logp. clipped_surrogate then sees w = exp(logp - old) = the clipped ratio,
    whose gradient is w * grad log pi (the clip is on the value, not on the gradient's path).
    """
    guided, behaviour = rollout.extras.get("guided"), rollout.extras.get("behaviour_logp")
    if guided is None or behaviour is None or not bool(guided.any()):
        return old_logp
    cur = logp.detach()
    base = cur if old_logp is None else old_logp
    b = behaviour.to(logp.device)  # [N, T]
    w = torch.exp(cur - b).clamp(ratio_min, ratio_max)  # [N, T]
    guided = guided.to(logp.device)[:, None]  # [N, 1]
    return torch.where(guided, cur - torch.log(w), base)


class HardPromptBuffer:
    """Prompt indices that keep failing, revisited with probability ``revisit_prob`` per drawn slot."""

    def __init__(self, capacity: int, revisit_prob: float, seed):
        self.capacity, self.revisit_prob = capacity, revisit_prob
        self.items: deque[int] = deque()
        self.rng = np.random.default_rng(seed)
        self.left = 0  # prompts that left after a good revisit (running count, logged per step as a delta)

    def draw(self, sampler, n: int) -> tuple[list[int], int]:
        """(n prompt indices, how many came from the buffer); the rest come from ``sampler``."""
        from_buf = [] if not self.items else [
            int(self.items[self.rng.integers(len(self.items))]) for _ in range(n) if self.rng.random() < self.revisit_prob]
        from_buf = list(dict.fromkeys(from_buf))  # a prompt at most once per draw
        return from_buf + sampler.draw(n - len(from_buf)), len(from_buf)

    def update(self, idx: list[int], accuracy: list[float], threshold: float) -> None:
        for i, acc in zip(idx, accuracy):
            if acc < threshold:
                if i not in self.items and self.capacity:
                    self.items.append(i)
                    while len(self.items) > self.capacity:
                        self.items.popleft()
            elif i in self.items:
                self.items.remove(i)
                self.left += 1

    def state_dict(self) -> dict:
        return {"items": list(self.items), "rng": self.rng.bit_generator.state, "left": self.left}

    def load_state_dict(self, state: dict) -> None:
        self.items = deque(int(i) for i in state["items"])
        self.rng.bit_generator.state = state["rng"]
        self.left = int(state["left"])


class GuidedReplay:
    """Draws (with the hard-prompt buffer) and guides the low-accuracy groups of one rank's rounds."""

    def __init__(self, cfg: GuidedReplayConfig, prompts: list[dict], tokenizer, chat_template: bool, seed,
                 grammar=None):
        self.cfg, self.prompts, self.tok, self.chat_template = cfg, prompts, tokenizer, chat_template
        self.grammar = grammar  # the completion grammar that hinted rollouts keep to, as unhinted ones do
        self.buffer = HardPromptBuffer(cfg.buffer_capacity, cfg.revisit_prob, seed)
        self.encoded: dict[int, list[int]] = {}  # prompt index -> hinted prompt ids (cached)
        # guided_correct counts the hinted rollouts that are right; unguided_correct the same groups' own rollouts
        # that are right (below accuracy_threshold by selection): the fair baseline for the hint's effect
        self.stats = {"guided_groups": 0, "guided_rollouts": 0, "guided_correct": 0, "unguided_rollouts": 0,
                      "unguided_correct": 0, "buffer_draws": 0}

    def reset_stats(self) -> None:
        self.stats = {k: 0 for k in self.stats}

    def draw(self, sampler, n: int) -> list[int]:
        idx, from_buf = self.buffer.draw(sampler, n)
        self.stats["buffer_draws"] += from_buf
        return idx

    def _hinted(self, i: int) -> list[int]:
        if i not in self.encoded:
            p = self.prompts[i]
            text = hinted_prompt(p["prompt"], hint_text(p, self.cfg.hint_rules))
            self.encoded[i] = encode_prompt(self.tok, render_prompt(self.tok, text, self.chat_template))
        return self.encoded[i]

    def guide(self, model, ro: Rollout, idx: list[int], infos: list[dict], scored: RewardOutput,
              correct: list[bool], reward_fn, rollout, order: str, generator,
              logps_fn) -> list[tuple[Rollout, RewardOutput]]:
        """[(rollout, rewards)] after guiding the low-accuracy groups of one scored round: one part (replace, or
        nothing guided), or two (join: the grown groups, size G + M, and the rest, size G; see rollout.group_size).

        ro / infos / scored / correct: the round's B*G rows (G consecutive per prompt idx[b]). rollout: the
        grpo_rollouts.RolloutConfig (sampling settings); order: the completion order the parser expects.
        logps_fn(model, rollout) -> [N, T] log-probs (no grad).
        """
        cfg, g, m = self.cfg, ro.group_size, self.cfg.num_guided
        acc = torch.tensor(correct, dtype=torch.float32).reshape(-1, g).mean(1)  # [B]
        self.buffer.update(idx, acc.tolist(), cfg.accuracy_threshold)
        low = (acc < cfg.accuracy_threshold).nonzero().squeeze(1).tolist()
        if not low:
            return [(ro, scored)]
        grammar = self.grammar and self.grammar.bind([self.prompts[idx[b]].get("linked_slugs") for b in low])
        gro = sample_groups(model, self.tok, [self._hinted(idx[b]) for b in low], m, rollout.max_new_tokens,
                            rollout.temperature, rollout.top_p, generator, grammar=grammar)  # [L*M] rows under the hinted prompts
        ginfos = [infos[b * g] for b in low for _ in range(m)]
        gtexts = gro.texts(self.tok)
        gscored = reward_fn(gtexts, ginfos)
        self.stats["guided_groups"] += len(low)
        self.stats["unguided_rollouts"] += len(low) * g
        self.stats["unguided_correct"] += sum(sum(correct[b * g:(b + 1) * g]) for b in low)
        self.stats["guided_rollouts"] += len(gtexts)
        self.stats["guided_correct"] += sum(parse_completion(t, order).grade == int(i["grade"])
                                            for t, i in zip(gtexts, ginfos))
        gro.extras["guided"] = torch.ones(len(gtexts), dtype=torch.bool)  # [L*M]
        if cfg.train_prompt == "unhinted":
            # [L*M, T] log-probs under the hinted prompt that sampled them: the behaviour policy of these rows
            gro.extras["behaviour_logp"] = logps_fn(model, gro)
            plain = ro.take(torch.tensor([b * g for b in low]).repeat_interleave(m))  # the un-hinted prompts
            gro.prompt_ids, gro.prompt_mask = plain.prompt_ids, plain.prompt_mask
        both = concat_rollouts([ro, gro], self.tok.pad_token_id, g)
        rewards = list(scored.rewards) + list(gscored.rewards)
        comps = {k: list(v) + list(gscored.components.get(k, [0.0] * len(gtexts))) for k, v in scored.components.items()}
        n = len(scored.rewards)
        guided_of = {b: [n + j * m + k for k in range(m)] for j, b in enumerate(low)}
        if cfg.mode == "join":  # guided groups grow to G + M; the others keep G, in a part of their own
            joined = [r for b in low for r in list(range(b * g, (b + 1) * g)) + guided_of[b]]
            rest = [r for b in range(len(idx)) if b not in guided_of for r in range(b * g, (b + 1) * g)]
            parts = [(joined, g + m)] + ([(rest, g)] if rest else [])
        else:
            order = []
            for b in range(len(idx)):
                rows = list(range(b * g, (b + 1) * g))
                if b in guided_of:  # keep the G - M best unguided rollouts, then the M guided ones
                    rows = sorted(sorted(rows, key=lambda r: -rewards[r])[:g - m]) + guided_of[b]
                order += rows
            parts = [(order, g)]
        return [(both.take(torch.tensor(rows), size),
                 RewardOutput([rewards[r] for r in rows], {k: [v[r] for r in rows] for k, v in comps.items()}))
                for rows, size in parts]
