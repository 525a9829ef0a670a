"""GRPO on the relevance model: the reward, class-balanced draws, learning a controlled task (with and without
dynamic sampling), the reference model only when beta > 0 (under LoRA: the adapters-off policy, no second copy),
exact resume, and torchrun with two processes."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import LORA, assert_only_adapters_moved, sft_config_for_tests

from searchrl.config import config_from_dict
from searchrl.relevance.format.prompt import PromptConfig, build_prompt
from searchrl.relevance.model import load as model_mod
from searchrl.relevance.model.scorer_config import ScorerConfig, load_scorer_config, save_scorer_config
from searchrl.relevance.train.grpo import GRPOConfig, train_grpo
from searchrl.relevance.train.rewards import GradeReward
from searchrl.relevance.train.rollouts import PromptSampler, RolloutConfig
from searchrl.relevance.train.sft import train_sft

# the controlled task: the right grade is a function of the colour word in the title, nothing else
COLOURS = {"red": 4, "blue": 3, "green": 2, "black": 1}
PC = PromptConfig(instruction="Grade it.")


def colour_prompts() -> list[dict]:
    return [{"prompt": build_prompt(item, {"title": f"{size} {c} {item}"}, PC), "grade": g, "query": item}
            for c, g in COLOURS.items() for item in ("shirt", "cap", "sock") for size in ("small", "large")]


SFT_STEPS = 40  # enough for ~95% of first tokens to be grade tokens, roughly uniform over the four


@pytest.fixture(scope="module")
def format_model(tmp_path_factory):
    """A tiny model SFT-ed to answer one grade token then EOS, with every grade equally likely for every prompt
    (each prompt is trained on all four grades): it knows the format, not the task."""
    d = tmp_path_factory.mktemp("grpo_sft")
    ex = [{"prompt": p["prompt"], "completion": f"<L{g}>", "grade": g} for p in colour_prompts() for g in (1, 2, 3, 4)]
    res = train_sft(sft_config_for_tests({
        "model": "tiny-qwen2", "prompt": PC, "batch_size": 16,
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0, "max_steps": SFT_STEPS, "schedule": "constant_with_warmup"},
        "run": {"output_dir": str(d), "device": "cpu", "progress": False}}), ex)
    save_scorer_config(res.final_dir, ScorerConfig(prompt=PC))
    return res.final_dir



ROLLOUT_KEYS = {f.name for f in dataclasses.fields(RolloutConfig)}


def grpo_cfg(model, out, **kw) -> GRPOConfig:
    """A GRPOConfig for the tests: rollout keys go to the rollout section, lr / max_steps / schedule to optim,
    save_every / stop_at_step / resume to run, reward to reward.kind, rule_reward to reward.rule_aware."""
    rollout = {"group_size": 8, "prompts_per_step": 8, "max_new_tokens": 1, "oversample": 1.0,
               **{k: kw.pop(k) for k in list(kw) if k in ROLLOUT_KEYS}}
    optim = {"lr": 3e-3, "max_steps": 4, **{k: kw.pop(k) for k in ("lr", "max_steps", "schedule") if k in kw}}
    run = {"output_dir": str(out), "device": "cpu", "progress": False, "seed": 0,
           **{k: kw.pop(k) for k in ("save_every", "stop_at_step", "resume") if k in kw}}
    reward = {"kind": kw.pop("reward", "grade"), **({"rule_aware": kw.pop("rule_reward")} if "rule_reward" in kw else {})}
    return config_from_dict(GRPOConfig, {"model": str(model), "rollout": rollout, "optim": optim, "run": run,
                                         "reward": reward, **kw})


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- pieces

def test_grade_reward_correctness_and_format_bonus():
    good = "<L3>\nquery: q => intent: cable\nitem: i => type: cable\ncategory: c => category: match\n" \
           "attribute: a => attribute: partial\nverdict: v => grade: L3"
    out = GradeReward(correct=1.0, wrong=-0.5, format_weight=0.2)([good, "<L3>", "<L2>", "no grade"],
                                                                   [{"grade": 3}] * 4)
    assert out.components["grade"] == [1.0, 1.0, -0.5, -0.5]
    assert out.components["format"] == [0.2, 0.0, 0.0, 0.0]  # only the full five-step completion is well formed
    assert out.rewards == pytest.approx([1.2, 1.0, -0.5, -0.5])
    with pytest.raises(ValueError):
        GradeReward()(["<L1>"], [])


def test_class_balanced_sampler_draws_equal_grades_and_restores_its_state():
    grades = [1] * 10 + [2] * 3 + [3] * 2 + [4] * 1  # very unbalanced pool
    s = PromptSampler(grades, class_balance=True, seed=[0, 0])
    first = s.draw(12)
    assert Counter(grades[i] for i in first) == {1: 3, 2: 3, 3: 3, 4: 3}
    state = s.state_dict()
    a = s.draw(9)
    s2 = PromptSampler(grades, class_balance=True, seed=[5, 5])
    s2.load_state_dict(state)
    assert s2.draw(9) == a
    plain = PromptSampler(grades, class_balance=False, seed=0)
    assert sorted(plain.draw(16)) == list(range(16))  # one shuffled pass covers every prompt once


# ---------------------------------------------------------------- learning


# ---------------------------------------------------------------- reference model, logs, resume

def test_beta_zero_loads_no_reference_and_beta_positive_logs_kl(format_model, tmp_path, monkeypatch):
    loads = []
    real = model_mod.load_relevance_model
    monkeypatch.setattr(model_mod, "load_relevance_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    monkeypatch.setattr("searchrl.relevance.train.grpo.load_relevance_model", model_mod.load_relevance_model)
    p = colour_prompts()
    r0 = train_grpo(grpo_cfg(format_model, tmp_path / "b0", max_steps=2, beta=0.0), p,
                    reward_fn=GradeReward(format_weight=0))
    assert r0.reference is None and len(loads) == 1  # the policy only
    row = rows(tmp_path / "b0")[-1]
    assert "kl" not in row
    for k in ("reward_mean", "reward_std", "reward_grade", "accuracy", "groups_filtered_frac", "rollouts",
              "clip_region", "entropy", "tokens_per_s", "completion_len"):
        assert k in row, k
    assert row["entropy"] > 0.5 and row["completion_len"] == 1.0  # one grade token, still far from certain
    loads.clear()
    r1 = train_grpo(grpo_cfg(format_model, tmp_path / "b1", max_steps=2, beta=0.1, num_iterations=2), p,
                    reward_fn=GradeReward(format_weight=0))
    assert r1.reference is not None and len(loads) == 2
    assert not any(q.requires_grad for q in r1.reference.parameters())
    kls = [r["kl"] for r in rows(tmp_path / "b1")]
    assert all(k >= 0 for k in kls) and kls[-1] > 0  # the policy has moved away from the reference by step 2
    # final/ carries the SFT model's scorer config (its prompt settings), loadable as a relevance model
    assert load_scorer_config(r1.final_dir).prompt.instruction == "Grade it."


def test_resume_reproduces_uninterrupted_run(format_model, tmp_path):
    p = colour_prompts()
    kw = dict(max_steps=5, num_iterations=2, dynamic_sampling=True, max_refill_rounds=2, schedule="cosine")
    full = train_grpo(grpo_cfg(format_model, tmp_path / "full", **kw), p, reward_fn=GradeReward(format_weight=0))
    part = train_grpo(grpo_cfg(format_model, tmp_path / "part", stop_at_step=2, **kw), p,
                      reward_fn=GradeReward(format_weight=0))
    assert part.step == 2 and part.final_dir is None
    torch.manual_seed(123)  # disturb the global RNG: resume must not depend on it
    resumed = train_grpo(grpo_cfg(format_model, tmp_path / "part", resume=True, **kw), p,
                         reward_fn=GradeReward(format_weight=0))
    assert resumed.step == 5 and resumed.rollouts == full.rollouts
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    ra, rb = rows(tmp_path / "full"), rows(tmp_path / "part")
    assert [r["step"] for r in rb] == [1, 2, 3, 4, 5]
    assert [r["reward_mean"] for r in ra] == [r["reward_mean"] for r in rb]


def test_lora_grpo_uses_the_adapters_off_reference_trains_adapters_only_and_resumes(format_model, tmp_path,
                                                                                     monkeypatch):
    from searchrl.relevance.model.lora import frozen_reference
    from searchrl.relevance.model.tokenizer import encode_prompt, grade_token_ids
    loads = []
    real = model_mod.load_relevance_model
    monkeypatch.setattr(model_mod, "load_relevance_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    monkeypatch.setattr("searchrl.relevance.train.grpo.load_relevance_model", model_mod.load_relevance_model)
    p, reward = colour_prompts(), GradeReward(format_weight=0)
    kw = dict(max_steps=3, beta=0.1, lora=LORA, lr=1e-2, dynamic_sampling=False)
    full = train_grpo(grpo_cfg(format_model, tmp_path / "full", **kw), p, reward_fn=reward)
    assert full.reference is None and len(loads) == 1  # beta > 0, yet only the policy was loaded
    kls = [r["kl"] for r in rows(tmp_path / "full")]
    # step 1 is on-policy from zero adapters: policy == reference exactly; then the policy moves away
    assert kls[0] == pytest.approx(0.0, abs=1e-7) and kls[-1] > 0, kls
    merged, tok = real(str(full.final_dir))  # final/: merged, a plain relevance model
    assert not any("lora" in k or "base_layer" in k for k in merged.state_dict())
    start, _ = real(str(format_model))
    x = torch.tensor([encode_prompt(tok, p[0]["prompt"]) + [grade_token_ids(tok)[0]]])
    with torch.no_grad():
        out = merged.eval()(x).logits
        torch.testing.assert_close(out, full.model.eval()(x).logits, atol=1e-5, rtol=1e-5)
        assert (out - start.eval()(x).logits).abs().max() > 1e-3
    part = train_grpo(grpo_cfg(format_model, tmp_path / "part", stop_at_step=2, **kw), p, reward_fn=reward)
    assert part.final_dir is None
    assert_only_adapters_moved(part.model, start, grade_token_ids(tok))
    with torch.no_grad(), frozen_reference(part.model, None) as ref:
        torch.testing.assert_close(ref(x).logits, start(x).logits, atol=1e-5, rtol=1e-5)
    resumed = train_grpo(grpo_cfg(format_model, tmp_path / "part", resume=True, **kw), p, reward_fn=reward)
    assert resumed.step == 3 and resumed.rollouts == full.rollouts
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert [r["kl"] for r in rows(tmp_path / "part")] == pytest.approx(kls, abs=1e-6)


# ---------------------------------------------------------------- CLI under torchrun

def test_torchrun_two_processes_cli(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    sets = ["model=tiny-qwen2", "run.device=cpu", "run.progress=false", f"data_dir={tiny_data}",
            f"run.output_dir={out}", "prompt.instruction=Grade it.", "rollout.max_new_tokens=3",
            "rollout.group_size=2", "rollout.prompts_per_step=4", "optim.max_steps=2",
            "rollout.dynamic_sampling=false", "run.save_every=1", "eval.max_examples=4", "optim.lr=1e-3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "searchrl.cli", "train", "grpo"] + [x for kv in sets for x in ("--set", kv)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = out / "final"
    assert (final / "model.safetensors").exists() and (final / "relevance_config.json").exists()
    assert load_scorer_config(final).prompt.instruction == "Grade it."
    log = rows(out)
    assert [r["step"] for r in log] == [1, 2]
    assert [r["rollouts"] for r in log] == [8, 8]  # 4 prompts x G=2, two per rank
    assert "valid_macro_f1" in log[-1]
    # both ranks' sampling states are in the checkpoint, so a resumed run can continue each stream
    state = torch.load(out / "checkpoint-2" / "trainer_state.pt", weights_only=False)
    assert len(state["ranks"]) == 2 and all("sampler" in r and "generator" in r for r in state["ranks"])
    assert state["ranks"][0]["sampler"] != state["ranks"][1]["sampler"]


# ---------------------------------------------------------------- learning

def rollouts_to(log: list[dict], threshold: float, window: int = 5) -> float:
    """Rollouts sampled (filtered groups included) when the mean reward over the last `window` steps first
    reaches `threshold`; inf if it never does."""
    rw = [r["reward_mean"] for r in log]
    for i in range(len(rw)):
        if i + 1 >= window and sum(rw[i + 1 - window:i + 1]) / window >= threshold:
            return log[i]["rollouts_total"]
    return float("inf")


@pytest.mark.slow
def test_grpo_learns_the_colour_task_and_dynamic_sampling_gets_there_in_fewer_rollouts(format_model, tmp_path,
                                                                                     one_thread):
    """Label-only completions (max_new_tokens=1, reward = grade correct), class-balanced prompts, seed 0.

    With dynamic sampling (oversample 1: refill only what was filtered) the mean reward climbs from chance (1/4)
    well above it within 80 steps; plain GRPO gets the same rollout budget (more steps, since it samples fewer per
    step) and reaches the threshold later or not at all.
    """
    # sampled freely, as designed: a non-grade first token is a possible sample (reward 0). Under the completion
    # grammar every sample is a grade token and the two reach 0.6 within 5% of each other's rollouts (seed 0)
    free = tmp_path / "free_model"
    shutil.copytree(format_model, free)
    save_scorer_config(free, ScorerConfig(prompt=dataclasses.replace(PC, constrained=False)))
    format_model = free
    p, reward = colour_prompts(), GradeReward(format_weight=0)
    ds = train_grpo(grpo_cfg(format_model, tmp_path / "ds", max_steps=80, dynamic_sampling=True,
                             max_refill_rounds=3), p, reward_fn=reward)
    log_ds = rows(tmp_path / "ds")
    first, last = (sum(r["reward_mean"] for r in log_ds[s]) / 10 for s in (slice(0, 10), slice(-10, None)))
    assert first < 0.35 and last > first + 0.25, (first, last)
    assert log_ds[-1]["groups_filtered_frac"] > 0  # easy groups are being dropped by the end
    budget = ds.rollouts  # plain GRPO gets at least as many rollouts
    plain_steps = -(-budget // (8 * 8))
    train_grpo(grpo_cfg(format_model, tmp_path / "plain", max_steps=plain_steps,
                        dynamic_sampling=False), p, reward_fn=reward)
    log_plain = rows(tmp_path / "plain")
    assert log_plain[-1]["rollouts_total"] >= budget and all(r["groups_filtered_frac"] == 0 for r in log_plain)
    with_ds, without = rollouts_to(log_ds, 0.6), rollouts_to(log_plain, 0.6)
    print(f"reward first/last 10 steps {first:.3f}/{last:.3f}; rollouts to 0.6: ds {with_ds}, plain {without}")
    assert with_ds < without


def test_dynamic_sampling_looks_at_grade_correctness_not_the_format_bonus():
    from searchrl.relevance.format.prompt import build_completion
    from searchrl.relevance.train.rollouts import ds_signal
    from searchrl.rl.grpo_loss import dynamic_sampling_mask
    good = build_completion(3, {"query": "laptop", "item": "laptop", "category": "match", "attribute": "partial"})
    # one group of 4, all right, two of them well formed: the total reward varies, correctness does not
    scored = GradeReward(format_weight=0.1)([good, good, "<L3>", "<L3>"], [{"grade": 3}] * 4)
    rewards = torch.tensor(scored.rewards)
    assert rewards.tolist() == pytest.approx([1.1, 1.1, 1.0, 1.0])
    assert dynamic_sampling_mask(ds_signal(scored, rewards, "reward"), 4).tolist() == [True]  # kept on the bonus
    assert dynamic_sampling_mask(ds_signal(scored, rewards, "grade"), 4).tolist() == [False]  # all right: dropped
    with pytest.raises(ValueError, match="ds_signal"):
        RolloutConfig(ds_signal="vibes")


# ---------------------------------------------------------------- rule-aware reward and non-finite loss

def test_reward_rule_aware_is_picked_from_the_config_and_its_components_logged(tmp_path):
    from searchrl.relevance.format.prompt import build_completion
    from searchrl.relevance.train.rewards import RuleRewardConfig
    ref = build_completion(3, {"query": "shirt", "item": "shirt", "category": "match", "attribute": "partial"})
    p = [{**x, "completion": ref} for x in colour_prompts()]
    with pytest.raises(ValueError):
        config_from_dict(GRPOConfig, {"reward": {"kind": "rules"}})
    assert GRPOConfig().reward.kind == "grade"  # default unchanged: GradeReward
    train_grpo(grpo_cfg("tiny-qwen2", tmp_path, max_steps=1, reward="rule_aware", dynamic_sampling=False,
                        rule_reward=RuleRewardConfig(combine="normalize_then_sum")), p)
    row = rows(tmp_path)[-1]
    for k in ("reward_format", "reward_steps", "reward_adherence", "reward_grade", "reward_violation"):
        assert k in row, k


def test_non_finite_loss_stops_the_step_before_the_weights_change(tmp_path, monkeypatch):
    """Step 1 is fine and checkpointed; step 2's rewards are NaN: the error names the step and the culprit, and
    the policy's weights are still those of checkpoint-1."""
    models = []
    real = model_mod.load_relevance_model
    monkeypatch.setattr(model_mod, "load_relevance_model", lambda *a, **k: models.append(real(*a, **k)) or models[-1])
    calls = []

    def reward(texts, infos):
        calls.append(1)
        out = GradeReward(format_weight=0)(texts, infos)
        if len(calls) > 1:
            out.rewards = [float("nan")] * len(texts)
        return out

    cfg = grpo_cfg("tiny-qwen2", tmp_path, max_steps=3, save_every=1, dynamic_sampling=False)
    with pytest.raises(FloatingPointError, match=r"step 2.*advantages"):
        train_grpo(cfg, colour_prompts(), reward_fn=reward)
    assert (tmp_path / "checkpoint-1").is_dir() and not (tmp_path / "checkpoint-2").exists()
    live = models[0][0].state_dict()
    saved, _ = real(str(tmp_path / "checkpoint-1"), torch.float32)
    for k, v in saved.state_dict().items():
        assert torch.isfinite(v).all(), k
        assert torch.equal(v, live[k]), k  # the failed step applied nothing
