"""What every trainer needs besides its loss: checkpoints, exact resume, torchrun.

- :func:`save_checkpoint` / :func:`checkpoints`: ``checkpoint-STEP/`` holds the model
  in Hugging Face format (``save_pretrained``: safetensors; adapters only under LoRA),
  the tokenizer and ``trainer_state.pt`` (optimizer, scheduler, step, data position,
  RNG states, config), written aside and renamed so a crash never leaves half of one.
- :func:`trim_metrics`: drops metric lines logged after the checkpoint being resumed.
- :func:`init_distributed` / :func:`all_reduce_sum` / :func:`barrier`: the few
  collective operations a data-parallel loop under torchrun needs (gloo on CPU).
- :class:`BatchStream` / :func:`build_optimizer`: the seeded micro-batch stream that
  makes resume exact, and AdamW + warmup/decay schedule, shared by every trainer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

# ---------------------------------------------------------------- checkpoints

def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_checkpoint(path: Path, model, tokenizer, optimizer, scheduler, step: int, cfg,
                    extra: dict | None = None) -> Path:
    """HF-format weights (safetensors; adapters only under LoRA) + tokenizer + trainer_state.pt.

    With ``cfg.save_total_limit`` > 0, older checkpoints beyond that many are removed afterwards.

    ``extra`` adds trainer-specific entries to trainer_state.pt (GRPO: its sampling generators' states).
    """
    tmp = path.with_name(path.name + ".tmp")  # written aside, then renamed: a crash never leaves half a checkpoint
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "micro_batch": step * getattr(cfg, "grad_accum", 1),  # position in the (seed, epoch)-ordered data
                "rng": rng_state(), "config": dataclasses.asdict(cfg), **(extra or {})}, tmp / "trainer_state.pt")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    keep = getattr(cfg, "save_total_limit", 0)
    if keep:  # only the newest `keep` complete checkpoints stay; the one just written is among them
        for old in checkpoints(path.parent)[:-keep]:
            shutil.rmtree(old)
    return path


def restore_checkpoint(path: Path, optimizer, scheduler) -> int:
    """Load optimizer, scheduler and RNG states from path/trainer_state.pt (the weights are the caller's); the step."""
    state = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in output_dir, oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if (p / "trainer_state.pt").exists()
             and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def trim_metrics(path: Path, step: int) -> None:
    # lines written after the checkpoint we resume from would otherwise appear twice
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


# ---------------------------------------------------------------- torchrun

def init_distributed(device: torch.device) -> tuple[int, int]:
    """(world size, rank) from torchrun's environment; initialises the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, int(os.environ.get("RANK", "0"))


def all_reduce_sum(value: float, world: int, device) -> float:
    if world == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item())


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------- data order and optimizer

def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The example order of one epoch: a function of (seed, epoch) only, so a resumed run replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class BatchStream:
    """Micro-batch m of the endless stream of epochs, each in epoch_order(seed, epoch): a step number alone
    says where the stream stands, which is what makes resume exact.

    With ``lengths`` (one per item), batches group items of similar length, as transformers' group_by_length:
    the epoch order is cut into windows of ``window`` batches, each window sorted by length and cut into
    batches, and the batches are shuffled (seeded by (seed, epoch)). Padding shrinks (on Chorus SFT from 1.40x
    the real tokens to 1.02x) while every batch still mixes examples from across the epoch."""

    def __init__(self, data: list, batch_size: int, seed: int, lengths: list[int] | None = None, window: int = 50):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.lengths, self.window = (np.asarray(lengths) if lengths is not None else None), window
        self.per_epoch = math.ceil(len(data) / batch_size)  # micro-batches per epoch (the last may be short)
        self._order: tuple[int, list[np.ndarray]] | None = None  # (epoch, its batches): one epoch cached

    def _batches(self, epoch: int) -> list[np.ndarray]:
        order, b = epoch_order(self.seed, epoch, len(self.data)), self.batch_size
        if self.lengths is None:
            return [order[i:i + b] for i in range(0, len(order), b)]
        span = b * self.window  # a multiple of b: only the epoch's last batch can be short
        batches = []
        for s in range(0, len(order), span):
            win = order[s:s + span]
            win = win[np.argsort(-self.lengths[win], kind="stable")]
            batches += [win[i:i + b] for i in range(0, len(win), b)]
        perm = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
        return [batches[i] for i in perm]

    def __call__(self, m: int) -> list:
        epoch, i = divmod(m, self.per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, self._batches(epoch))
        return [self.data[j] for j in self._order[1][i]]


def build_optimizer(model, cfg, total: int):
    """(AdamW, scheduler) over the trainable parameters: no weight decay on biases / norms; warmup, then decay
    to 0 at step `total`. cfg needs lr, weight_decay, adam_betas, schedule, warmup_ratio (SFTConfig, DPOConfig)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                                  betas=tuple(cfg.adam_betas))
    from transformers import get_scheduler
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=math.ceil(cfg.warmup_ratio * total),
                              num_training_steps=total)
    return optimizer, scheduler
