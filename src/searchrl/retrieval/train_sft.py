"""Contrastive training of the retriever: ``stage: sft`` (InfoNCE with in-batch and global random
negatives) and ``stage: hardneg`` (the same loop plus offline-mined hard negatives: the pipeline
Retrieval-GRPO replaces).

Per step, a batch of B (query, positive) pairs; the candidates are the B positives (each the
others' in-batch negative), G products drawn at random from the whole catalogue ("global"
negatives, shared by the batch) and, for hardneg, H mined negatives per pair. Loss: cross-entropy
of cos(q, c) / temperature over the candidates, target = the query's own positive. A candidate
that is a known Good product of the query (other than its target) is masked out, so a shared
positive is never pushed away.

Mining (hardneg): the starting encoder (normally the SFT encoder) encodes the catalogue into the
FAISS index; per training query its top ``mine_depth`` hits, minus the query's Good products,
minus the first ``mine_skip`` of what is left (near-duplicates of the positive are often
unlabelled positives), give the H negatives. Its wall time (encoding + search) is measured,
printed and written to ``output_dir/mining.json`` and the metrics.

Simplifies: one positive per row (a query with several Good products appears in several rows);
the whole catalogue is encoded per mining run (no cache across encoders).
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from searchrl.errors import ConfigError, InputError
from searchrl.retrieval.config import RetrieverConfig
from searchrl.retrieval.encoder import corpus_index, embed
from searchrl.retrieval.shared import encoder_saver, load_training_data, start_encoder, update_encoder
from searchrl.training import BatchStream, RunLoop, build_optimizer, total_steps


def info_nce(q: torch.Tensor, cands: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean InfoNCE: q [B, D] against cands [M, D]; row i's target is column i; mask [B, M] True = excluded."""
    logits = (q @ cands.T) / temperature  # [B, M]
    logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def mine_hard_negatives(model, data, cfg: RetrieverConfig, cache_tag: str | None = None) -> tuple[dict, dict]:
    """query -> up to cfg.hard_negatives mined product ids, and timing stats (see the module docstring).

    The catalogue is always encoded here (refresh: the mining time is a measured cost); with ``cache_tag`` the
    embeddings are also left in the cache for whoever encodes the same model next (R-GRPO, evaluation)."""
    t0 = time.perf_counter()
    index = corpus_index(model, data.texts, data.ids, cfg.index, cfg.encode_batch_size, cache_tag=cache_tag,
                         progress=cfg.run.progress, refresh=True)
    t_enc = time.perf_counter() - t0
    good = {}
    for q, _, g in data.pairs:
        good[q] = good.get(q, frozenset()) | g
    queries = list(good)
    model.eval()
    qemb = embed(model, queries, cfg.encode_batch_size).cpu().numpy()  # [Q, D]
    _, rows = index.search_rows(qemb, cfg.mine_depth)  # [Q, depth]
    mined = {}
    for q, row in zip(queries, rows):
        cands = [data.ids[r] for r in row if r >= 0 and data.ids[r] not in good[q]]
        mined[q] = cands[cfg.mine_skip:cfg.mine_skip + cfg.hard_negatives]
    stats = {"mining_seconds": time.perf_counter() - t0, "mining_encode_seconds": t_enc,
             "mining_queries": len(queries), "mining_products": len(data.ids),
             "mined_negatives": sum(len(v) for v in mined.values())}
    return mined, stats


def train_contrastive(cfg: RetrieverConfig):
    """Run stage sft or hardneg; returns (steps done, final dir or None when stopped early)."""
    if cfg.stage not in ("sft", "hardneg"):
        raise ConfigError(f"train_contrastive runs stage sft or hardneg, not {cfg.stage!r}")
    data = load_training_data(cfg)
    if not data.pairs:
        raise InputError(f"{cfg.data_dir}: no Good (L3/L4) judgment in split {cfg.train_split!r} and "
                        "generated_queries = 0: nothing to train on")
    loop = RunLoop(f"retriever {cfg.stage}", cfg.run, cfg)
    model, start_tag = start_encoder(cfg, loop)
    mined, mining = {}, {}
    if cfg.stage == "hardneg":
        # mining is offline and part of the baseline's cost: always redone (also on resume) and timed
        mined, mining = mine_hard_negatives(model, data, cfg, start_tag)
        loop.print(f"mined {mining['mined_negatives']} negatives for {mining['mining_queries']} queries "
                   f"over {mining['mining_products']} products in {mining['mining_seconds']:.1f}s")
        if loop.main:
            (loop.out / "mining.json").write_text(json.dumps(mining, indent=2) + "\n")
    stream = BatchStream(data.pairs, cfg.batch_size, cfg.run.seed)
    n_global = min(cfg.global_negatives, len(data.ids))
    total = total_steps(cfg.optim, stream.per_epoch, loop.world)
    optimizer, scheduler = build_optimizer(model, cfg.optim, total)
    model.train()

    def step(i: int) -> dict:
        t0 = time.perf_counter()
        batch = stream(i * loop.world + loop.rank)  # [(query, pid, good set)] * B
        rng = np.random.default_rng([cfg.run.seed, i, loop.rank])  # negatives: a function of the step (resume)
        glob = [data.ids[j] for j in rng.choice(len(data.ids), n_global, replace=False)]
        hard = [p for q, _, _ in batch for p in mined.get(q, [])]
        cand_ids = [p for _, p, _ in batch] + glob + hard  # M = B + G + sum(H)
        # queries and products in two passes of the shared tower: short queries are not padded to product length
        q = embed(model, [q for q, _, _ in batch], batch_size=len(batch), grad=True)  # [B, D]
        cand_texts = [data.texts[data.row[p]] for p in cand_ids]
        cands = embed(model, cand_texts, batch_size=len(cand_texts), grad=True)  # [M, D]
        mask = torch.tensor([[j != k and p in g for j, p in enumerate(cand_ids)] for k, (_, _, g) in enumerate(batch)],
                            device=q.device)  # [B, M]: the query's other Good products are not negatives
        loss = info_nce(q, cands, mask, cfg.temperature)
        with torch.no_grad():
            logits = (q @ cands.T).masked_fill(mask, float("-inf"))  # [B, M]
            acc = float((logits.argmax(1) == torch.arange(len(q), device=q.device)).float().mean())
        return {**update_encoder(loop, model, loss, optimizer, scheduler, cfg, True, i, t0), "accuracy": acc,
                "candidates": len(cand_ids), **(mining if i == 0 else {})}

    save = encoder_saver(model, cfg)
    result = loop.fit(step, total, optimizer, scheduler, save, save_final=save)
    return result.step, result.final_dir
