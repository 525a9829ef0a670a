"""What the three retriever stages share: training data, and one optimisation loop.

Data (:func:`load_training_data`):
- the catalogue, optionally a seeded subset (``max_products``) that keeps every judged product;
- training queries: the split's queries plus any ``query_files`` (R-GRPO needs no labels);
- positive pairs for the contrastive stages: (query, product) with a Good (L3/L4) train
  judgment, plus optional pseudo-queries generated from product fields: "brand category"
  when both are set, else the title's first four words, with that product as the positive.

Loop (:class:`Loop`): written out like relevance/sft.py: AdamW + warmup/decay
(``build_optimizer``), gradient-norm clipping, a tqdm bar, JSON lines in
``output_dir/metrics.jsonl``, ``checkpoint-STEP/`` (the SentenceTransformer + trainer_state.pt
through searchrl.training) and exact resume: data and negatives are functions of (seed, step),
and stage-specific state (R-GRPO's corpus embeddings) rides along in trainer_state.pt.
Under torchrun each rank takes micro-batches r, r + W, ... and the gradients are averaged by
an all-reduce (no DDP wrapper: the shared tower runs once per step on one concatenated batch
anyway). Rank 0 logs and saves; ``final/`` is a SentenceTransformer directory with the
config beside it (``retriever_config.yaml``).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import save_config
from ..data.schema import GOOD_MIN_GRADE, ErrorPolicy, load_dataset, product_text
from ..data.tables import read_rows
from ..training import build_optimizer
from ..training import (all_reduce_sum, barrier, checkpoints, init_distributed, restore_checkpoint, save_checkpoint,
                        trim_metrics)
from .config import RetrieverConfig
from .encoder import build_encoder, encoder_tag, save_encoder


# ---------------------------------------------------------------- data

def read_query_file(path: str | Path) -> list[str]:
    """Queries from .txt (one per line) or a table with a ``query`` or ``text`` column."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    out = []
    for where, row in read_rows(path, ErrorPolicy("raise")):
        q = row.get("query", row.get("text"))
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{path}:{where}: query: missing (expected a 'query' or 'text' column)")
        out.append(q.strip())
    return out


def subset_products(products: pd.DataFrame, judged: set[str], limit: int, seed: int) -> pd.DataFrame:
    """All products, or ``limit`` of them: every judged one plus a seeded random fill."""
    if limit < 0:
        raise ValueError(f"max_products must be >= 0 (0 = the whole catalogue), got {limit}")
    if not limit or limit >= len(products):
        return products.reset_index(drop=True)
    ids = products["product_id"].astype(str)
    keep = ids.isin(judged).to_numpy().copy()  # (pandas may hand out a read-only view)
    rest = np.flatnonzero(~keep)
    fill = max(0, limit - int(keep.sum()))
    keep[np.random.default_rng([seed, 11]).permutation(rest)[:fill]] = True
    return products[keep].reset_index(drop=True)


def generated_pairs(products: pd.DataFrame, n: int, seed: int) -> list[tuple[str, str, frozenset]]:
    """Up to n (pseudo-query, product id, {product id}) pairs from product fields (module docstring)."""
    rows = products.to_dict("records")
    out = []
    for i in np.random.default_rng([seed, 13]).permutation(len(rows))[:n]:
        r = rows[i]
        brand, cat = str(r.get("brand") or "").strip(), str(r.get("category") or "").strip()
        q = f"{brand} {cat}" if brand and cat else " ".join(str(r.get("title") or "").split()[:4])
        if q.strip():
            out.append((q.lower(), str(r["product_id"]), frozenset([str(r["product_id"])])))
    return out


def load_training_data(cfg: RetrieverConfig) -> SimpleNamespace:
    """products (DataFrame), texts / ids (catalogue order), queries (list), pairs (query, pid, Good set)."""
    if not cfg.data_dir:
        raise ValueError("data_dir is not set (--set data_dir=DIR, a directory made by `searchrl data prepare`)")
    ds = load_dataset(cfg.data_dir)
    products = subset_products(ds.products, set(ds.judgments["product_id"].astype(str)), cfg.max_products, cfg.seed)
    sub = ds.split(cfg.train_split)
    queries = list(dict.fromkeys(sub.queries["text"].tolist() + [q for f in cfg.query_files
                                                                   for q in read_query_file(f)]))
    pairs_df = sub.pairs()
    kept = set(products["product_id"].astype(str))
    good = pairs_df[(pairs_df["grade"] >= GOOD_MIN_GRADE) & pairs_df["product_id"].astype(str).isin(kept)]
    good_sets = {q: frozenset(g["product_id"].astype(str)) for q, g in good.groupby("text")}
    pairs = [(q, str(p), good_sets[q]) for q, p in zip(good["text"], good["product_id"])]
    pairs += generated_pairs(products, cfg.generated_queries, cfg.seed)
    ids = products["product_id"].astype(str).tolist()
    texts = [product_text(r) for r in products.to_dict("records")]
    return SimpleNamespace(products=products, ids=ids, texts=texts, row={p: i for i, p in enumerate(ids)},
                           queries=queries, pairs=pairs)


# ---------------------------------------------------------------- loop

class _Saver:
    """Adapts a SentenceTransformer to save_checkpoint's (model, tokenizer) pair: ST.save writes both."""

    def __init__(self, model):
        self.model = model

    def save_pretrained(self, path) -> None:
        save_encoder(self.model, path)


_NO_TOKENIZER = SimpleNamespace(save_pretrained=lambda path: None)  # already written by _Saver


def _all_reduce_grads(model, world: int) -> None:
    if world == 1:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


class Loop:
    """One run of a retriever stage: model (fresh or from the newest checkpoint), optimizer, logging, saving."""

    def __init__(self, cfg: RetrieverConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        dev = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(dev)
        self.world, self.rank = init_distributed(self.device)
        if self.rank == 0:
            save_config(cfg, self.out / "retriever_config.yaml")
        found = checkpoints(self.out) if cfg.resume else []
        self.ckpt = found[-1] if found else None
        # a checkpoint is a saved SentenceTransformer: its own modules say the pooling
        self.model = (build_encoder(str(self.ckpt), "auto", cfg.max_seq_length) if self.ckpt else
                      build_encoder(cfg.encoder, cfg.pooling, cfg.max_seq_length)).to(self.device)
        self.state = (torch.load(self.ckpt / "trainer_state.pt", map_location="cpu", weights_only=False)
                      if self.ckpt else {})  # stage extras (e.g. R-GRPO's index) are read from here
        self.metrics_path = self.out / "metrics.jsonl"
        # the starting encoder's catalogue embeddings are the same as those of Retriever(encoder): one cache
        # identity lets mining, R-GRPO's first index and the evaluation of the start share one encoding pass
        self.start_tag = None if self.ckpt else (f"{encoder_tag(cfg.encoder)}|{cfg.max_seq_length}"
                                                 + (f"|{cfg.pooling}" if cfg.pooling != "auto" else ""))

    def log(self, row: dict) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def run(self, n_items: int, step_fn, dropout: bool = True, extra_state=None, on_save=None) -> tuple[int, Path | None]:
        """Optimise ``step_fn(step) -> (loss, metrics)`` for the configured steps; (steps done, final dir or None).

        n_items: training items (pairs or queries), for the epoch-based step count. extra_state(): dict saved in
        trainer_state.pt with each checkpoint. on_save(): called on rank 0 after each checkpoint and at the end.
        """
        cfg = self.cfg
        per_epoch = max(1, -(-n_items // cfg.batch_size))
        total = cfg.max_steps or max(1, int(np.ceil(cfg.epochs * per_epoch / self.world)))
        optimizer, scheduler = build_optimizer(self.model, cfg, total)
        step = 0
        if self.ckpt is not None:
            step = restore_checkpoint(self.ckpt, optimizer, scheduler)
            if self.rank == 0:
                trim_metrics(self.metrics_path, step)
                print(f"retriever {cfg.stage}: resumed from {self.ckpt} at step {step}")
        elif self.metrics_path.exists() and self.rank == 0:
            self.metrics_path.unlink()  # a fresh run starts a fresh log
        self.model.train(dropout)
        params = [p for p in self.model.parameters() if p.requires_grad]
        bar = tqdm(total=total, initial=step, disable=not cfg.progress or self.rank > 0, desc=f"retriever {cfg.stage}")
        stop = cfg.stop_at_step if 0 < cfg.stop_at_step < total else total
        while step < stop:
            t0 = time.perf_counter()
            loss, row = step_fn(step)
            loss.backward()
            _all_reduce_grads(self.model, self.world)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0
                                                             else float("inf")))
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            self.model.train(dropout)  # step_fn may have switched to eval to encode the catalogue
            step += 1
            loss_value = all_reduce_sum(float(loss.detach()), self.world, self.device) / self.world  # all ranks' mean
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if self.rank == 0 and (step % cfg.log_every == 0 or step == total):
                self.log({"step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                          "seconds": time.perf_counter() - t0, **row})
            # (no checkpoint at the last step: final/ follows at once)
            if self.rank == 0 and ((cfg.save_every and step % cfg.save_every == 0 and step < total) or step == stop < total):
                ckpt = self.out / f"checkpoint-{step}"
                save_checkpoint(ckpt, _Saver(self.model), _NO_TOKENIZER, optimizer, scheduler, step, cfg,
                                extra=extra_state() if extra_state else None)
                save_config(cfg, ckpt / "retriever_config.yaml")  # so Retriever(ckpt) encodes as trained
                if on_save:
                    on_save()
            barrier(self.world)
        bar.close()
        if step < total:
            return step, None
        final = self.out / "final"
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            save_encoder(self.model, final)
            save_config(cfg, final / "retriever_config.yaml")
            if on_save:
                on_save()
        barrier(self.world)
        return step, final
