"""The one run loop every trainer runs on, and what it needs: verified checkpoints, exact resume, torchrun.

A trainer (relevance SFT, DPO, GRPO; the retriever stages) builds its model, data and
optimizer, then hands :meth:`RunLoop.fit` a *step*: ``step(step_index) -> metrics``,
which does one optimizer step (forward, backward, ``optimizer_step``) and returns the
all-rank means to log. The loop owns the rest, once:

- seeding (python, numpy, torch), device choice and ``torch.distributed`` set-up under
  torchrun (gloo on CPU, nccl on GPU); :meth:`RunLoop.wrap` puts a model in DDP;
- resume: the newest *valid* ``checkpoint-STEP/`` (see below) gives the weights (loaded by
  the trainer from ``loop.checkpoint``), the optimizer, scheduler and RNG states, the step,
  and each rank's own extra state (``loop.rank_state``: GRPO's samplers, R-GRPO's index);
  metric lines logged after that checkpoint are dropped, so none appears twice; a checkpoint
  saved under another config is refused, naming the fields that differ (resuming it would
  finish another model), except for the fields of :data:`RESUMABLE_CHANGES` and the
  trainer's own ``resume_ignores``;
- the tqdm bar, ``metrics.jsonl`` (rank 0), the eval and save cadence, ``stop_at_step``
  (checkpoint and stop without changing the schedule), and ``final/``;
- ``eval.best_metric`` (:class:`BestWeights`): the trainable weights of the best eval are kept in
  ``best/`` and are what ``final/`` gets, as transformers' ``load_best_model_at_end``.

Checkpoints (checkpoint.py) are verified before use: a damaged one is skipped with a
warning naming the file, and the previous one is used; ``final/`` is written aside and
renamed like them.

Also here: :class:`BatchStream` (the seeded micro-batch stream that makes resume exact)
and :func:`build_optimizer` (AdamW + warmup/decay, shared by every trainer).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from searchrl import faults
from searchrl.checkpoint import (
    latest_valid_checkpoint,
    load_trainer_state,
    save_checkpoint,
    set_rng_state,
    trim_metrics,
    write_aside,
)
from searchrl.config import OptimConfig, RunConfig, save_config
from searchrl.errors import ConfigError, OutputError, UserError, disk_full

# ---------------------------------------------------------------- seeding, device, torchrun

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """The device a process trains on; under torchrun on GPUs each rank takes cuda:LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        name = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


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


def gather_objects(obj, world: int) -> list:
    """Every rank's ``obj``, in rank order (a collective: all ranks must call it)."""
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


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


def total_steps(optim: OptimConfig, batches_per_epoch: int, batches_per_step: int = 1) -> int:
    """optim.max_steps, or the optimizer steps that optim.epochs passes over the data take."""
    return optim.max_steps or max(1, math.ceil(optim.epochs * batches_per_epoch / batches_per_step))


def build_optimizer(model, optim: OptimConfig, total: int, head_lr: float = 0.0):
    """(AdamW, scheduler) over the trainable parameters: no weight decay on biases / norms; warmup, then the
    schedule to step `total`. ``head_lr`` > 0: parameters outside the model's base (``base_model_prefix``: the
    pretrained encoder or decoder), and new ones inside it (named ``cot_*``: adapters that start at zero), learn
    at that rate instead of optim.lr."""
    from transformers import get_scheduler
    base = getattr(model, "base_model_prefix", "") + "."
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    is_head = (lambda n: head_lr > 0 and base != "." and (not n.startswith(base) or  # noqa: E731
                                                          n.rpartition(".")[2].startswith("cot_")))
    groups = []
    for head in (False, True):
        for decays in (True, False):
            params = [p for n, p in named if is_head(n) == head and (p.ndim >= 2) == decays]
            if params or not head:  # (the two base groups always exist: a fixed layout for checkpoints)
                groups.append({"params": params, "weight_decay": optim.weight_decay if decays else 0.0,
                               **({"lr": head_lr} if head else {})})
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.adam_betas))
    scheduler = get_scheduler(optim.schedule, optimizer, num_warmup_steps=math.ceil(optim.warmup_ratio * total),
                              num_training_steps=total)
    return optimizer, scheduler


def optimizer_step(optimizer, scheduler, max_grad_norm: float, where: str = "") -> tuple[float, float]:
    """Clip (0 = measure only), step, schedule, zero the gradients; (gradient norm, lr used).

    A non-finite gradient norm raises FloatingPointError before optimizer.step(): the weights (and so every
    later checkpoint) never see a NaN."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    # with DDP the norm is of the all-reduced gradients, the same on every rank
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf")))
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"non-finite gradient norm ({norm}){' at ' + where if where else ''}; "
                                 "optimizer.step() skipped, weights unchanged")
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, lr


# ---------------------------------------------------------------- the run loop

@dataclass
class FitResult:
    step: int  # optimizer steps done
    final_dir: Path | None  # output_dir/final, or None when stopped early by stop_at_step
    last_eval: dict  # the last eval metrics ({} when there was none)


class BestWeights:
    """The trainable parameters (all of them, or the LoRA adapters, or the blocks above freeze_layers) at the
    eval where ``metric`` was highest, in ``path`` (written aside: never half a file) with ``best.json``
    ({"step", "metric", "value", "eval"}); :meth:`restore` puts them back into the model before final/ is
    written. Kept on disk rather than in memory so a resumed run still knows its best."""

    def __init__(self, path: Path, metric: str, model):
        self.path, self.metric, self.model = path, metric, model
        self.info = self._read()

    def _read(self) -> dict:
        f = self.path / "best.json"
        return json.loads(f.read_text()) if f.exists() else {"step": 0, "value": -math.inf, "eval": {}}

    def update(self, step: int, metrics: dict) -> None:
        if self.metric not in metrics:
            raise ConfigError(f"eval.best_metric {self.metric!r} is not among this eval's metrics "
                              f"({', '.join(sorted(metrics)) or 'none'})")
        value = float(metrics[self.metric])
        if not value > self.info["value"]:  # ties keep the earlier step; NaN never wins
            return
        from safetensors.torch import save_file
        info = {"step": step, "metric": self.metric, "value": value, "eval": metrics}

        def write(tmp: Path) -> None:
            save_file({n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad},
                      str(tmp / "trainable.safetensors"))
            (tmp / "best.json").write_text(json.dumps(info) + "\n")
        write_aside(self.path, [("weights", write)], "the best eval's weights", "the checkpoints are untouched")
        self.info = info

    def restore(self, step: int) -> dict:
        """Load the best weights unless ``step`` (the last) is the best; returns best.json (read from disk, so
        every torchrun rank restores what rank 0 saved)."""
        self.info = self._read()
        if self.info["step"] not in (0, step):
            from safetensors.torch import load_file
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, value in load_file(str(self.path / "trainable.safetensors")).items():
                    params[name].copy_(value)
        return self.info


# config fields a run may change when it resumes: where and how it writes, not what it trains
RESUMABLE_CHANGES = ("run.output_dir", "run.device", "run.log_every", "run.save_every", "run.save_total_limit",
                     "run.stop_at_step", "run.resume", "run.progress", "eval.every", "eval.batch_size",
                     "eval.max_new_tokens", "eval.max_examples")


def config_changes(saved: dict, current: dict, ignore=(), prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two ``dataclasses.asdict`` configs; a field in only
    one of them (a config written before the field existed) and the names in ``ignore`` are not compared."""
    changed = []
    for key in saved.keys() & current.keys():
        name = prefix + key
        if name in ignore:
            continue
        a, b = saved[key], current[key]
        if isinstance(a, dict) and isinstance(b, dict):
            changed += config_changes(a, b, ignore, name + ".")
        elif json.loads(json.dumps(a, default=str)) != json.loads(json.dumps(b, default=str)):
            changed.append(f"{name}: {a!r} -> {b!r}")
    return sorted(changed)


def moved(value, old: str, new: str):
    """``value`` (a config as dicts and lists) with every path under ``old`` rewritten under ``new``: a run
    directory moved or renamed with the files it holds (its data, its tokenizer) is the same run."""
    if isinstance(value, dict):
        return {k: moved(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(moved(v, old, new) for v in value)
    if isinstance(value, str) and old not in ("", ".") and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    return value


class RunLoop:
    """One training run of trainer ``name`` under ``run``; see the module docstring.

    After construction: ``device``, ``world``, ``rank``, ``out``, ``checkpoint`` (the valid checkpoint to
    resume from, or None: load the weights from it) and ``rank_state`` (this rank's extras saved with it)."""

    def __init__(self, name: str, run: RunConfig, config=None, resume_ignores: tuple[str, ...] = ()):
        self.name, self.run = name, run
        self.out = Path(run.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        seed_everything(run.seed)
        self.device = resolve_device(run.device)
        self.world, self.rank = init_distributed(self.device)
        self.config = config
        if config is not None and self.rank == 0:
            save_config(config, self.out / f"{name}_config.yaml")
        self.checkpoint = latest_valid_checkpoint(self.out) if run.resume else None
        self.state = load_trainer_state(self.checkpoint) if self.checkpoint else {}
        if isinstance(self.state.get("config"), dict) and dataclasses.is_dataclass(config):
            saved = self.state["config"]
            old_home = str(Path(saved.get("run", {}).get("output_dir") or run.output_dir).parent)
            changed = config_changes(moved(saved, old_home, str(self.out.parent)), dataclasses.asdict(config),
                                     RESUMABLE_CHANGES + tuple(resume_ignores))
            if changed:
                raise UserError(f"{self.checkpoint} was saved under another config ({'; '.join(changed[:4])}"
                                f"{'; ...' if len(changed) > 4 else ''}): resuming it would finish another model. "
                                "Resume with the config it was saved with, or start fresh: --set run.resume=false "
                                "or another run.output_dir")
        ranks = self.state.get("ranks")
        if ranks is not None and len(ranks) != self.world:
            raise UserError(f"{self.checkpoint}: saved by {len(ranks)} process(es), resumed with {self.world}; "
                            "resume with the same --nproc_per_node")
        self.rank_state = ranks[self.rank] if ranks else {}
        self.metrics_path = self.out / "metrics.jsonl"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, model):
        """The model in DistributedDataParallel under torchrun, else the model itself."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel
        return DistributedDataParallel(model)

    def all_reduce_grads(self, model) -> None:
        """Average gradients over ranks by hand (for a model that runs several forwards per backward, no DDP)."""
        if self.world == 1:
            return
        for p in model.parameters():
            if p.requires_grad:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world

    def sum(self, value: float) -> float:
        return all_reduce_sum(value, self.world, self.device)

    def print(self, msg: str) -> None:
        if self.main:
            print(f"{self.name}: {msg}", flush=True)

    def _log(self, row: dict) -> None:
        try:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            full = disk_full(e)
            if full is None:
                raise
            # a torn last line is dropped on resume (trim_metrics); the checkpoints are not touched
            raise OutputError(f"{self.metrics_path}: writing step {row['step']} failed: {full[0]}") from e

    def fit(self, step: Callable[[int], dict], total: int, optimizer, scheduler, save_weights: Callable[[Path], None],
            *, evaluate: Callable[[], dict] | None = None, eval_every: int = 0,
            save_final: Callable[[Path], None] | None = None, rank_state: Callable[[], dict] | None = None,
            postfix: tuple[str, ...] = ("loss",), best_metric: str = "", model=None) -> FitResult:
        """Run ``step(i)`` for i = start..total-1 (see the module docstring); ``save_final(path)`` writes final/.
        With ``best_metric`` (eval.best_metric) final/ gets ``model``'s weights from the eval where it was highest."""
        run, done, last_eval = self.run, 0, {}
        if self.checkpoint is None and self.main:  # a fresh run: a best/ left here by an earlier run is not ours
            shutil.rmtree(self.out / "best", ignore_errors=True)
        keep_best = best_metric and model is not None and evaluate is not None
        best = BestWeights(self.out / "best", best_metric, model) if keep_best else None
        if self.checkpoint is not None:
            optimizer.load_state_dict(self.state["optimizer"])
            scheduler.load_state_dict(self.state["scheduler"])
            set_rng_state(self.state["rng"])
            done = int(self.state["step"])
            if self.main:
                trim_metrics(self.metrics_path, done)
            self.print(f"resumed from {self.checkpoint} at step {done}")
        elif self.metrics_path.exists() and self.main:
            self.metrics_path.unlink()  # a fresh run starts a fresh log
        stop = run.stop_at_step if 0 < run.stop_at_step < total else total
        bar = tqdm(total=total, initial=done, disable=not run.progress or not self.main, desc=self.name)
        while done < stop:
            metrics = step(done)
            done += 1
            faults.point("step")
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.4g}" for k in postfix if isinstance(metrics.get(k), (int, float))})
            row = {"step": done, **metrics} if done % run.log_every == 0 or done == total else {}
            if self.main and evaluate is not None and ((eval_every and done % eval_every == 0) or done == total):
                last_eval = evaluate()
                row = {"step": done, **row, **last_eval}
                if best is not None:
                    best.update(done, last_eval)
            if row and self.main:
                self._log(row)
            if (run.save_every and done % run.save_every == 0) or done == stop < total:
                extras = gather_objects(rank_state(), self.world) if rank_state else None  # collective
                if self.main:
                    save_checkpoint(self.out / f"checkpoint-{done}", save_weights, optimizer, scheduler, done,
                                    self.config, {"ranks": extras} if extras else None, run.save_total_limit)
            barrier(self.world)  # ranks wait for rank 0's eval / checkpoint before the next step
        bar.close()
        if done < total:
            return FitResult(done, None, last_eval)
        final, steps = self.out / "final", [("the final model", save_final)]
        if best is not None:
            barrier(self.world)  # rank 0's best/ is complete before any rank reads it
            info = best.restore(done)
            last_eval = info["eval"] or last_eval
            steps.append(("best.json", lambda p: (p / "best.json").write_text(json.dumps(info) + "\n")))
            self.print(f"final/ has the weights of step {info['step']} of {done} "
                       f"({best_metric} {info['value']:.4f}, the best eval)")
        if self.main and save_final is not None:  # written aside and renamed, as a checkpoint
            write_aside(final, steps, "the final model", "and the checkpoints are untouched")
        barrier(self.world)
        return FitResult(done, final, last_eval)

