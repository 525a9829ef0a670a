"""Stage 2b: DPO of the SFT model on the preference pairs that `searchrl sample` writes (``searchrl train dpo``).

The policy starts as the SFT model. The reference is a second, frozen copy loaded from the same directory
(eval mode, no gradients), or, with LoRA, the policy itself with its adapters disabled (model.frozen_reference:
no second copy in memory). A pair is encoded twice, prompt + chosen + EOS and prompt + rejected + EOS, with the
prompt masked exactly as in SFT (examples.encode_example); chosen and rejected rows of a micro-batch go through
one forward pass. The loss is rl.dpo_loss.dpo_sigmoid_loss on summed completion log-probabilities (beta 0.1 by
default, optional cDPO label smoothing), averaged over the pairs of an optimizer step. Logged: loss, reward
margin and accuracy (implicit reward beta * log-ratio, chosen above rejected), tokens/s; macro-F1 on the eval
split every eval.every steps.

The run loop (training.RunLoop) owns checkpoints, exact resume, logging and torchrun (each rank its own
micro-batches, the loss normalised by the global pair count). final/ holds the (merged) weights, tokenizer, the
SFT model's relevance_config.json and dpo_config.json.

Simplifies: reference log-probabilities are recomputed every step rather than precomputed once; pairs longer
than max_length are dropped and counted, not truncated.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from searchrl.config import EvalConfig, OptimConfig, RunConfig, check_choices
from searchrl.errors import ConfigError, InputError
from searchrl.relevance.model.load import DTYPES, load_relevance_model, load_trainable
from searchrl.relevance.model.lora import LoraSettings, frozen_reference
from searchrl.relevance.model.scorer_config import save_relevance_model, scorer_config_of
from searchrl.relevance.scoring.evaluate import evaluate_examples
from searchrl.relevance.train.examples import IGNORE, collate, encode_example, split_examples, subset
from searchrl.relevance.train.sample import read_preference_pairs
from searchrl.relevance.train.saving import PolicySaver
from searchrl.rl.dpo_loss import dpo_sigmoid_loss, sequence_logps
from searchrl.training import BatchStream, RunLoop, build_optimizer, optimizer_step, total_steps


@dataclass
class DPOConfig:
    # --- model and data
    model: str = "runs/sft/final"  # the SFT model directory: the policy's start and the frozen reference (a GGUF
    #   file or packaged GGUF name such as smollm2-135m also loads, with the default scorer config)
    lora: LoraSettings | None = None  # None = full fine-tuning; with LoRA the reference is the base, adapters off
    dtype: str = "float32"  # float32 | bfloat16 | float16: weights' dtype (policy and reference)
    pairs: str = "runs/pairs.jsonl"  # preference JSONL (prompt, chosen, rejected), e.g. from `searchrl sample`
    data_dir: str = ""  # prepared dataset directory for the macro-F1 eval; "" = no eval
    max_length: int = 1024  # prompt + completion tokens; pairs with a longer side are dropped and counted
    # --- DPO loss and batches
    beta: float = 0.1  # inverse temperature of the implicit reward; larger keeps the policy nearer the reference
    label_smoothing: float = 0.0  # probability a preference is flipped (cDPO); 0 = plain sigmoid DPO
    batch_size: int = 4  # pairs per micro-batch (each pair is two sequences)
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size * grad_accum pairs)
    # --- sections
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6, warmup_ratio=0.1, schedule="linear"))
    #   (DPO on a pretrained model wants lr ~5e-7..5e-6)
    eval: EvalConfig = field(default_factory=EvalConfig)  # in-training eval on eval.split (needs data_dir)
    run: RunConfig = field(default_factory=lambda: RunConfig(output_dir="runs/dpo"))  # output, cadence, resume

    def __post_init__(self):
        check_choices(self, dtype=DTYPES)
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch_size and grad_accum must be >= 1")
        if self.beta <= 0 or not 0 <= self.label_smoothing < 0.5:
            raise ConfigError("beta must be > 0 and label_smoothing in [0, 0.5)")


@dataclass
class DPOResult:
    model: object  # the trained policy (LoRA merged into it once training has finished; a peft model if stopped)
    reference: object | None  # the frozen reference (the SFT model); None under LoRA (the adapters-off policy)
    tokenizer: object
    step: int  # optimizer steps done
    final_dir: Path | None  # output_dir/final, or None when stopped early by stop_at_step
    dropped_too_long: int  # pairs with a side over max_length
    last_eval: dict  # the last eval metrics ({} when there was no eval)


def encode_pair(tokenizer, row: dict, max_length: int) -> dict | None:
    """{"chosen", "rejected"}: each examples.encode_example of prompt + completion (+ EOS); None if a side is too long."""
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


def train_dpo(cfg: DPOConfig) -> DPOResult:
    """DPO from cfg.model on cfg.pairs; see the module docstring."""
    scorer = scorer_config_of(cfg.model)  # fails early on a directory that is not a relevance model
    loop = RunLoop("dpo", cfg.run, cfg)
    dtype = DTYPES[cfg.dtype]
    model, tok = load_trainable(cfg.model, dtype, cfg.lora, loop.checkpoint)
    reference = None
    if cfg.lora is None:
        reference, _ = load_relevance_model(cfg.model, dtype)
        reference.to(loop.device).eval().requires_grad_(False)
    model.to(loop.device).train()

    encoded = [encode_pair(tok, r, cfg.max_length) for r in read_preference_pairs(cfg.pairs)]
    data = [e for e in encoded if e is not None]
    dropped = len(encoded) - len(data)
    if not data:
        raise InputError(f"{cfg.pairs}: no pair fits max_length={cfg.max_length} ({dropped} dropped)")
    if dropped:
        loop.print(f"dropped {dropped} of {len(encoded)} pairs longer than {cfg.max_length} tokens")
    evals = []
    if cfg.data_dir and loop.main:
        from searchrl.data.schema import load_dataset
        evals = subset(split_examples(load_dataset(cfg.data_dir), cfg.eval.split, scorer.prompt),
                       cfg.eval.max_examples, cfg.run.seed)

    stream = BatchStream(data, cfg.batch_size, cfg.run.seed)  # stream(m): the m-th micro-batch
    per_step = cfg.grad_accum * loop.world  # micro-batches per optimizer step, over all ranks
    total = total_steps(cfg.optim, stream.per_epoch, per_step)
    optimizer, scheduler = build_optimizer(model, cfg.optim, total)
    fwd = loop.wrap(model)

    def step(i: int) -> dict:
        t0 = time.perf_counter()
        pairs = [stream((i * cfg.grad_accum + j) * loop.world + loop.rank) for j in range(cfg.grad_accum)]
        # chosen rows then rejected rows: one forward pass per model per micro-batch
        batches = [collate([p["chosen"] for p in b] + [p["rejected"] for p in b], tok.pad_token_id) for b in pairs]
        n_pairs = loop.sum(sum(len(b) for b in pairs))  # the step's pairs over all ranks
        sums = torch.zeros(4, dtype=torch.float64)  # loss, reward margin, reward accuracy, chosen reward (summed)
        n_tokens = 0
        for j, b in enumerate(batches):
            b = {k: v.to(loop.device) for k, v in b.items()}
            half = b["input_ids"].shape[0] // 2
            with frozen_reference(model, reference) as ref_model:
                ref = pair_logps(ref_model, b)  # [2B]
            sync = loop.world == 1 or j == len(batches) - 1
            with (contextlib.nullcontext() if sync else fwd.no_sync()):
                pol = pair_logps(fwd, b)  # [2B]
                losses, r_chosen, r_rejected = dpo_sigmoid_loss(pol[:half], pol[half:], ref[:half], ref[half:],
                                                                cfg.beta, cfg.label_smoothing)  # [B] each
                # DDP averages gradients over ranks; x world turns that into the mean over the global pairs
                (losses.sum() * loop.world / n_pairs).backward()
            sums += torch.tensor([float(losses.detach().sum()), float((r_chosen - r_rejected).sum()),
                                  float((r_chosen > r_rejected).float().sum()), float(r_chosen.sum())],
                                 dtype=torch.float64)
            n_tokens += int(b["attention_mask"].sum())
        loss, margin, accuracy, chosen = [loop.sum(float(v)) / n_pairs for v in sums]
        n_tokens = loop.sum(n_tokens)
        _, lr = optimizer_step(optimizer, scheduler, cfg.optim.max_grad_norm, f"dpo step {i + 1}")
        return {"epoch": round((i + 1) * per_step / stream.per_epoch, 4), "loss": loss, "reward_margin": margin,
                "reward_accuracy": accuracy, "chosen_reward": chosen, "rejected_reward": chosen - margin, "lr": lr,
                "tokens_per_s": n_tokens / max(time.perf_counter() - t0, 1e-9)}

    saver = PolicySaver(model, tok, cfg.lora,  # DPO changed no prompt setting: the SFT model's scorer config
                        lambda path, export: save_relevance_model(path, export, tok, scorer, cfg, "dpo_config"))
    result = loop.fit(step, total, optimizer, scheduler, saver.save_weights, save_final=saver.save_final,
                      evaluate=(lambda: evaluate_examples(model, tok, evals, cfg.eval, scorer.prompt,
                                                          scorer.chat_template)) if evals else None,
                      eval_every=cfg.eval.every, postfix=("loss", "reward_margin"),
                      best_metric=cfg.eval.best_metric, model=model)
    return DPOResult(saver.trained_model(result.final_dir, loop.main), reference, tok, result.step, result.final_dir, dropped,
                     result.last_eval)
