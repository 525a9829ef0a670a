"""What the three retriever stages share: training data, the starting encoder, and the update.

Data (:func:`load_training_data`):
- the catalogue, optionally a seeded subset (``max_products``) that keeps every judged product;
- training queries: the split's queries plus any ``query_files`` (R-GRPO needs no labels);
- positive pairs for the contrastive stages: (query, product) with a Good (L3/L4) train
  judgment, plus optional pseudo-queries generated from product fields: "brand category"
  when both are set, else the title's first four words, with that product as the positive.

Model (:func:`start_encoder`): the stage's start encoder, or the SentenceTransformer of the
checkpoint being resumed; and the cache identity of the start encoder's catalogue embeddings,
so that mining, R-GRPO's first index and the evaluation share one encoding pass.

Update (:func:`update_encoder`): the tail of every stage's step -- backward, gradients averaged
over ranks by an all-reduce (no DDP wrapper: the shared tower runs several forwards per step),
clipping, the optimizer step, the loss averaged over ranks. The run loop (training.RunLoop)
owns the rest: checkpoints (the SentenceTransformer + retriever_config.yaml, so
``Retriever(checkpoint)`` encodes as trained) and exact resume, logging, ``final/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from searchrl.config import save_config
from searchrl.data.readers import read_rows
from searchrl.data.schema import GOOD_MIN_GRADE, DataError, ErrorPolicy, load_dataset, product_text
from searchrl.errors import ConfigError
from searchrl.retrieval.config import RetrieverConfig
from searchrl.retrieval.encoder import build_encoder, encoder_tag, save_encoder
from searchrl.training import RunLoop, optimizer_step

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
            raise DataError(path, where, "query", "missing (expected a 'query' or 'text' column)")
        out.append(q.strip())
    return out


def subset_products(products: pd.DataFrame, judged: set[str], limit: int, seed: int) -> pd.DataFrame:
    """All products, or ``limit`` of them: every judged one plus a seeded random fill."""
    if limit < 0:
        raise ConfigError(f"max_products must be >= 0 (0 = the whole catalogue), got {limit}")
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
        raise ConfigError("data_dir is not set (--set data_dir=DIR, a directory made by `searchrl data prepare`)")
    ds = load_dataset(cfg.data_dir)
    products = subset_products(ds.products, set(ds.judgments["product_id"].astype(str)), cfg.max_products, cfg.run.seed)
    sub = ds.split(cfg.train_split)
    queries = list(dict.fromkeys(sub.queries["text"].tolist() + [q for f in cfg.query_files
                                                                   for q in read_query_file(f)]))
    pairs_df = sub.pairs()
    kept = set(products["product_id"].astype(str))
    good = pairs_df[(pairs_df["grade"] >= GOOD_MIN_GRADE) & pairs_df["product_id"].astype(str).isin(kept)]
    good_sets = {q: frozenset(g["product_id"].astype(str)) for q, g in good.groupby("text")}
    pairs = [(q, str(p), good_sets[q]) for q, p in zip(good["text"], good["product_id"])]
    pairs += generated_pairs(products, cfg.generated_queries, cfg.run.seed)
    ids = products["product_id"].astype(str).tolist()
    texts = [product_text(r) for r in products.to_dict("records")]
    return SimpleNamespace(products=products, ids=ids, texts=texts, row={p: i for i, p in enumerate(ids)},
                           queries=queries, pairs=pairs)


# ---------------------------------------------------------------- model and update

def start_encoder(cfg: RetrieverConfig, loop: RunLoop):
    """(the encoder to train, the start encoder's catalogue cache identity or None when resuming)."""
    if loop.checkpoint is not None:  # a checkpoint is a saved SentenceTransformer: its own modules say the pooling
        return build_encoder(str(loop.checkpoint), "auto", cfg.max_seq_length).to(loop.device), None
    model = build_encoder(cfg.encoder, cfg.pooling, cfg.max_seq_length).to(loop.device)
    # the starting encoder's catalogue embeddings equal those of Retriever(encoder): one cache identity lets
    # mining, R-GRPO's first index and the evaluation of the start share one encoding pass
    tag = f"{encoder_tag(cfg.encoder)}|{cfg.max_seq_length}" + (f"|{cfg.pooling}" if cfg.pooling != "auto" else "")
    return model, tag


def encoder_saver(model, cfg: RetrieverConfig):
    """save_weights for the run loop: the SentenceTransformer, and the config beside it (encode as trained)."""
    def save(path: Path) -> None:
        save_encoder(model, path)
        save_config(cfg, path / "retriever_config.yaml")
    return save


def update_encoder(loop: RunLoop, model, loss: torch.Tensor, optimizer, scheduler, cfg: RetrieverConfig,
                   dropout: bool, step: int, t0: float) -> dict:
    """Backward, all-reduce, clip and step (module docstring); {loss (all ranks' mean), lr, grad_norm, seconds}."""
    loss.backward()
    loop.all_reduce_grads(model)
    grad_norm, lr = optimizer_step(optimizer, scheduler, cfg.optim.max_grad_norm, f"retriever step {step + 1}")
    model.train(dropout)  # the step may have switched to eval to encode the catalogue
    return {"loss": loop.sum(float(loss.detach())) / loop.world, "lr": lr, "grad_norm": grad_norm,
            "seconds": time.perf_counter() - t0}
