"""Retrieval-GRPO: the encoder as a policy over the catalogue, trained on a multi-objective reward.

Per step and query q (no labels needed):

1. Group: q's top-K products under the *current* encoder, either from the FAISS index over the
   whole catalogue (``candidates: index``; the catalogue is re-encoded every ``rebuild_every``
   steps, so the index lags the policy by at most that many steps) or from a random pool of
   ``candidate_pool`` products encoded afresh each step (``candidates: batch``, the paper's
   top-K from a large batch).
2. Policy: s_i = cos(q, item_i), i = 1..K, recomputed with gradients through the shared tower;
   pi(i) = softmax(s / tau)_i over the group.
3. Reward r_i (rewards.py): w_rel * relevance + w_q * quality + w_x * exclusivity.
4. Maths, from the shared RL core (rl/grpo_loss.py) with this mapping: every item of a group is
   one row ("sample") whose single "token" is the item, log-prob log pi(i) (rows = B*K items,
   T = 1); ``group_advantages`` over each query's K rewards; ``clipped_surrogate`` with
   old_logp = None (one update per batch, so the ratio is 1 and only its gradient acts) and the
   k3 KL to the frozen reference encoder's log pi_ref(i) over the same group; ``aggregate``
   ("dapo": mean over the B*K items). The gradient is -1/(BK) sum_i A_i grad log pi(i): items
   with above-average reward are pulled towards the query, the rest pushed away, which changes
   which products enter the top K at the next index rebuild.

The policy runs without dropout (eval mode with gradients), so pi is a deterministic function of
the weights and the KL measures the weights' drift, not dropout noise. The reference is the
starting encoder (``encoder``: the SFT encoder).

Simplifies: one optimisation step per sampled batch (no PPO epochs, hence no clipping in effect);
the group is the deterministic top-K (no sampling from pi); every rank encodes the whole catalogue.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from searchrl.errors import ConfigError, InputError
from searchrl.retrieval.config import RetrieverConfig
from searchrl.retrieval.encoder import build_encoder, corpus_embeddings, embed
from searchrl.retrieval.index import FaissIndex
from searchrl.retrieval.rewards import RetrievalReward
from searchrl.retrieval.shared import encoder_saver, load_training_data, start_encoder, update_encoder
from searchrl.rl.grpo_loss import aggregate, clipped_surrogate, group_advantages
from searchrl.training import BatchStream, RunLoop, build_optimizer, total_steps


def group_logps(model, queries: list[str], item_texts: list[list[str]], tau: float, grad: bool) -> torch.Tensor:
    """[B, K] log pi(i | q) = log_softmax(cos(q, item) / tau) over each query's K items."""
    k = len(item_texts[0])
    flat = [t for items in item_texts for t in items]
    q = embed(model, queries, batch_size=len(queries), grad=grad)  # [B, D]: own pass, padded to query length
    items = embed(model, flat, batch_size=len(flat), grad=grad).reshape(len(queries), k, -1)  # [B, K, D]
    sims = torch.einsum("bd,bkd->bk", q, items)  # [B, K]
    return torch.log_softmax(sims / tau, dim=-1)


def rgrpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, rewards: torch.Tensor, cfg: RetrieverConfig):
    """(loss, stats) for [B, K] policy / reference log pi and [B, K] rewards, via the shared GRPO core."""
    b, k = logp.shape
    adv = group_advantages(rewards.reshape(-1), k, scale=cfg.adv_scale,
                           clamp=cfg.adv_clamp or None)  # [B*K]
    mask = torch.ones(b * k, 1, device=logp.device)  # [B*K, 1]: every item is one active "token"
    per_tok, stats = clipped_surrogate(logp.reshape(-1, 1), None, adv, mask, cfg.eps_low, cfg.eps_high,
                                       ref_logp=ref_logp.reshape(-1, 1), beta=cfg.beta)  # [B*K, 1]
    return aggregate(per_tok, mask, "dapo"), {k_: float(v) for k_, v in stats.items()}


class CandidateSource:
    """Top-K product rows per query from the current encoder: FAISS index or a random pool."""

    def __init__(self, cfg: RetrieverConfig, data, state: dict, start_tag: str | None = None):
        self.cfg, self.data, self.start_tag = cfg, data, start_tag  # start_tag: cache identity of the start
        self.emb = state.get("corpus_emb")  # [N, D] as of index_step (saved in checkpoints: exact resume)
        self.index_step = state.get("index_step", -1)
        self.index = FaissIndex(self.emb, data.ids, cfg.index) if self.emb is not None else None
        self.times = {}  # seconds of the last top_k call: encode (queries, catalogue or pool) and retrieve

    def top_k(self, model, queries: list[str], step: int, rng: np.random.Generator) -> np.ndarray:
        cfg, k = self.cfg, self.cfg.group_size
        model.eval()
        t0 = time.perf_counter()
        qemb = embed(model, queries, cfg.encode_batch_size).cpu().numpy()  # [B, D]
        if cfg.candidates == "batch":
            pool = rng.choice(len(self.data.ids), min(cfg.candidate_pool, len(self.data.ids)), replace=False)
            pemb = embed(model, [self.data.texts[i] for i in pool], cfg.encode_batch_size).cpu().numpy()  # [P, D]
            t1 = time.perf_counter()
            rows = pool[np.argsort(-(qemb @ pemb.T), axis=1, kind="stable")[:, :k]]  # [B, K]
            self.times = {"encode_seconds": t1 - t0, "retrieve_seconds": time.perf_counter() - t1}
            return rows
        if self.index is None or step - self.index_step >= cfg.rebuild_every:
            tag = self.start_tag if step == 0 else None  # at step 0 the policy is still the start encoder
            self.emb = corpus_embeddings(model, self.data.texts, cfg.encode_batch_size, tag, progress=False)
            self.index, self.index_step = FaissIndex(self.emb, self.data.ids, cfg.index), step
        t1 = time.perf_counter()  # encode = queries + any catalogue re-encode (and index build)
        _, rows = self.index.search_rows(qemb, k)  # [B, K]
        self.times = {"encode_seconds": t1 - t0, "retrieve_seconds": time.perf_counter() - t1}
        if (rows < 0).any():  # an approximate index found fewer than K: a silent -1 would pick the last product
            raise ConfigError(f"the {cfg.index.kind} index returned fewer than {k} products; raise index.nprobe / "
                             "index.ef_search or use index.kind=flat")
        return rows

    def state(self) -> dict:
        return {"corpus_emb": self.emb, "index_step": self.index_step}


def train_rgrpo(cfg: RetrieverConfig, reward: RetrievalReward | None = None):
    """Run stage rgrpo; returns (steps done, final dir or None). ``reward``: a ready reward (tests, custom)."""
    if cfg.stage != "rgrpo":
        raise ConfigError(f"train_rgrpo runs stage rgrpo, not {cfg.stage!r}")
    data = load_training_data(cfg)
    if not data.queries:
        raise InputError(f"{cfg.data_dir}: no training queries in split {cfg.train_split!r} or query_files")
    if len(data.ids) < cfg.group_size:
        raise ConfigError(f"group_size {cfg.group_size} exceeds the {len(data.ids)} products")
    loop = RunLoop(f"retriever {cfg.stage}", cfg.run, cfg)
    model, start_tag = start_encoder(cfg, loop)
    if reward is None:
        judge = None
        if cfg.reward.w_rel:
            from searchrl.data.schema import load_dataset
            from searchrl.retrieval.judges import build_judge
            scorer = None
            if cfg.reward.needs_model:
                from searchrl.relevance.scoring.scorer import RelevanceScorer
                scorer = RelevanceScorer.load(cfg.reward.relevance_model, device=str(loop.device),
                                              batch_size=cfg.reward.scorer_batch_size)
            judge = build_judge(cfg.reward.judge, load_dataset(cfg.data_dir), scorer, cfg.reward.relevance,
                                cfg.reward.oracle_fallback, seed=cfg.run.seed)
        reward = RetrievalReward(cfg.reward, data.products, judge=judge)
    cache_path = loop.out / "relevance_cache.jsonl"
    reward.load_cache(cache_path)
    ref = build_encoder(cfg.encoder, cfg.pooling, cfg.max_seq_length).to(loop.device).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    source = CandidateSource(cfg, data, loop.rank_state, start_tag)
    stream = BatchStream(data.queries, cfg.batch_size, cfg.run.seed)
    total = total_steps(cfg.optim, stream.per_epoch, loop.world)
    optimizer, scheduler = build_optimizer(model, cfg.optim, total)
    model.train(False)  # no dropout in the policy: see the module docstring

    def step(i: int) -> dict:
        t0 = time.perf_counter()
        queries = stream(i * loop.world + loop.rank)  # [B]
        rng = np.random.default_rng([cfg.run.seed, i, loop.rank])
        with torch.no_grad():
            rows = source.top_k(model, queries, i, rng)  # [B, K]
        model.eval()
        pids = [[data.ids[r] for r in row] for row in rows]
        t_reward = time.perf_counter()
        rewards, parts = reward(queries, pids)
        t_reward = time.perf_counter() - t_reward
        texts = [[data.texts[r] for r in row] for row in rows]
        logp = group_logps(model, queries, texts, cfg.policy_temperature, grad=True)  # [B, K]
        with torch.no_grad():
            ref_logp = group_logps(ref, queries, texts, cfg.policy_temperature, grad=False)  # [B, K]
        r = torch.tensor(np.stack(rewards), dtype=torch.float32, device=logp.device)  # [B, K]
        loss, stats = rgrpo_loss(logp, ref_logp, r, cfg)
        # timing split (benchmarks/bench_retriever.py): the update is the step's seconds minus these
        return {**update_encoder(loop, model, loss, optimizer, scheduler, cfg, False, i, t0), **parts, **stats,
                **source.times, "reward_seconds": t_reward, "reward_std": float(r.std(dim=1).mean()),
                "index_age": i - source.index_step if cfg.candidates == "index" else 0}

    save = encoder_saver(model, cfg)

    def save_weights(path):  # the relevance cache is written beside each checkpoint and the final model
        save(path)
        if cfg.reward.w_rel:
            reward.save_cache(cache_path)

    result = loop.fit(step, total, optimizer, scheduler, save_weights, save_final=save_weights,
                      rank_state=source.state)
    return result.step, result.final_dir
