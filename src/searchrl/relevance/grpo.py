"""Stage 3: GRPO on the relevance model, with difficulty-based dynamic sampling (TaoSR1 / DAPO).

One step = one rollout batch: draw prompts (class balanced if configured), sample G
completions each with the prompt's KV cache computed once (rollout.sample_groups),
score them with a reward function (rewards.py; GradeReward by default), drop groups
whose rewards are all equal and draw more prompts up to a cap (dynamic sampling),
compute group advantages, then run ``num_iterations`` optimizer updates on the batch
(PPO epochs) with the clipped surrogate (+ beta * k3 KL to a frozen reference) from
searchrl.rl.grpo_loss. With num_iterations = 1 the update is on-policy (old log-probs
= the current ones, detached); otherwise old log-probs come from one no-grad forward
before the first update. beta = 0 loads no reference model at all.

Logged per step to output_dir/metrics.jsonl: reward mean/std and components and
accuracy over every sampled completion (filtered groups included: that is the
policy's performance), fraction of groups filtered / with zero reward spread,
rollouts (completions sampled) this step and in total, KL, clip fractions, entropy
of the sampling distributions, completion length, tokens/s (sampled completion
tokens per second of step time), loss, lr; eval metrics (as SFT: macro-F1 from grade
probabilities) every eval_every steps.

Checkpoints and exact resume as SFT (searchrl.training), plus the prompt sampler's and
the sampling generator's states of every rank. Under torchrun each rank samples its
share (prompts_per_step / world) of the groups from its own streams; gradients are
averaged by DDP and the loss normalised by global counts (dapo: active tokens of all
ranks; grpo: sequences of all ranks), so the update is that of one big batch.

The reward is GradeReward by default, TaoSR-AGRL's RuleAwareReward (rule_reward.py) with
``reward = "rule_aware"``, or any reward function passed in. TaoSR-AGRL's adaptive guided
replay (guided_replay.py, ``replay.enabled``) adds hinted rollouts to low-accuracy groups
before dynamic sampling; guided rows trained under the un-hinted prompt get a clipped
importance ratio against their hinted behaviour (guided_old_logps), and pieces may then
differ in group size (``replay.mode = "join"``; piece_advantages). A non-finite loss or gradient
norm raises FloatingPointError (step, update, micro-batch, culprit) before optimizer.step(),
so weights and checkpoints are never corrupted.

Simplifies: full fine-tuning only (no LoRA); the reference is the starting model as
loaded from ``model``; one optimizer step per pass over the batch (no mini-batches
inside a pass; ``micro_batch_size`` only splits the forward for memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from searchrl.config import check_choices, save_config
from searchrl.relevance.grpo_rollouts import (PromptSampler, collect_groups, completion_logps, dataset_prompts,
                                              model_scorer_config, split_rows)
from searchrl.relevance.guided_replay import GuidedReplay, GuidedReplayConfig, guided_old_logps
from searchrl.relevance.model import TinyModel, encode_prompt, load_relevance_model, render_prompt
from searchrl.relevance.prompt import PromptConfig
from searchrl.relevance.rewards import GradeReward
from searchrl.relevance.rule_reward import RuleAwareReward, RuleRewardConfig
from searchrl.relevance.scorer_config import save_relevance_model
from searchrl.relevance.sft import DTYPES, SCHEDULES, _subset, evaluate
from searchrl.rl.grpo_loss import AGGREGATIONS, SCALES, aggregate, clipped_surrogate, group_advantages
from searchrl.training import (all_reduce_sum, barrier, checkpoints, init_distributed, save_checkpoint,
                               set_rng_state, trim_metrics)


@dataclass
class GRPOConfig:
    # --- model
    model: str = "tiny-qwen2"  # the SFT model directory (runs/sft/final), or an offline build name as in SFTConfig
    tiny: TinyModel = dataclasses.field(default_factory=TinyModel)  # sizes when model is "tiny-qwen2"
    dtype: str = "float32"  # float32 | bfloat16 | float16: weights' dtype
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # --- data
    data_dir: str = ""  # prepared dataset; prompts come from its train split (train_grpo may get prompts instead)
    eval_split: str = "valid"  # split the eval examples come from; also the prefix of eval metric names
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)  # prompt settings; ignored (replaced
    #   by the model's) when model is a directory with relevance_config.json, so prompts match SFT's
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template; also taken from the model dir
    rules: str = ""  # rule knowledge base YAML for the reference completions; "" = the packaged rules.yaml
    max_train_prompts: int = 0  # train on a seeded random subset of this many prompts; 0 = all
    max_eval_examples: int = 256  # evaluate on a seeded random subset of this size; 0 = all
    # --- rollouts
    group_size: int = 8  # G: completions sampled per prompt
    prompts_per_step: int = 8  # groups trained on per step, over all ranks (divisible by the world size)
    temperature: float = 1.0  # sampling temperature (> 0); log-probs are scored under the same temperature
    top_p: float = 1.0  # nucleus sampling; 1 = off
    max_new_tokens: int = 160  # completion length cap (label-first: the grade is the first token)
    # --- reward (when train_grpo is not given a reward function)
    reward: str = "grade"  # grade: GradeReward (reward_* below) | rule_aware: TaoSR-AGRL's RuleAwareReward
    rule_reward: RuleRewardConfig = dataclasses.field(default_factory=RuleRewardConfig)  # rule_aware's weights,
    #   gate and combination (rule_reward.py); its group_size and order are taken from this config
    reward_correct: float = 1.0  # reward of a completion whose parsed grade is the gold grade
    reward_wrong: float = 0.0  # reward of a wrong or unreadable grade
    reward_format: float = 0.1  # bonus when the completion has no format error (grade + five step lines)
    # --- dynamic sampling and prompt mix
    dynamic_sampling: bool = True  # drop groups with all-equal rewards and draw more prompts (DAPO)
    oversample: float = 2.0  # with dynamic sampling, draw this many prompts per group still needed
    max_refill_rounds: int = 3  # cap: at most this many extra sampling rounds per step; train on what was kept
    ds_std_tol: float = 0.0  # a group is kept only if its reward std is above this (0: rewards not all equal)
    ds_signal: str = "grade"  # what dynamic sampling tests for spread: "grade" = the reward's grade-correctness
    #   component (TaoSR1: 0 < #correct < G) when it has one, else the total | "reward" = the total reward
    class_balance: bool = True  # draw prompts with equal numbers per gold grade (TaoSR1's balanced mix)
    replay: GuidedReplayConfig = dataclasses.field(default_factory=GuidedReplayConfig)  # TaoSR-AGRL adaptive
    #   guided replay and hard-prompt buffer (guided_replay.py); off unless replay.enabled
    # --- loss
    num_iterations: int = 1  # optimizer updates per rollout batch (PPO epochs); 1 = on-policy
    eps_low: float = 0.2  # ratio clipped at 1 - eps_low
    eps_high: float = 0.2  # ratio clipped at 1 + eps_high (DAPO's clip-higher: 0.28)
    beta: float = 0.0  # KL coefficient to the frozen reference (k3); 0 = no reference model is loaded
    adv_scale: str = "group"  # advantage divisor: group | batch | none (see grpo_loss.group_advantages)
    adv_eps: float = 1e-4  # added to the std before dividing
    adv_clamp: float = 0.0  # clip advantages to +-this; 0 = no clip (a sister paper used 2)
    loss_type: str = "dapo"  # dapo: mean over all active tokens | grpo: mean over sequences of per-sequence means
    # --- optimisation
    lr: float = 1e-6  # learning rate (AdamW)
    weight_decay: float = 0.0  # AdamW decoupled weight decay on matrices
    adam_betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 = no clipping
    schedule: str = "constant_with_warmup"  # cosine | linear | constant_with_warmup, over max_steps * num_iterations
    warmup_ratio: float = 0.0  # share of the updates with linear warmup
    micro_batch_size: int = 0  # sequences per forward/backward (memory); 0 = all of a rank's at once
    max_steps: int = 100  # rollout steps to run
    seed: int = 0  # seeds prompt draws, sampling (per rank), subsets and model init (tiny)
    # --- bookkeeping
    output_dir: str = "runs/grpo"  # metrics.jsonl, checkpoint-STEP/ and final/
    log_every: int = 1  # write a metrics line every this many steps
    eval_every: int = 0  # evaluate every this many steps; 0 = only at the end
    eval_batch_size: int = 16  # prompts per scoring batch
    eval_max_new_tokens: int = 160  # cot_first only: greedy tokens generated to reach the grade token
    save_every: int = 0  # checkpoint every this many steps; 0 = none besides final/
    save_total_limit: int = 0  # keep only the newest this many checkpoints; 0 = all
    stop_at_step: int = 0  # checkpoint and stop at this step without changing the schedule
    resume: bool = False  # continue from the newest output_dir/checkpoint-*/
    progress: bool = True  # show the tqdm progress bar

    def __post_init__(self):
        check_choices(self, dtype=DTYPES, schedule=SCHEDULES, adv_scale=SCALES, reward=("grade", "rule_aware"),
                      ds_signal=("grade", "reward"), loss_type=AGGREGATIONS)
        if self.group_size < 2 or self.prompts_per_step < 1 or self.num_iterations < 1:
            raise ValueError("group_size must be >= 2, prompts_per_step and num_iterations >= 1")
        if self.temperature <= 0 or self.oversample < 1 or self.beta < 0:
            raise ValueError("temperature must be > 0, oversample >= 1, beta >= 0")


@dataclass
class GRPOResult:
    model: object  # the trained policy
    tokenizer: object
    step: int  # rollout steps done
    final_dir: Path | None  # output_dir/final, or None when stopped early by stop_at_step
    last_eval: dict  # the last eval metrics ({} when there was no eval)
    reference: object | None  # the frozen reference model (None when beta == 0)
    rollouts: int  # completions sampled in all (all ranks, filtered groups included)


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


def piece_advantages(batch, cfg: GRPOConfig) -> list[torch.Tensor]:
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


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def train_grpo(cfg: GRPOConfig, prompts: list[dict] | None = None, eval_examples: list[dict] | None = None,
               reward_fn=None, resume: bool | None = None) -> GRPOResult:
    """GRPO from cfg.model; prompts are {"prompt", "grade", ...} (default: data_dir's train split)."""
    resume = cfg.resume if resume is None else resume
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    world, rank = init_distributed(device)
    if cfg.prompts_per_step % world:
        raise ValueError(f"prompts_per_step={cfg.prompts_per_step} does not split over {world} processes")
    scorer = model_scorer_config(cfg.model, cfg.prompt, cfg.chat_template)
    cfg = dataclasses.replace(cfg, prompt=scorer.prompt, chat_template=scorer.chat_template)
    if rank == 0:
        save_config(cfg, out / "grpo_config.yaml")
    if prompts is None:
        if not cfg.data_dir:
            raise ValueError("data_dir is not set (--set data_dir=DIR, a directory made by `searchrl data prepare`)")
        prompts = dataset_prompts(cfg.data_dir, "train", cfg.prompt, cfg.rules)
        if eval_examples is None:
            eval_examples = dataset_prompts(cfg.data_dir, cfg.eval_split, cfg.prompt, cfg.rules)
    prompts = _subset(prompts, cfg.max_train_prompts, cfg.seed)
    evals = _subset(eval_examples or [], cfg.max_eval_examples, cfg.seed)
    if not prompts:
        raise ValueError("no training prompts")
    if reward_fn is None and cfg.reward == "rule_aware":
        reward_fn = RuleAwareReward(cfg.rule_reward, cfg.prompt.order, cfg.group_size, cfg.rules)
    reward_fn = reward_fn or GradeReward(cfg.reward_correct, cfg.reward_wrong, cfg.reward_format, cfg.prompt.order)

    ckpt = checkpoints(out)[-1] if resume and checkpoints(out) else None
    dtype = DTYPES[cfg.dtype]
    model, tok = load_relevance_model(str(ckpt) if ckpt else cfg.model, dtype, seed=cfg.seed, tiny=cfg.tiny)
    model.to(device).train()
    reference = None
    if cfg.beta > 0:  # the starting model, frozen; never loaded when beta == 0
        reference, _ = load_relevance_model(cfg.model, dtype, seed=cfg.seed, tiny=cfg.tiny)
        reference.to(device).eval().requires_grad_(False)
    encoded = [encode_prompt(tok, render_prompt(tok, p["prompt"], cfg.chat_template)) for p in prompts]
    sampler = PromptSampler([int(p["grade"]) for p in prompts], cfg.class_balance, [cfg.seed, rank])
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank)  # rank's own sampling stream
    replay = (GuidedReplay(cfg.replay, prompts, tok, cfg.chat_template, [cfg.seed, rank, 17])
              if cfg.replay.enabled else None)

    total = cfg.max_steps * cfg.num_iterations  # optimizer updates
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                                  betas=tuple(cfg.adam_betas))
    from transformers import get_scheduler
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total + 0.999),
                              num_training_steps=total)

    step, rollouts_total = 0, 0
    metrics_path = out / "metrics.jsonl"
    if ckpt is not None:
        state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, rollouts_total = state["step"], state["rollouts_total"]
        set_rng_state(state["rng"])
        sampler.load_state_dict(state["samplers"][rank])
        generator.set_state(state["generators"][rank])
        if replay is not None and state.get("replay"):
            replay.buffer.load_state_dict(state["replay"][rank])
        if rank == 0:
            trim_metrics(metrics_path, step)
            print(f"grpo: resumed from {ckpt} at step {step}")
    elif metrics_path.exists() and rank == 0:
        metrics_path.unlink()

    fwd = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        fwd = DistributedDataParallel(model)
    target = cfg.prompts_per_step // world  # groups this rank trains on per step
    last_eval: dict = {}
    bar = tqdm(total=cfg.max_steps, initial=step, disable=not cfg.progress or rank > 0, desc="grpo")
    stop = cfg.stop_at_step if 0 < cfg.stop_at_step < cfg.max_steps else cfg.max_steps
    while step < stop:
        t0 = time.perf_counter()
        left_before = replay.buffer.left if replay else 0
        if replay:
            replay.reset_stats()
        batch = collect_groups(model, tok, encoded, prompts, sampler, generator, reward_fn, cfg, target, replay)
        adv = piece_advantages(batch, cfg)  # [n_i*G_i] per piece
        pieces = [(chunk, a) for piece, pa in zip(batch.pieces, adv)
                  for chunk, a in zip(split_rows(piece, cfg.micro_batch_size),
                                      pa.split(cfg.micro_batch_size or len(pa)))]
        n_tok = all_reduce_sum(sum(float(c.completion_mask.sum()) for c, _ in pieces), world, device)
        n_seq = all_reduce_sum(sum(len(a) for _, a in pieces), world, device)
        with torch.no_grad():
            old = [completion_logps(model, c, device, cfg.temperature)[0] if cfg.num_iterations > 1 else None
                   for c, _ in pieces]
            ref = [completion_logps(reference, c, device, cfg.temperature)[0] if reference is not None else None
                   for c, _ in pieces]
        sums = {"loss": 0.0, "clip_low": 0.0, "clip_high": 0.0, "clip_region": 0.0, "kl": 0.0, "entropy": 0.0}
        lr = scheduler.get_last_lr()[0]
        for it in range(cfg.num_iterations):
            for j, (c, a) in enumerate(pieces):
                mask = c.completion_mask.to(device)  # [n, T]
                sync = world == 1 or j == len(pieces) - 1
                with (contextlib.nullcontext() if sync else fwd.no_sync()):
                    logp, ent = completion_logps(fwd, c, device, cfg.temperature, entropy=it == 0)  # [n, T]
                    # guided rows trained under the un-hinted prompt: clipped ratio against the hinted behaviour
                    old_j = guided_old_logps(logp, old[j], c, cfg.replay.ratio_min, 1 + cfg.eps_high)
                    per_tok, stats = clipped_surrogate(logp, old_j, a.to(device), mask, cfg.eps_low, cfg.eps_high,
                                                       ref_logp=ref[j], beta=cfg.beta)
                    if cfg.loss_type == "dapo":  # DDP averages over ranks: divide by global tokens / world
                        loss = aggregate(per_tok, mask, "dapo", num_items=n_tok / world)
                    else:  # each piece's sequence mean, re-weighted to a mean over all ranks' sequences
                        loss = aggregate(per_tok, mask, "grpo") * (len(a) * world / n_seq)
                    if not torch.isfinite(loss):  # stop before the NaN reaches the weights (and checkpoints)
                        raise FloatingPointError(_nonfinite_message(step + 1, it, j, len(pieces), loss, a, logp))
                    loss.backward()
                w = float(mask.sum()) / cfg.num_iterations  # stats: token-weighted means over all passes
                sums["loss"] += float(loss.detach()) / (world * cfg.num_iterations)  # summed over ranks: / world
                for k in ("clip_low", "clip_high", "clip_region", "kl"):
                    if k in stats:
                        sums[k] += float(stats[k]) * w
                if ent is not None:
                    sums["entropy"] += float((ent * mask).sum())
            # inf max_norm = measure only; with DDP the norm is of the all-reduced gradients, same on every rank
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
            if not torch.isfinite(norm):
                raise FloatingPointError(f"grpo: non-finite gradient norm ({float(norm)}) at step {step + 1}, "
                                         f"update {it + 1}; optimizer.step() skipped, weights unchanged")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1

        # ---- logging: global means over all ranks
        r = batch.drawn_rewards.double()
        tot = {k: all_reduce_sum(v, world, device) for k, v in {
            "n": len(r), "r": float(r.sum()), "r2": float((r ** 2).sum()), "correct": batch.n_correct,
            "groups": batch.n_drawn_groups, "zero_std": batch.n_zero_std, "filtered": batch.n_filtered,
            "ctok": batch.completion_tokens, **{f"c_{k}": v for k, v in batch.components.items()},
            **({f"g_{k}": v for k, v in replay.stats.items()} | {"g_left": replay.buffer.left - left_before,
                                                                  "g_buffer": len(replay.buffer.items)}
               if replay else {}),
            **sums}.items()}
        rollouts_total += int(tot["n"])
        mean = tot["r"] / tot["n"]
        tok_s = tot["ctok"] / max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(reward=f"{mean:.3f}", tok_s=f"{tok_s:.0f}")
        row = {}
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            row = {"step": step, "reward_mean": mean, "reward_std": max(tot["r2"] / tot["n"] - mean ** 2, 0) ** 0.5,
                   **{f"reward_{k}": tot[f"c_{k}"] / tot["n"] for k in batch.components},
                   "accuracy": tot["correct"] / tot["n"], "groups_filtered_frac": tot["filtered"] / tot["groups"],
                   "zero_std_frac": tot["zero_std"] / tot["groups"], "rollouts": int(tot["n"]),
                   "rollouts_total": rollouts_total, "loss": tot["loss"],
                   **{k: tot[k] / max(n_tok, 1) for k in ("clip_low", "clip_high", "clip_region")},
                   "entropy": tot["entropy"] / max(n_tok, 1), "completion_len": tot["ctok"] / tot["n"],
                   "tokens_per_s": tok_s, "step_seconds": time.perf_counter() - t0, "lr": lr}
            if reference is not None:
                row["kl"] = tot["kl"] / max(n_tok, 1)
            if replay is not None:  # accuracy above is the unguided rollouts'; guided_accuracy is under the hint
                row.update(guided_groups=int(tot["g_guided_groups"]), guided_rollouts=int(tot["g_guided_rollouts"]),
                           guided_accuracy=tot["g_guided_correct"] / max(tot["g_guided_rollouts"], 1),
                           buffer_size=int(tot["g_buffer"]), buffer_draws=int(tot["g_buffer_draws"]),
                           buffer_left=int(tot["g_left"]))
        if rank == 0 and evals and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps):
            last_eval = evaluate(model, tok, evals, cfg)  # uses eval_split, prompt.order, chat_template, eval_*
            row = {"step": step, **row, **last_eval}
        if row and rank == 0:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if (cfg.save_every and step % cfg.save_every == 0) or step == stop < cfg.max_steps:
            extra = {"samplers": _gather(sampler.state_dict(), world), "rollouts_total": rollouts_total,
                     "generators": _gather(generator.get_state(), world),
                     "replay": _gather(replay.buffer.state_dict(), world) if replay else None}
            if rank == 0:
                save_checkpoint(out / f"checkpoint-{step}", model, tok, optimizer, scheduler, step, cfg, extra)
        barrier(world)
    bar.close()
    if step < cfg.max_steps:
        return GRPOResult(model, tok, step, None, last_eval, reference, rollouts_total)

    final = out / "final"
    if rank == 0:
        # scorer: the starting model's scorer config when it has one (its tuned beta included)
        save_relevance_model(final, model, tok, scorer, cfg, "grpo_config")
    barrier(world)
    return GRPOResult(model, tok, step, final, last_eval, reference, rollouts_total)
