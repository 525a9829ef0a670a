"""Stage 3: GRPO on the relevance model, with difficulty-based dynamic sampling (TaoSR1 / DAPO) (``searchrl train grpo``).

One step reads rollout -> advantages -> update -> log:

1. rollout (grpo_rollouts.collect_groups): draw prompts (class balanced if configured),
   sample G completions each with the prompt's KV cache computed once, score them with
   the reward (rewards.py: GradeReward, or TaoSR-AGRL's RuleAwareReward with
   ``reward.kind: rule_aware``, or any reward function passed in), and with dynamic
   sampling drop groups whose rewards are all equal and draw more prompts up to a cap.
   TaoSR-AGRL's adaptive guided replay (guided_replay.py, ``replay.enabled``) adds hinted
   rollouts to low-accuracy groups before that filter sees them;
2. advantages (:func:`piece_advantages`): group-normalised rewards per kept piece (pieces
   may differ in group size under guided replay's ``join`` mode);
3. update (:func:`grpo_step`): ``num_iterations`` optimizer updates on the batch (PPO
   epochs) with the clipped surrogate (+ beta * k3 KL to the frozen reference) from
   searchrl.rl.grpo_loss. With num_iterations = 1 the update is on-policy (old log-probs =
   the current ones, detached); otherwise old log-probs come from one no-grad forward
   before the first update. Guided rows trained under the un-hinted prompt get a clipped
   importance ratio against their hinted behaviour (guided_old_logps). A non-finite loss
   or gradient norm raises FloatingPointError (step, update, micro-batch, culprit) before
   optimizer.step(), so weights and checkpoints are never corrupted;
4. log (:func:`grpo_metrics`): global means over all ranks -- reward mean/std and
   components and accuracy over every sampled completion (filtered groups included: that
   is the policy's performance), fraction of groups filtered / with zero reward spread,
   rollouts this step and in total, KL, clip fractions, entropy, completion length,
   tokens/s, guided-replay counts; eval metrics every eval.every steps.

The reference is the starting model: a frozen copy, or with LoRA the policy with its
adapters disabled (no second copy); beta = 0 uses no reference at all. The run loop
(training.RunLoop) owns checkpoints and exact resume (plus each rank's prompt sampler,
sampling generator and hard-prompt buffer), logging and torchrun: each rank samples its
share (prompts_per_step / world) of the groups from its own streams; gradients are
averaged by DDP and the loss normalised by global counts (dapo: active tokens of all
ranks; grpo: sequences of all ranks), so the update is that of one big batch.

Simplifies: one optimizer step per pass over the batch (no mini-batches inside a pass;
``micro_batch_size`` only splits the forward for memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from searchrl.config import EvalConfig, OptimConfig, RunConfig, check_choices
from searchrl.errors import ConfigError
from searchrl.relevance.format.prompt import PromptConfig
from searchrl.relevance.model.builds import TinyModel
from searchrl.relevance.model.load import DTYPES, load_relevance_model, load_trainable
from searchrl.relevance.model.lora import LoraSettings, frozen_reference
from searchrl.relevance.model.scorer_config import save_relevance_model, scorer_config_or_default
from searchrl.relevance.model.tokenizer import encode_prompt, render_prompt
from searchrl.relevance.rules.engine import link_examples
from searchrl.relevance.rules.kb import completion_grammar
from searchrl.relevance.scoring.evaluate import evaluate_examples
from searchrl.relevance.train.examples import split_examples, subset
from searchrl.relevance.train.guided_replay import GuidedReplay, GuidedReplayConfig, guided_old_logps
from searchrl.relevance.train.rewards import RewardConfig, build_reward
from searchrl.relevance.train.rollouts import (
    Groups,
    PromptSampler,
    RolloutConfig,
    collect_groups,
    completion_logps,
    split_rows,
)
from searchrl.relevance.train.saving import PolicySaver
from searchrl.rl.grpo_loss import AGGREGATIONS, SCALES, aggregate, clipped_surrogate, group_advantages
from searchrl.training import RunLoop, build_optimizer, optimizer_step


@dataclass
class GRPOConfig:
    # --- model
    model: str = "runs/sft/final"  # the SFT model directory (runs/sft/final), a GGUF file or packaged GGUF name, or
    #   an offline build name, as in SFTConfig
    tiny: TinyModel = field(default_factory=TinyModel)  # sizes when model is "tiny-qwen2"
    lora: LoraSettings | None = None  # None = full fine-tuning; with LoRA the reference is the base, adapters off
    dtype: str = "float32"  # float32 | bfloat16 | float16: weights' dtype
    # --- data
    data_dir: str = ""  # prepared dataset; prompts come from its train split (train_grpo may get prompts instead)
    prompt: PromptConfig = field(default_factory=PromptConfig)  # prompt settings; ignored (replaced by the
    #   model's) when model is a directory with relevance_config.json, so prompts match SFT's
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template; also taken from the model dir
    rules: str = ""  # rule knowledge base YAML for the reference completions; "" = the packaged rules.yaml
    max_train_prompts: int = 0  # train on a seeded random subset of this many prompts; 0 = all
    # --- rollouts, reward, guided replay
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # G, prompts per step, sampling, dynamic sampling
    reward: RewardConfig = field(default_factory=RewardConfig)  # reward.kind: grade | rule_aware, and their settings
    replay: GuidedReplayConfig = field(default_factory=GuidedReplayConfig)  # TaoSR-AGRL adaptive guided replay
    #   and hard-prompt buffer (guided_replay.py); off unless replay.enabled
    # --- loss
    num_iterations: int = 1  # optimizer updates per rollout batch (PPO epochs); 1 = on-policy
    eps_low: float = 0.2  # ratio clipped at 1 - eps_low
    eps_high: float = 0.2  # ratio clipped at 1 + eps_high (DAPO's clip-higher: 0.28)
    beta: float = 0.0  # KL coefficient to the frozen reference (k3); 0 = no reference model is used
    adv_scale: str = "group"  # advantage divisor: group | batch | none (see grpo_loss.group_advantages)
    adv_eps: float = 1e-4  # added to the std before dividing
    adv_clamp: float = 0.0  # clip advantages to +-this; 0 = no clip (a sister paper used 2)
    loss_type: str = "dapo"  # dapo: mean over all active tokens | grpo: mean over sequences of per-sequence means
    micro_batch_size: int = 0  # sequences per forward/backward (memory); 0 = all of a rank's at once
    # --- sections
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6, schedule="constant_with_warmup",
                                                                   max_steps=100))
    #   max_steps counts rollout steps; the schedule runs over max_steps * num_iterations updates
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_examples=256))  # in-training eval
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/grpo"))  # output, cadence, resume

    def __post_init__(self):
        check_choices(self, dtype=DTYPES, adv_scale=SCALES, loss_type=AGGREGATIONS)
        if self.num_iterations < 1 or self.beta < 0:
            raise ConfigError("num_iterations must be >= 1 and beta >= 0")
        if self.optim.max_steps < 1:
            raise ConfigError("optim.max_steps must be >= 1: GRPO runs a number of rollout steps, not epochs")


@dataclass
class GRPOResult:
    model: object  # the trained policy (LoRA merged into it once training has finished; a peft model if stopped)
    tokenizer: object
    step: int  # rollout steps done
    final_dir: Path | None  # output_dir/final, or None when stopped early by stop_at_step
    last_eval: dict  # the last eval metrics ({} when there was no eval)
    reference: object | None  # the frozen reference copy (None when beta == 0, or under LoRA)
    rollouts: int  # completions sampled in all (all ranks, filtered groups included)


# ---------------------------------------------------------------- advantages and the update

def piece_advantages(batch: Groups, cfg: GRPOConfig) -> list[torch.Tensor]:
    """Group advantages per kept piece ([n_i * G_i] each); pieces may differ in group size (guided replay, join)."""
    sizes = {p.group_size for p in batch.pieces}
    flat = torch.cat(batch.rewards)
    if len(sizes) == 1:
        adv = group_advantages(flat, sizes.pop(), cfg.adv_scale, cfg.adv_eps, cfg.adv_clamp or None)
    else:  # centre per group; "batch" divides by the std of every reward of the step, as in the one-size case
        scale = "none" if cfg.adv_scale == "batch" else cfg.adv_scale
        adv = torch.cat([group_advantages(r, p.group_size, scale, cfg.adv_eps) for p, r in zip(batch.pieces,
                                                                                               batch.rewards)])
        if cfg.adv_scale == "batch":
            adv = adv / (flat.std() + cfg.adv_eps)
        if cfg.adv_clamp:
            adv = adv.clamp(-cfg.adv_clamp, cfg.adv_clamp)
    return list(adv.split([len(r) for r in batch.rewards]))


def _nonfinite_message(step: int, it: int, j: int, n_pieces: int, loss, adv, logp) -> str:
    """Which piece of the loss went non-finite first: the advantages (i.e. rewards), the log-probs or the loss."""
    if not torch.isfinite(adv).all():
        culprit = "advantages (the reward function returned a non-finite reward)"
    elif not torch.isfinite(logp).all():
        culprit = "policy log-probs (the model's forward)"
    else:
        culprit = "the surrogate / KL terms"
    return (f"grpo: non-finite loss ({float(loss.detach())}) at step {step}, update {it + 1}, micro-batch {j + 1}/{n_pieces}: "
            f"from the {culprit}; stopped before optimizer.step(), weights unchanged")


def grpo_step(loop: RunLoop, fwd, model, reference, batch: Groups, adv: list[torch.Tensor], cfg: GRPOConfig,
              optimizer, scheduler, step: int) -> dict:
    """``num_iterations`` clipped-surrogate updates on one rollout batch; this rank's summed loss statistics
    (token-weighted), the global active-token count ``n_tok`` and the lr."""
    pieces = [(chunk, a) for piece, pa in zip(batch.pieces, adv)  # micro-batches: [n, T] rows and their [n] advantages
              for chunk, a in zip(split_rows(piece, cfg.micro_batch_size), pa.split(cfg.micro_batch_size or len(pa)))]
    device, temp = loop.device, cfg.rollout.temperature
    n_tok = loop.sum(sum(float(c.completion_mask.sum()) for c, _ in pieces))
    n_seq = loop.sum(sum(len(a) for _, a in pieces))
    with torch.no_grad():
        old = [completion_logps(model, c, device, temp)[0] if cfg.num_iterations > 1 else None for c, _ in pieces]
    ref = [None] * len(pieces)
    if cfg.beta > 0:
        with frozen_reference(model, reference) as ref_model:
            ref = [completion_logps(ref_model, c, device, temp)[0] for c, _ in pieces]
    sums = {"loss": 0.0, "clip_low": 0.0, "clip_high": 0.0, "clip_region": 0.0, "kl": 0.0, "entropy": 0.0}
    lr = scheduler.get_last_lr()[0]  # the lr of the step's first update
    for it in range(cfg.num_iterations):
        for j, (c, a) in enumerate(pieces):
            mask = c.completion_mask.to(device)  # [n, T]
            sync = loop.world == 1 or j == len(pieces) - 1
            with (contextlib.nullcontext() if sync else fwd.no_sync()):
                logp, ent = completion_logps(fwd, c, device, temp, entropy=it == 0)  # [n, T]
                # guided rows trained under the un-hinted prompt: clipped ratio against the hinted behaviour
                old_j = guided_old_logps(logp, old[j], c, cfg.replay.ratio_min, 1 + cfg.eps_high)
                per_tok, stats = clipped_surrogate(logp, old_j, a.to(device), mask, cfg.eps_low, cfg.eps_high,
                                                   ref_logp=ref[j], beta=cfg.beta)  # [n, T]
                if cfg.loss_type == "dapo":  # DDP averages over ranks: divide by global tokens / world
                    loss = aggregate(per_tok, mask, "dapo", num_items=n_tok / loop.world)
                else:  # each piece's sequence mean, re-weighted to a mean over all ranks' sequences
                    loss = aggregate(per_tok, mask, "grpo") * (len(a) * loop.world / n_seq)
                if not torch.isfinite(loss):  # stop before the NaN reaches the weights (and checkpoints)
                    raise FloatingPointError(_nonfinite_message(step + 1, it, j, len(pieces), loss, a, logp))
                loss.backward()
            w = float(mask.sum()) / cfg.num_iterations  # stats: token-weighted means over all passes
            sums["loss"] += float(loss.detach()) / (loop.world * cfg.num_iterations)  # summed over ranks: / world
            for k in ("clip_low", "clip_high", "clip_region", "kl"):
                if k in stats:
                    sums[k] += float(stats[k]) * w
            if ent is not None:
                sums["entropy"] += float((ent * mask).sum())
        optimizer_step(optimizer, scheduler, cfg.optim.max_grad_norm, f"grpo step {step + 1}, update {it + 1}")
    return {**sums, "n_tok": n_tok, "lr": lr}


def grpo_metrics(loop: RunLoop, batch: Groups, sums: dict, replay: GuidedReplay | None, buffer_left: int,
                 with_kl: bool, seconds: float) -> dict:
    """One step's log line: global means over every rank's sampled completions (see the module docstring)."""
    r = batch.drawn_rewards.double()
    local = {"n": len(r), "r": float(r.sum()), "r2": float((r ** 2).sum()), "correct": batch.n_correct,
             "groups": batch.n_drawn_groups, "zero_std": batch.n_zero_std, "filtered": batch.n_filtered,
             "ctok": batch.completion_tokens, **{f"c_{k}": v for k, v in batch.components.items()},
             **{k: v for k, v in sums.items() if k not in ("n_tok", "lr")}}
    if replay is not None:
        local |= {f"g_{k}": v for k, v in replay.stats.items()} | {"g_left": buffer_left,
                                                                  "g_buffer": len(replay.buffer.items)}
    tot = {k: loop.sum(v) for k, v in local.items()}
    mean, n_tok = tot["r"] / tot["n"], max(sums["n_tok"], 1)
    row = {"reward_mean": mean, "reward_std": max(tot["r2"] / tot["n"] - mean ** 2, 0) ** 0.5,
           **{f"reward_{k}": tot[f"c_{k}"] / tot["n"] for k in batch.components},
           "accuracy": tot["correct"] / tot["n"], "groups_filtered_frac": tot["filtered"] / tot["groups"],
           "zero_std_frac": tot["zero_std"] / tot["groups"], "rollouts": int(tot["n"]), "loss": tot["loss"],
           **{k: tot[k] / n_tok for k in ("clip_low", "clip_high", "clip_region")},
           "entropy": tot["entropy"] / n_tok, "completion_len": tot["ctok"] / tot["n"],
           "tokens_per_s": tot["ctok"] / max(seconds, 1e-9), "step_seconds": seconds, "lr": sums["lr"]}
    if with_kl:
        row["kl"] = tot["kl"] / n_tok
    if replay is not None:  # accuracy above is every unguided rollout's; guided_accuracy is under the hint, on the
        # guided groups alone, and guided_groups_accuracy is those groups' own unguided rollouts' (its baseline)
        row.update(guided_groups=int(tot["g_guided_groups"]), guided_rollouts=int(tot["g_guided_rollouts"]),
                   guided_accuracy=tot["g_guided_correct"] / max(tot["g_guided_rollouts"], 1),
                   guided_groups_accuracy=tot["g_unguided_correct"] / max(tot["g_unguided_rollouts"], 1),
                   buffer_size=int(tot["g_buffer"]), buffer_draws=int(tot["g_buffer_draws"]),
                   buffer_left=int(tot["g_left"]))
    return row


# ---------------------------------------------------------------- training

def _prompts(cfg: GRPOConfig, prompts: list[dict] | None, eval_examples: list[dict] | None):
    """(train prompts, eval examples), seeded subsets; by default data_dir's train split and cfg.eval.split."""
    if prompts is None:
        if not cfg.data_dir:
            raise ConfigError("data_dir is not set (--set data_dir=DIR, a directory made by `searchrl data prepare`)")
        from searchrl.data.schema import load_dataset
        ds = load_dataset(cfg.data_dir)
        prompts = split_examples(ds, "train", cfg.prompt, cfg.rules)
        if eval_examples is None:
            eval_examples = split_examples(ds, cfg.eval.split, cfg.prompt, cfg.rules)
    prompts = subset(prompts, cfg.max_train_prompts, cfg.run.seed)
    if not prompts:
        raise ConfigError("no training prompts")
    return prompts, subset(eval_examples or [], cfg.eval.max_examples, cfg.run.seed)


def _policy_and_reference(cfg: GRPOConfig, loop: RunLoop):
    """(policy, tokenizer, reference): the reference is the starting model, frozen, when the KL term needs one and
    the policy is not LoRA (under LoRA the adapters-off policy is the reference); else None."""
    dtype = DTYPES[cfg.dtype]
    model, tok = load_trainable(cfg.model, dtype, cfg.lora, loop.checkpoint, seed=cfg.run.seed, tiny=cfg.tiny)
    model.to(loop.device).train()
    reference = None
    if cfg.beta > 0 and cfg.lora is None:
        reference, _ = load_relevance_model(cfg.model, dtype, seed=cfg.run.seed, tiny=cfg.tiny)
        reference.to(loop.device).eval().requires_grad_(False)
    return model, tok, reference


def train_grpo(cfg: GRPOConfig, prompts: list[dict] | None = None, eval_examples: list[dict] | None = None,
               reward_fn=None, resume: bool | None = None) -> GRPOResult:
    """GRPO from cfg.model; prompts are {"prompt", "grade", ...} (default: data_dir's train split)."""
    if resume is not None:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=resume))
    scorer = scorer_config_or_default(cfg.model, cfg.prompt, cfg.chat_template)
    cfg = dataclasses.replace(cfg, prompt=scorer.prompt, chat_template=scorer.chat_template)
    loop = RunLoop("grpo", cfg.run, cfg)
    ro_cfg = cfg.rollout
    if ro_cfg.prompts_per_step % loop.world:
        raise ConfigError(f"rollout.prompts_per_step={ro_cfg.prompts_per_step} does not split over {loop.world} "
                          "processes")
    prompts, evals = _prompts(cfg, prompts, eval_examples)
    link_examples(cfg.prompt, prompts, cfg.rules or None)  # prompt.slugs: linked -- each pair's own type candidates
    reward_fn = reward_fn or build_reward(cfg.reward, cfg.prompt.order, ro_cfg.group_size, cfg.rules)
    model, tok, reference = _policy_and_reference(cfg, loop)
    encoded = [encode_prompt(tok, render_prompt(tok, p["prompt"], cfg.chat_template)) for p in prompts]
    sampler = PromptSampler([int(p["grade"]) for p in prompts], ro_cfg.class_balance, [cfg.run.seed, loop.rank])
    generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + loop.rank)  # rank's own sampling stream
    grammar = completion_grammar(tok, cfg.prompt, cfg.rules or None)  # the reward's rules name the types
    replay = (GuidedReplay(cfg.replay, prompts, tok, cfg.chat_template, [cfg.run.seed, loop.rank, 17], grammar)
              if cfg.replay.enabled else None)
    rollouts_total = 0
    if loop.rank_state:  # resuming: this rank's streams continue where they were
        sampler.load_state_dict(loop.rank_state["sampler"])
        generator.set_state(loop.rank_state["generator"])
        rollouts_total = loop.rank_state["rollouts_total"]
        if replay is not None and loop.rank_state.get("replay"):
            replay.buffer.load_state_dict(loop.rank_state["replay"])

    total = cfg.optim.max_steps
    optimizer, scheduler = build_optimizer(model, cfg.optim, total * cfg.num_iterations)
    fwd = loop.wrap(model)
    target = ro_cfg.prompts_per_step // loop.world  # groups this rank trains on per step

    def step(i: int) -> dict:
        nonlocal rollouts_total
        t0 = time.perf_counter()
        left_before = replay.buffer.left if replay else 0
        if replay:
            replay.reset_stats()
        batch = collect_groups(model, tok, encoded, prompts, sampler, generator, reward_fn, ro_cfg,
                               cfg.prompt.order, target, replay, grammar)
        adv = piece_advantages(batch, cfg)  # [n_i * G_i] per piece
        sums = grpo_step(loop, fwd, model, reference, batch, adv, cfg, optimizer, scheduler, i)
        row = grpo_metrics(loop, batch, sums, replay, (replay.buffer.left - left_before) if replay else 0,
                           cfg.beta > 0, time.perf_counter() - t0)
        rollouts_total += row["rollouts"]
        return {**row, "rollouts_total": rollouts_total}

    def rank_state() -> dict:
        return {"sampler": sampler.state_dict(), "generator": generator.get_state(), "rollouts_total": rollouts_total,
                "replay": replay.buffer.state_dict() if replay else None}

    # final/'s scorer config: the starting model's when it has one (its tuned beta included)
    saver = PolicySaver(model, tok, cfg.lora,
                        lambda path, export: save_relevance_model(path, export, tok, scorer, cfg, "grpo_config"))
    result = loop.fit(step, total, optimizer, scheduler, saver.save_weights, save_final=saver.save_final,
                      rank_state=rank_state,
                      evaluate=(lambda: evaluate_examples(model, tok, evals, cfg.eval, cfg.prompt,
                                                          cfg.chat_template)) if evals else None,
                      eval_every=cfg.eval.every, postfix=("reward_mean", "tokens_per_s"),
                      best_metric=cfg.eval.best_metric, model=model)
    return GRPOResult(saver.trained_model(result.final_dir, loop.main), tok, result.step, result.final_dir, result.last_eval,
                      reference, rollouts_total)
