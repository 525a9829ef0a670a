"""Stage 1: supervised fine-tuning of the relevance model on teacher completions.

An example is {"prompt", "completion", "grade"} (teacher.build_sft_examples makes
them). The loss is causal-LM cross-entropy on the completion tokens only (grade
token + reasoning + EOS); prompt and padding positions carry label -100.

One single-process loop, written out in full rather than hidden in a Trainer:
AdamW, warmup + cosine/linear schedule (transformers.get_scheduler), gradient
accumulation with the loss averaged over every completion token of the optimizer
step, a tqdm bar with loss and tokens/s, JSON lines in output_dir/metrics.jsonl,
checkpoints in Hugging Face format plus trainer_state.pt, and exact resume: the
data order is a pure function of (seed, epoch), so the step number alone says
where the data stream stands, and RNG states are restored.

Checkpoint, resume and torchrun helpers live in searchrl.training.

Simplifies: examples longer than max_length are dropped and counted, not
truncated (cutting a prompt loses the product, cutting a cot-first completion
loses the label); no sequence packing. Under torchrun the loop runs data-parallel
(DDP; gloo on CPU, nccl on GPU): rank r takes micro-batches r, r + W, ... of the
same ordered stream, the loss is normalised by the global token count, so W
processes with grad_accum A match one process with grad_accum A * W. Rank 0 logs,
evaluates and saves. FSDP / DeepSpeed are left to accelerate for now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from searchrl.config import check_choices, save_config
from searchrl.training import (BatchStream, all_reduce_sum, barrier, build_optimizer, checkpoints, init_distributed,
                               restore_checkpoint, save_checkpoint, trim_metrics)
from searchrl.eval.metrics import classification_metrics
from searchrl.relevance.model import (LoraSettings, TinyModel, encode_prompt, grade_probs, grade_token_ids, left_pad,
                                      load_relevance_model, render_prompt)
from searchrl.relevance.llm_teacher import LLMTeacherConfig
from searchrl.relevance.prompt import GRADE_TOKENS, PromptConfig

IGNORE = -100  # label of positions that carry no loss (prompt, padding)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SCHEDULES = ("cosine", "linear", "constant_with_warmup")


@dataclass
class SFTConfig:
    # --- model
    model: str = "tiny-qwen2"  # local HF causal-LM directory, or an offline build over MiniLM's vocabulary:
    #   "tiny-qwen2" (random Qwen2), "minilm-qwen2" (Qwen2 with MiniLM's embeddings), "minilm-decoder" (MiniLM as BERT decoder)
    tiny: TinyModel = dataclasses.field(default_factory=TinyModel)  # Qwen2 sizes for tiny-qwen2 / minilm-qwen2
    tokenizer: str = ""  # tokenizer directory; "" = the model's own (MiniLM's for tiny-qwen2)
    trim_vocab: bool = False  # tiny-qwen2 / minilm-qwen2 / minilm-decoder only: cut MiniLM's 30k-token vocabulary to the tokens
    #   the catalogue and the train completions use (model.trim_minilm_tokenizer): a ~4x smaller LM head
    dtype: str = "float32"  # float32 | bfloat16 | float16: weights' dtype (optimizer states follow it)
    lora: LoraSettings | None = None  # None = full fine-tuning; set any lora.* key to train LoRA adapters instead
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # --- data
    data_dir: str = ""  # prepared dataset directory (read by the CLI to build examples; train_sft takes examples)
    eval_split: str = "valid"  # split the eval examples come from; also the prefix of eval metric names
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)  # prompt fields, instruction and
    #   completion order (prompt.order: label_first = grade token first | cot_first); saved with the model
    rules: str = ""  # rule knowledge base YAML for the rule teacher; "" = the packaged relevance/rules.yaml
    teacher: str = "rule"  # who writes the train CoT: "rule" (offline) | "llm" (an OpenAI-compatible endpoint)
    llm: LLMTeacherConfig = dataclasses.field(default_factory=LLMTeacherConfig)  # endpoint, model, cache (teacher=llm)
    on_disagree: str = "condition"  # teacher grade != human grade: "condition" the CoT on the gold grade | "drop"
    chat_template: bool = True  # wrap prompts in the tokenizer's chat template when it has one
    max_length: int = 1024  # prompt + completion tokens; longer examples are dropped and counted
    synthetic_queries: int = 0  # add rule-graded pairs for this many queries written from the catalogue
    #   (relevance/synthetic.py; never a valid/test query or a product judged for them); 0 = human pairs only
    synthetic_per_query: int = 8  # candidates per synthetic query: BM25 hits, a quarter random products
    max_train_examples: int = 0  # train on a seeded random subset of this size; 0 = all
    max_eval_examples: int = 512  # evaluate on a seeded random subset of this size; 0 = all
    # --- optimisation
    batch_size: int = 8  # examples per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step (effective batch = batch_size * grad_accum)
    group_by_length: bool = False  # batches of similar-length examples (training.BatchStream): less padding
    lr: float = 1e-4  # peak learning rate (full fine-tuning of a pretrained model wants ~1e-5, LoRA ~1e-4)
    weight_decay: float = 0.0  # AdamW decoupled weight decay on matrices (not on biases / norms)
    adam_betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    label_loss_weight: float = 1.0  # loss weight of grade-token targets relative to a reasoning token: the grade
    #   is one token among ~50, and a small model otherwise learns the reasoning text long before the grade
    balance_grades: float = 0.0  # 0..1: scale each grade token's weight by (inverse train frequency of that
    #   grade) ** balance_grades, normalised to mean 1 over examples; 1 = fully class-balanced (macro-F1 view)
    max_grad_norm: float = 1.0  # clip the global gradient norm to this; 0 = no clipping
    warmup_ratio: float = 0.03  # share of the steps with linear warmup from 0 to lr
    schedule: str = "cosine"  # cosine | linear | constant_with_warmup: decay after warmup (to 0 at the end)
    max_steps: int = 0  # optimizer steps to run; 0 = derive from epochs
    epochs: float = 1.0  # passes over the training examples, used when max_steps is 0
    seed: int = 0  # seeds data order, subsets, model init (tiny) and dropout
    # --- bookkeeping
    output_dir: str = "runs/sft"  # metrics.jsonl, checkpoint-STEP/ and final/ are written here
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
        check_choices(self, teacher=("rule", "llm"), on_disagree=("condition", "drop"), schedule=SCHEDULES,
                      dtype=DTYPES)
        builds = ("tiny-qwen2", "minilm-qwen2", "minilm-decoder")  # the models built here over MiniLM's vocabulary
        if self.trim_vocab and (self.model not in builds or self.tokenizer):
            raise ValueError(f"trim_vocab builds the tokenizer of a new {' / '.join(builds)} model; "
                             f"it cannot be used with model={self.model!r}, tokenizer={self.tokenizer!r}")
        if self.synthetic_queries < 0 or self.synthetic_per_query < 1:
            raise ValueError(f"synthetic_queries must be >= 0 and synthetic_per_query >= 1, got "
                             f"{self.synthetic_queries}, {self.synthetic_per_query}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")


@dataclass
class SFTResult:
    model: object  # the trained model (LoRA merged into it once training has finished)
    tokenizer: object
    step: int  # optimizer steps done
    final_dir: Path | None  # output_dir/final, or None when stopped early by stop_at_step
    dropped_too_long: int  # training examples over max_length
    last_eval: dict  # the last eval metrics ({} when there was no eval)


# ---------------------------------------------------------------- data

def encode_example(tokenizer, prompt: str, completion: str, max_length: int) -> dict | None:
    """{"input_ids", "labels"} (lists): prompt labels are IGNORE, completion + EOS are their own ids.

    Prompt and completion are encoded apart, so the boundary is exact (the completion
    starts with a special grade token or a step name, never mid-word). None if too long.
    """
    p = encode_prompt(tokenizer, prompt)
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(p) + len(c) > max_length:
        return None
    return {"input_ids": p + c, "labels": [IGNORE] * len(p) + c}


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-padded input_ids, attention_mask and labels, each [B, T]."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _subset(examples: list, limit: int, seed: int) -> list:
    if not limit or limit >= len(examples):
        return list(examples)
    keep = np.sort(np.random.default_rng([seed, 7]).permutation(len(examples))[:limit])
    return [examples[i] for i in keep]


def _check_order(examples: list[dict], order: str) -> None:
    # a label_first model trained on cot_first completions would score garbage at serving time
    for ex in examples:
        c = ex["completion"].strip()
        ok = c.startswith(GRADE_TOKENS) if order == "label_first" else c.endswith(GRADE_TOKENS)
        if not ok:
            raise ValueError(f"completion does not fit order={order!r}: {c[:80]!r}")


def grade_weights(grades: list[int], label_loss_weight: float, balance: float) -> list[float]:
    """Loss weight of each grade token L1..L4: label_loss_weight x (inverse frequency ** balance), mean 1 over
    examples; a grade absent from training keeps weight label_loss_weight."""
    counts = np.bincount(np.asarray(grades, dtype=int) - 1, minlength=4).astype(float)  # [4]
    inv = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** balance, 0.0)
    norm = (inv * counts).sum() / counts.sum() if counts.sum() else 1.0
    return [float(label_loss_weight * (v / norm if v else 1.0)) for v in inv]


def target_weights(labels: torch.Tensor, grade_ids: list[int], weights: list[float]) -> torch.Tensor:
    """[B, T] loss weight per target: 0 on IGNORE, ``weights[g]`` on grade token g, 1 elsewhere."""
    w = (labels != IGNORE).float()  # [B, T]
    for gid, gw in zip(grade_ids, weights):
        if gw != 1.0:
            w = torch.where(labels == gid, w * gw, w)
    return w


def completion_loss(model, batch: dict) -> tuple[torch.Tensor, int]:
    """(summed, weighted cross-entropy over completion tokens, their count) for one right-padded batch."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]  # [B, T] each
    width = ids.shape[1]
    # only positions from the earliest completion start on need logits (saves [B, T, V] memory on long prompts)
    first = int((labels != IGNORE).float().argmax(1).min())
    keep = width - max(first - 1, 0)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits  # [B, keep, V]
    targets = labels[:, width - keep + 1:]  # [B, keep-1]: token t+1 is predicted at position t
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                         reduction="none")  # [B * (keep-1)]
    if "weights" in batch:
        ce = ce * batch["weights"][:, width - keep + 1:].flatten()
    return ce.sum(), int((targets != IGNORE).sum())


# ---------------------------------------------------------------- eval

@torch.no_grad()
def predict_grades(model, tokenizer, prompts: list[str], order: str, batch_size: int = 16,
                   max_new_tokens: int = 160) -> np.ndarray:
    """Predicted grades 1..4: argmax of grade_probs (label_first), or the last grade token greedy decoding
    writes (cot_first; 1 when it writes none)."""
    if order == "label_first":
        return grade_probs(model, tokenizer, prompts, batch_size).argmax(1) + 1
    gids = grade_token_ids(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.ones(len(prompts), dtype=int)
    for start in range(0, len(prompts), batch_size):
        ids, mask, _ = left_pad([encode_prompt(tokenizer, p) for p in prompts[start:start + batch_size]],
                                tokenizer.pad_token_id)  # [B, T]
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)[:, ids.shape[1]:].cpu()  # [B, new]
        for i, row in enumerate(gen.tolist()):
            found = [gids.index(t) + 1 for t in row if t in gids]
            if found:
                out[start + i] = found[-1]
    model.train(was_training)
    return out


def evaluate(model, tokenizer, examples: list[dict], cfg: SFTConfig) -> dict:
    """{"<split>_macro_f1", "<split>_accuracy", "<split>_good_f1"} on the eval examples."""
    prompts = [render_prompt(tokenizer, ex["prompt"], cfg.chat_template) for ex in examples]
    pred = predict_grades(model, tokenizer, prompts, cfg.prompt.order, cfg.eval_batch_size, cfg.eval_max_new_tokens)
    m = classification_metrics([int(ex["grade"]) for ex in examples], pred.tolist())
    return {f"{cfg.eval_split}_{k}": m[k] for k in ("macro_f1", "accuracy", "good_f1")}


def _load_model(cfg: SFTConfig, ckpt: Path | None):
    dtype = DTYPES[cfg.dtype]
    tok_path = cfg.tokenizer or None
    if ckpt is None or cfg.lora is not None:
        model, tok = load_relevance_model(cfg.model, dtype, cfg.lora, tok_path, seed=cfg.seed, tiny=cfg.tiny)
        if ckpt is not None:  # LoRA checkpoints hold the adapters (and grade-token rows) only
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file
            set_peft_model_state_dict(model, load_file(ckpt / "adapter_model.safetensors"))
        return model, tok
    return load_relevance_model(str(ckpt), dtype)


# ---------------------------------------------------------------- training

def train_sft(cfg: SFTConfig, examples_train: list[dict], examples_eval: list[dict] | None = None,
              resume: bool | None = None) -> SFTResult:
    """Fine-tune on examples_train; evaluate on examples_eval; see the module docstring."""
    resume = cfg.resume if resume is None else resume
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("RANK", "0")) == 0:
        save_config(cfg, out / "sft_config.yaml")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))

    world, rank = init_distributed(device)
    ckpt = checkpoints(out)[-1] if resume and checkpoints(out) else None
    model, tok = _load_model(cfg, ckpt)
    model.to(device)
    gids = grade_token_ids(tok)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if cfg.lora is not None:
            model.enable_input_require_grads()  # frozen embeddings would cut the checkpointed graph
    model.train()

    train = _subset(examples_train, cfg.max_train_examples, cfg.seed)
    evals = _subset(examples_eval or [], cfg.max_eval_examples, cfg.seed)
    _check_order(train, cfg.prompt.order)
    gweights = grade_weights([int(ex["grade"]) for ex in train], cfg.label_loss_weight, cfg.balance_grades)
    encoded = [encode_example(tok, render_prompt(tok, ex["prompt"], cfg.chat_template), ex["completion"],
                              cfg.max_length) for ex in train]
    data = [e for e in encoded if e is not None]
    dropped = len(encoded) - len(data)
    if not data:
        raise ValueError(f"no training example fits max_length={cfg.max_length} ({dropped} dropped)")
    if dropped:
        print(f"sft: dropped {dropped} of {len(encoded)} training examples longer than {cfg.max_length} tokens")

    micro_batch = BatchStream(data, cfg.batch_size, cfg.seed,  # micro_batch(m): the m-th micro-batch of the stream
                              [len(e["input_ids"]) for e in data] if cfg.group_by_length else None)
    n_batches = micro_batch.per_epoch
    per_step = cfg.grad_accum * world  # micro-batches per optimizer step, over all ranks
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * n_batches / per_step))
    optimizer, scheduler = build_optimizer(model, cfg, total)

    step = 0
    metrics_path = out / "metrics.jsonl"
    if ckpt is not None:
        step = restore_checkpoint(ckpt, optimizer, scheduler)
        if rank == 0:
            trim_metrics(metrics_path, step)
        if rank == 0:
            print(f"sft: resumed from {ckpt} at step {step}")
    elif metrics_path.exists() and rank == 0:
        metrics_path.unlink()  # a fresh run starts a fresh log

    def log(row: dict) -> None:
        with metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    last_eval: dict = {}
    fwd = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        fwd = DistributedDataParallel(model)
    bar = tqdm(total=total, initial=step, disable=not cfg.progress or rank > 0, desc="sft")
    stop = cfg.stop_at_step if 0 < cfg.stop_at_step < total else total
    while step < stop:
        t0 = time.perf_counter()
        batches = [collate(micro_batch((step * cfg.grad_accum + j) * world + rank), tok.pad_token_id)
                   for j in range(cfg.grad_accum)]
        for b in batches:
            b["weights"] = target_weights(b["labels"], gids, gweights)  # [B, T]
        # normalise by the step's (weighted) completion tokens, so accumulation equals one big batch
        n_target = all_reduce_sum(sum(float(b["weights"][:, 1:].sum()) for b in batches), world, device)
        loss_total, n_tokens = 0.0, 0
        for j, b in enumerate(batches):
            b = {k: v.to(device) for k, v in b.items()}
            # DDP averages gradients over ranks; x world turns that into the global token-normalised sum
            sync = world == 1 or j == len(batches) - 1
            with (contextlib.nullcontext() if sync else fwd.no_sync()):
                loss_sum, _ = completion_loss(fwd, b)
                (loss_sum * world / n_target).backward()
            loss_total += float(loss_sum.detach())
            n_tokens += int(b["attention_mask"].sum())
        loss_total = all_reduce_sum(loss_total, world, device)
        n_tokens = int(all_reduce_sum(n_tokens, world, device))
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss = loss_total / max(n_target, 1)
        tok_s = n_tokens / max(time.perf_counter() - t0, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tok_s:.0f}")
        row = {}
        if step % cfg.log_every == 0 or step == total:
            row = {"step": step, "epoch": round(step * per_step / n_batches, 4), "loss": loss, "lr": lr,
                   "tokens_per_s": tok_s}
        if rank == 0 and evals and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total):
            last_eval = evaluate(model, tok, evals, cfg)
            row = {"step": step, **row, **last_eval}
        if row and rank == 0:
            log(row)
        if rank == 0 and ((cfg.save_every and step % cfg.save_every == 0) or step == stop < total):
            save_checkpoint(out / f"checkpoint-{step}", model, tok, optimizer, scheduler, step, cfg)
        barrier(world)  # ranks wait for rank 0's eval / checkpoint before the next step
    bar.close()
    if step < total:
        return SFTResult(model, tok, step, None, dropped, last_eval)

    final = out / "final"
    # a merged full model loads anywhere with load_relevance_model, LoRA or not
    export = model.merge_and_unload() if cfg.lora is not None else model
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        export.save_pretrained(final)
        tok.save_pretrained(final)
    barrier(world)
    return SFTResult(export, tok, step, final, dropped, last_eval)
