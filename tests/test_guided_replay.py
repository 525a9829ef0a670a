"""TaoSR-AGRL adaptive guided replay: hints, the clipped off-policy ratio, the hard-prompt buffer, regrouping,
and the controlled learning test: a policy stuck on one class recovers with guided replay and not without."""

import json

import numpy as np
import pytest
import torch
from conftest import sft_config_for_tests

from searchrl.config import config_from_dict
from searchrl.relevance.format.prompt import PromptConfig, build_completion, build_prompt
from searchrl.relevance.model.load import grade_probs
from searchrl.relevance.model.scorer_config import ScorerConfig, save_scorer_config
from searchrl.relevance.model.tokenizer import render_prompt
from searchrl.relevance.train.grpo import GRPOConfig, train_grpo
from searchrl.relevance.train.guided_replay import (
    GuidedReplay,
    GuidedReplayConfig,
    HardPromptBuffer,
    guided_old_logps,
    hint_text,
    hinted_prompt,
)
from searchrl.relevance.train.rewards import GradeReward, RewardOutput
from searchrl.relevance.train.rollouts import PromptSampler, RolloutConfig
from searchrl.relevance.train.sft import train_sft
from searchrl.rl.grpo_loss import clipped_surrogate
from searchrl.rl.rollout import Rollout, concat_rollouts

COLOURS = {"red": 4, "blue": 3, "green": 2, "black": 1}
STUCK = {"red": 4, "blue": 3, "green": 2, "black": 4}  # what the SFT model answers: black (gold L1) -> L4
PC = PromptConfig(instruction="Grade it.")


def colour_prompts() -> list[dict]:
    return [{"prompt": build_prompt(item, {"title": f"{size} {c} {item}"}, PC), "grade": g, "colour": c}
            for c, g in COLOURS.items() for item in ("shirt", "cap", "sock") for size in ("small", "large")]


# ---------------------------------------------------------------- pieces

def test_hint_names_the_gold_grade_and_the_rules_and_sits_before_the_answer_cue():
    ref = build_completion(3, {"query": "laptop", "item": "laptop", "category": "match", "attribute": "partial"})
    hint = hint_text({"grade": 3, "completion": ref})
    assert hint.startswith("Hint: the correct grade is L3.")
    assert "category match, attribute partial" in hint and "allow L3" in hint
    assert hint_text({"grade": 2, "completion": "garbage"}) == "Hint: the correct grade is L2."  # no rules to name
    assert hint_text({"grade": 3, "completion": ref}, rules=False) == "Hint: the correct grade is L3."
    p = build_prompt("laptop", {"title": "x"}, PC)
    h = hinted_prompt(p, hint)
    assert h.endswith(f"{hint}\n\nAnswer:\n") and h.startswith(p[:-len("Answer:\n")].rstrip())
    assert hinted_prompt("no cue here", "Hint: x") == "no cue here\nHint: x\n"


def test_guided_rows_get_the_clipped_ratio_against_the_behaviour_and_its_gradient():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.01, 0.5], [0.9, 0.5]])).requires_grad_()  # [3, 2]
    behaviour = torch.log(torch.tensor([[1.0, 1.0], [0.99, 0.5], [0.5, 0.5]]))
    ro = Rollout(torch.zeros(3, 1), torch.ones(3, 1), torch.zeros(3, 2), torch.ones(3, 2), 3,
                 {"guided": torch.tensor([False, True, True]), "behaviour_logp": behaviour})
    old = guided_old_logps(logp, None, ro, ratio_min=0.2, ratio_max=1.28)
    w = torch.exp(logp - old)
    assert w[0].tolist() == pytest.approx([1.0, 1.0])  # unguided: on-policy
    assert w[1].tolist() == pytest.approx([0.2, 1.0])  # 0.01 / 0.99 floored at 0.2
    assert w[2].tolist() == pytest.approx([1.28, 1.0])  # 0.9 / 0.5 capped at 1 + eps_high
    adv = torch.tensor([0.0, 1.0, 0.0])
    loss, _ = clipped_surrogate(logp, old, adv, torch.ones(3, 2), 0.2, 0.28)
    loss.sum().backward()
    assert logp.grad[1, 0] == pytest.approx(-0.2)  # -w * A: the floor keeps a gradient where pi is tiny
    plain = Rollout(torch.zeros(3, 1), torch.ones(3, 1), torch.zeros(3, 2), torch.ones(3, 2), 3)
    assert guided_old_logps(logp, None, plain, 0.2, 1.28) is None


def test_concat_rollouts_repads_prompts_left_and_completions_right():
    a = Rollout(torch.tensor([[5, 6]]), torch.tensor([[1, 1]]), torch.tensor([[7]]), torch.tensor([[1]]), 1)
    b = Rollout(torch.tensor([[4, 5, 6]]), torch.tensor([[1, 1, 1]]), torch.tensor([[8, 9]]), torch.tensor([[1, 1]]),
                1, {"guided": torch.tensor([True]), "behaviour_logp": torch.tensor([[-0.1, -0.2]])})
    c = concat_rollouts([a, b], pad_id=0, group_size=2)
    assert c.prompt_ids.tolist() == [[0, 5, 6], [4, 5, 6]] and c.prompt_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    assert c.completion_ids.tolist() == [[7, 0], [8, 9]] and c.completion_mask.tolist() == [[1, 0], [1, 1]]
    assert c.extras["guided"].tolist() == [False, True]
    assert c.extras["behaviour_logp"][1].tolist() == pytest.approx([-0.1, -0.2])
    assert c.extras["behaviour_logp"][0].tolist() == [0.0, 0.0]  # a part without the extra contributes zeros
    assert c.take(torch.tensor([1])).extras["guided"].tolist() == [True]


def test_hard_prompt_buffer_admits_failures_revisits_them_and_lets_them_go():
    buf = HardPromptBuffer(capacity=2, revisit_prob=1.0, seed=0)
    buf.update([3, 4, 5], [0.0, 0.5, 0.1], threshold=0.25)
    assert list(buf.items) == [3, 5]
    buf.update([6], [0.0], 0.25)
    assert list(buf.items) == [5, 6]  # capacity 2: the oldest is evicted
    sampler = PromptSampler([1] * 10, class_balance=False, seed=0)
    idx, from_buf = buf.draw(sampler, 4)
    assert from_buf >= 1 and set(idx[:from_buf]) <= {5, 6} and len(idx) == 4  # revisit_prob 1: buffer first
    buf.update([5], [1.0], 0.25)
    assert list(buf.items) == [6] and buf.left == 1
    state = buf.state_dict()
    other = HardPromptBuffer(2, 1.0, seed=9)
    other.load_state_dict(state)
    assert list(other.items) == [6] and other.draw(PromptSampler([1] * 10, False, 0), 3) == \
        buf.draw(PromptSampler([1] * 10, False, 0), 3)
    with pytest.raises(ValueError, match="mode"):
        GuidedReplayConfig(mode="mix")
    with pytest.raises(ValueError, match="accuracy_threshold"):
        GuidedReplayConfig(accuracy_threshold=0.0)  # would never guide anything


class _Tok:
    pad_token_id, eos_token_id = 0, 1


def _guide(mode: str):
    """One round of 2 groups x G=4: group 0 all wrong (guided), group 1 all right; sampling stubbed out."""
    cfg = GuidedReplayConfig(enabled=True, num_guided=2, mode=mode, train_prompt="hinted")
    prompts = [{"prompt": "p0", "grade": 1}, {"prompt": "p1", "grade": 2}]
    gr = GuidedReplay(cfg, prompts, _Tok(), False, seed=0)
    gr._hinted = lambda i: [9, 9]
    ro = Rollout(torch.ones(8, 2, dtype=torch.long), torch.ones(8, 2), torch.arange(8)[:, None] + 10,
                 torch.ones(8, 1), 4)
    rewards = [0.0, 0.1, 0.2, 0.3, 1, 1, 1, 1]
    scored = RewardOutput(rewards, {"grade": [0, 0, 0, 0, 1, 1, 1, 1]})
    guided = Rollout(torch.full((2, 2), 9), torch.ones(2, 2), torch.tensor([[50], [51]]), torch.ones(2, 1), 2)
    import searchrl.relevance.train.guided_replay as mod
    real, mod.sample_groups = mod.sample_groups, lambda *a, **k: guided
    mod_texts = Rollout.texts
    Rollout.texts = lambda self, tok: ["<L1>"] * len(self.completion_ids)
    try:
        parts = gr.guide(None, ro, [0, 1], [prompts[0]] * 4 + [prompts[1]] * 4, scored, [False] * 4 + [True] * 4,
                         GradeReward(format_weight=0), RolloutConfig(max_new_tokens=1), PC.order, None, None)
    finally:
        mod.sample_groups, Rollout.texts = real, mod_texts
    return gr, parts


def test_replace_swaps_the_lowest_rewards_and_join_grows_the_group():
    gr, parts = _guide("replace")
    (ro, scored), = parts
    assert ro.group_size == 4 and ro.completion_ids[:, 0].tolist() == [12, 13, 50, 51, 14, 15, 16, 17]
    assert scored.rewards == [0.2, 0.3, 1.0, 1.0, 1, 1, 1, 1] and scored.components["grade"][2:4] == [1.0, 1.0]
    assert ro.extras["guided"].tolist() == [False, False, True, True] + [False] * 4
    assert ro.prompt_ids[2].tolist() == [9, 9]  # hinted mode: trained under the hinted prompt
    assert gr.stats == {"guided_groups": 1, "guided_rollouts": 2, "guided_correct": 2, "unguided_rollouts": 4,
                        "unguided_correct": 0, "buffer_draws": 0}
    assert list(gr.buffer.items) == [0]
    _, parts = _guide("join")
    (joined, js), (rest, _) = parts
    assert joined.group_size == 6 and joined.completion_ids[:, 0].tolist() == [10, 11, 12, 13, 50, 51]
    assert rest.group_size == 4 and rest.completion_ids[:, 0].tolist() == [14, 15, 16, 17]


# ---------------------------------------------------------------- learning: a stuck class

@pytest.fixture(scope="module")
def stuck_model(tmp_path_factory):
    """A tiny model that follows hints (trained on hinted prompts with every grade) but answers black -> L4
    without one (gold L1): every rollout for black is wrong, so plain GRPO gets no signal for it."""
    d = tmp_path_factory.mktemp("stuck_sft")
    ex = [{"prompt": p["prompt"], "completion": f"<L{STUCK[p['colour']]}>", "grade": STUCK[p["colour"]]}
          for p in colour_prompts()] * 4
    ex += [{"prompt": hinted_prompt(p["prompt"], hint_text({"grade": g})), "completion": f"<L{g}>", "grade": g}
           for p in colour_prompts() for g in (1, 2, 3, 4)]
    res = train_sft(sft_config_for_tests({
        "model": "tiny-qwen2", "prompt": PC, "batch_size": 16,
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "max_steps": 120, "schedule": "constant_with_warmup"},
        "run": {"output_dir": str(d), "device": "cpu", "progress": False}}), ex)
    save_scorer_config(res.final_dir, ScorerConfig(prompt=PC))
    return res.final_dir


def p_black_l1(model, tok) -> float:
    prompts = [render_prompt(tok, p["prompt"]) for p in colour_prompts() if p["colour"] == "black"]
    return float(np.mean(grade_probs(model, tok, prompts)[:, 0]))


def test_stuck_class_recovers_with_guided_replay_and_not_without(stuck_model, tmp_path, one_thread):
    p = colour_prompts()
    from searchrl.relevance.model.load import load_relevance_model
    m0, tok = load_relevance_model(str(stuck_model))
    start = p_black_l1(m0, tok)
    assert start < 0.02  # stuck: L1 almost never sampled for black

    def run(name, **replay):
        cfg = config_from_dict(GRPOConfig, {
            "model": str(stuck_model), "replay": GuidedReplayConfig(**replay),
            "rollout": {"group_size": 8, "prompts_per_step": 8, "max_new_tokens": 1, "oversample": 1.0},
            "optim": {"lr": 3e-3, "max_steps": 12},
            "run": {"output_dir": str(tmp_path / name), "device": "cpu", "progress": False, "seed": 0}})
        res = train_grpo(cfg, p, reward_fn=GradeReward(format_weight=0))
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return p_black_l1(res.model, tok), rows

    plain, _ = run("plain", enabled=False)
    guided, rows = run("guided", enabled=True)
    print(f"P(L1 | black): start {start:.4f}, plain GRPO {plain:.4f}, guided replay {guided:.4f}")
    assert plain < 0.05  # no rollout for black is ever right: no signal, no recovery
    assert guided > 0.5  # the guided rollouts pull the un-hinted policy to the right answer
    assert sum(r["guided_groups"] for r in rows) > 0 and rows[0]["guided_accuracy"] > 0.8  # the hint is followed
    # against the same groups' own unhinted rollouts (below the threshold by selection: here none is right)
    assert rows[0]["guided_groups_accuracy"] < 0.25 < rows[0]["guided_accuracy"]
    assert all(k in rows[-1] for k in ("buffer_size", "buffer_draws", "buffer_left"))


def test_resume_with_guided_replay_and_join_reproduces_the_uninterrupted_run(stuck_model, tmp_path, one_thread):
    """The hard-prompt buffer rides along in checkpoints; join mode (mixed group sizes) trains end to end."""
    p = colour_prompts()
    def cfg(out, **run):
        return config_from_dict(GRPOConfig, {
            "model": str(stuck_model), "replay": GuidedReplayConfig(enabled=True, mode="join", revisit_prob=0.5),
            "rollout": {"group_size": 4, "prompts_per_step": 4, "max_new_tokens": 1},
            "optim": {"lr": 3e-3, "max_steps": 4},
            "run": {"output_dir": str(out), "device": "cpu", "progress": False, "seed": 0, **run}})

    full = train_grpo(cfg(tmp_path / "full"), p, reward_fn=GradeReward(format_weight=0))
    part = train_grpo(cfg(tmp_path / "part", stop_at_step=2), p, reward_fn=GradeReward(format_weight=0))
    assert part.final_dir is None
    resumed = train_grpo(cfg(tmp_path / "part", resume=True), p, reward_fn=GradeReward(format_weight=0))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["guided_groups"] for r in rows) > 0 and sum(r["buffer_draws"] for r in rows) > 0
    again = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "reward_mean", "accuracy", "guided_groups", "guided_accuracy", "buffer_size", "buffer_draws")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in again]
