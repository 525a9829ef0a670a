"""Stage 2b: DPO of the SFT model on the preference pairs that `searchrl sample` writes.

The policy starts as the SFT model; the reference is a second, frozen copy loaded from the same directory (eval
mode, no gradients). A pair is encoded twice, prompt + chosen + EOS and prompt + rejected + EOS, with the prompt
masked exactly as in SFT (sft.encode_example); chosen and rejected rows of a micro-batch go through one forward
pass. The loss is rl.dpo_loss.dpo_sigmoid_loss on summed completion log-probabilities (beta 0.1 by default,
optional cDPO label smoothing), averaged over the pairs of an optimizer step. Logged: loss, reward margin and
accuracy (implicit reward beta * log-ratio, chosen above rejected), tokens/s; macro-F1 on the eval split every
eval_every steps (sft.predict_grades).

Same conventions as sft.py: config dataclass, metrics.jsonl, tqdm bar, checkpoint-STEP/ with exact resume
(searchrl.training; data order a function of (seed, epoch)), final/ with safetensors weights, tokenizer, the SFT
model's relevance_config.json and dpo_config.json. Under torchrun the policy runs data-parallel as in SFT (each
rank its own micro-batches, the loss normalised by the global pair count); rank 0 logs, evaluates and saves.

Simplifies: full fine-tuning only (no LoRA); reference log-probabilities are recomputed every step rather than
precomputed once; pairs longer than max_length are dropped and counted, not truncated.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from searchrl.config import check_choices, save_config
from searchrl.eval.metrics import classification_metrics
from searchrl.relevance.model import load_relevance_model, render_prompt
from searchrl.relevance.sample import read_pairs
from searchrl.relevance.scorer_config import load_scorer_config, save_relevance_model
from searchrl.relevance.sft import DTYPES, IGNORE, SCHEDULES, collate, encode_example, predict_grades
from searchrl.rl.dpo_loss import dpo_sigmoid_loss, sequence_logps
from searchrl.training import (BatchStream, all_reduce_sum, barrier, build_optimizer, checkpoints, init_distributed,
                               restore_checkpoint, save_checkpoint, trim_metrics)


@dataclass
class DPOConfig:
    # --- model and data
    model: str = "runs/sft/final"  # the SFT model directory: the policy's start and the frozen reference
    pairs: str = "runs/pairs.jsonl"  # preference JSONL (prompt, chosen, rejected), e.g. from `searchrl sample`
    data_dir: str = ""  # prepared dataset directory for the macro-F1 eval; "" = no eval
    eval_split: str = "valid"  # split the eval comes from; also the prefix of eval metric names
    max_eval_examples: int = 512  # evaluate on a seeded random subset of this size; 0 = all
    max_length: int = 1024  # prompt + completion tokens; pairs with a longer side are dropped and counted
    dtype: str = "float32"  # float32 | bfloat16 | float16: weights' dtype (policy and reference)
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # --- DPO loss
    beta: float = 0.1  # inverse temperature of the implicit reward; larger keeps the policy nearer the reference
    label_smoothing: float = 0.0  # probability a preference is flipped (cDPO); 0 = plain sigmoid DPO
    # --- optimisation
    lr: float = 5e-6  # peak learning rate (DPO on a pretrained model wants ~5e-7..5e-6)
    weight_decay: float = 0.0  # AdamW decoupled weight decay on matrices (not on biases / norms)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    max_grad_norm: float = 1.0  # clip the global gradient norm to this; 0 = no clipping
    batch_size: int = 4  # pairs per micro-batch (each pair is two sequences)
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size * grad_accum pairs)
    warmup_ratio: float = 0.1  # share of the steps with linear warmup from 0 to lr
    schedule: str = "linear"  # cosine | linear | constant_with_warmup: decay after warmup (to 0 at the end)
    max_steps: int = 0  # optimizer steps to run; 0 = derive from epochs
    epochs: float = 1.0  # passes over the pairs, used when max_steps is 0
    seed: int = 0  # seeds data order, eval subset and dropout
    # --- bookkeeping
    output_dir: str = "runs/dpo"  # metrics.jsonl, checkpoint-STEP/ and final/ are written here
    log_every: int = 1  # write a metrics line every this many steps
    eval_every: int = 0  # evaluate every this many steps; 0 = only at the end
    eval_batch_size: int = 16  # prompts per scoring batch
    eval_max_new_tokens: int = 160  # cot_first only: greedy tokens generated to reach the grade token
    save_every: int = 0  # checkpoint every this many steps; 0 = none besides final/
    save_total_limit: int = 0  # keep only the newest this many checkpoints; 0 = keep all
    stop_at_step: int = 0  # checkpoint and stop at this step without changing the schedule (time-boxed jobs)
    resume: bool = False  # continue from the newest output_dir/checkpoint-*/ (fresh start when there is none)
    progress: bool = True  # show the tqdm progress bar

    def __post_init__(self):
        check_choices(self, schedule=SCHEDULES, dtype=DTYPES)
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        if self.beta <= 0 or not 0 <= self.label_smoothing < 0.5:
            raise ValueError("beta must be > 0 and label_smoothing in [0, 0.5)")


@dataclass
class DPOResult:
    model: object  # the trained policy
    reference: object  # the frozen reference (the SFT model)
    tokenizer: object
    step: int  # optimizer steps done
    final_dir: Path | None  # output_dir/final, or None when stopped early by stop_at_step
    dropped_too_long: int  # pairs with a side over max_length
    last_eval: dict  # the last eval metrics ({} when there was no eval)


def encode_pair(tokenizer, row: dict, max_length: int) -> dict | None:
    """{"chosen", "rejected"}: each sft.encode_example of prompt + completion (+ EOS); None if a side is too long."""
    chosen = encode_example(tokenizer, row["prompt"], row["chosen"], max_length)
    rejected = encode_example(tokenizer, row["prompt"], row["rejected"], max_length)
    return None if chosen is None or rejected is None else {"chosen": chosen, "rejected": rejected}


def pair_logps(model, batch: dict) -> torch.Tensor:
    """[2B] summed completion log-probabilities of a collated batch (chosen rows, then rejected rows)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]  # [2B, T] each
    width = ids.shape[1]
    # as in sft.completion_loss: logits only from the earliest completion start on
    first = int((labels != IGNORE).float().argmax(1).min())
    keep = width - max(first - 1, 0)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits  # [2B, keep, V]
    targets = labels[:, width - keep + 1:]  # [2B, keep-1]: token t+1 is predicted at position t
    return sequence_logps(logits[:, :-1], targets, targets != IGNORE)  # [2B]


def eval_examples(cfg: DPOConfig, tokenizer) -> list[dict]:
    """{"prompt" (rendered), "grade"} for the eval split, prompts built as the SFT model was trained."""
    if not cfg.data_dir:
        return []
    from searchrl.data.schema import load_dataset
    from searchrl.relevance.rules import RuleEngine
    from searchrl.relevance.teacher import RuleTeacher, build_sft_examples
    scorer = load_scorer_config(cfg.model)
    pairs = load_dataset(cfg.data_dir).split(cfg.eval_split).pairs()
    if 0 < cfg.max_eval_examples < len(pairs):
        pairs = pairs.iloc[np.sort(np.random.default_rng([cfg.seed, 7]).permutation(len(pairs))[:cfg.max_eval_examples])]
    # build_sft_examples makes the SFT prompts; the teacher's completions are not used here
    examples, _ = build_sft_examples(pairs, RuleTeacher(RuleEngine.from_yaml(), scorer.prompt, "condition"),
                                     scorer.prompt)
    return [{"prompt": render_prompt(tokenizer, ex["prompt"], scorer.chat_template), "grade": int(ex["grade"])}
            for ex in examples]


def evaluate(model, tokenizer, examples: list[dict], cfg: DPOConfig, order: str) -> dict:
    """{"<split>_macro_f1", "<split>_accuracy", "<split>_good_f1"} from the grade probabilities (or decoding)."""
    pred = predict_grades(model, tokenizer, [ex["prompt"] for ex in examples], order, cfg.eval_batch_size,
                          cfg.eval_max_new_tokens)
    m = classification_metrics([ex["grade"] for ex in examples], pred.tolist())
    return {f"{cfg.eval_split}_{k}": m[k] for k in ("macro_f1", "accuracy", "good_f1")}


def train_dpo(cfg: DPOConfig) -> DPOResult:
    """DPO from cfg.model on cfg.pairs; see the module docstring."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        save_config(cfg, out / "dpo_config.yaml")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    world, rank = init_distributed(device)
    scorer = load_scorer_config(cfg.model)  # fails early on a directory that is not a relevance model

    ckpt = checkpoints(out)[-1] if cfg.resume and checkpoints(out) else None
    dtype = DTYPES[cfg.dtype]
    model, tok = load_relevance_model(str(ckpt or cfg.model), dtype)
    reference, _ = load_relevance_model(cfg.model, dtype)
    model.to(device).train()
    reference.to(device).eval().requires_grad_(False)

    encoded = [encode_pair(tok, r, cfg.max_length) for r in read_pairs(cfg.pairs)]
    data = [e for e in encoded if e is not None]
    dropped = len(encoded) - len(data)
    if not data:
        raise ValueError(f"{cfg.pairs}: no pair fits max_length={cfg.max_length} ({dropped} dropped)")
    if dropped and rank == 0:
        print(f"dpo: dropped {dropped} of {len(encoded)} pairs longer than {cfg.max_length} tokens")
    evals = eval_examples(cfg, tok) if rank == 0 else []

    micro_batch = BatchStream(data, cfg.batch_size, cfg.seed)  # micro_batch(m): the m-th micro-batch of the stream
    per_step = cfg.grad_accum * world  # micro-batches per optimizer step, over all ranks
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * micro_batch.per_epoch / per_step))
    optimizer, scheduler = build_optimizer(model, cfg, total)

    step = 0
    metrics_path = out / "metrics.jsonl"
    if ckpt is not None:
        step = restore_checkpoint(ckpt, optimizer, scheduler)
        if rank == 0:
            trim_metrics(metrics_path, step)
            print(f"dpo: resumed from {ckpt} at step {step}")
    elif metrics_path.exists() and rank == 0:
        metrics_path.unlink()  # a fresh run starts a fresh log

    fwd = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        fwd = DistributedDataParallel(model)
    last_eval: dict = {}
    bar = tqdm(total=total, initial=step, disable=not cfg.progress or rank > 0, desc="dpo")
    stop = cfg.stop_at_step if 0 < cfg.stop_at_step < total else total
    while step < stop:
        t0 = time.perf_counter()
        pairs = [micro_batch((step * cfg.grad_accum + j) * world + rank) for j in range(cfg.grad_accum)]
        # chosen rows then rejected rows: one forward pass per model per micro-batch
        batches = [collate([p["chosen"] for p in b] + [p["rejected"] for p in b], tok.pad_token_id) for b in pairs]
        n_pairs = all_reduce_sum(sum(len(b) for b in pairs), world, device)  # the step's pairs over all ranks
        sums = torch.zeros(4, dtype=torch.float64)  # loss, reward margin, reward accuracy, chosen reward (summed)
        n_tokens = 0
        for j, b in enumerate(batches):
            b = {k: v.to(device) for k, v in b.items()}
            half = b["input_ids"].shape[0] // 2
            with torch.no_grad():
                ref = pair_logps(reference, b)  # [2B]
            sync = world == 1 or j == len(batches) - 1
            with (contextlib.nullcontext() if sync else fwd.no_sync()):
                pol = pair_logps(fwd, b)  # [2B]
                losses, r_chosen, r_rejected = dpo_sigmoid_loss(pol[:half], pol[half:], ref[:half], ref[half:],
                                                                cfg.beta, cfg.label_smoothing)  # [B] each
                # DDP averages gradients over ranks; x world turns that into the mean over the global pairs
                (losses.sum() * world / n_pairs).backward()
            sums += torch.tensor([float(losses.detach().sum()), float((r_chosen - r_rejected).sum()),
                                  float((r_chosen > r_rejected).float().sum()), float(r_chosen.sum())],
                                 dtype=torch.float64)
            n_tokens += int(b["attention_mask"].sum())
        sums = [all_reduce_sum(float(v), world, device) / n_pairs for v in sums]
        n_tokens = int(all_reduce_sum(n_tokens, world, device))
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tok_s = n_tokens / max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{sums[0]:.4f}", margin=f"{sums[1]:.3f}", tok_s=f"{tok_s:.0f}")
        row = {}
        if step % cfg.log_every == 0 or step == total:
            row = {"step": step, "epoch": round(step * per_step / micro_batch.per_epoch, 4), "loss": sums[0],
                   "reward_margin": sums[1], "reward_accuracy": sums[2], "chosen_reward": sums[3],
                   "rejected_reward": sums[3] - sums[1], "lr": lr, "tokens_per_s": tok_s}
        if rank == 0 and evals and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
            last_eval = evaluate(model, tok, evals, cfg, scorer.prompt.order)
            row = {"step": step, **row, **last_eval}
        if row and rank == 0:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        if rank == 0 and ((cfg.save_every and step % cfg.save_every == 0) or step == stop < total):
            save_checkpoint(out / f"checkpoint-{step}", model, tok, optimizer, scheduler, step, cfg)
        barrier(world)  # ranks wait for rank 0's eval / checkpoint before the next step
    bar.close()
    if step < total:
        return DPOResult(model, reference, tok, step, None, dropped, last_eval)

    final = out / "final"
    if rank == 0:
        save_relevance_model(final, model, tok, scorer, cfg, "dpo_config")  # DPO changed no prompt setting
    barrier(world)
    return DPOResult(model, reference, tok, step, final, dropped, last_eval)
