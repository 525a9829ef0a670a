"""Retrieval-GRPO: the loss mapping onto the shared GRPO core, learning tests, exact resume."""

import numpy as np
import pytest
import torch
from conftest import retriever_config

from searchrl.data.schema import load_dataset, write_dataset
from searchrl.retrieval.config import RetrieverConfig
from searchrl.retrieval.encoder import build_encoder, embed
from searchrl.retrieval.rewards import RewardConfig
from searchrl.retrieval.rgrpo import rgrpo_loss, train_rgrpo
from searchrl.retrieval.shared import load_training_data


def _cfg(tmp_path, data_dir, **kw) -> RetrieverConfig:
    base = dict(stage="rgrpo", data_dir=str(data_dir), output_dir=str(tmp_path / "rgrpo"), group_size=4,
                batch_size=6, rebuild_every=1, max_seq_length=24, lr=1e-4, warmup_ratio=0.0,
                schedule="constant", beta=0.0, progress=False, seed=0)
    base.update(kw)
    return retriever_config(**base)


def _top_k(model_dir, data, k: int) -> list[list[str]]:
    """Each training query's top-k product ids under the encoder in model_dir (exact search)."""
    model = build_encoder(str(model_dir) if model_dir else None, max_seq_length=24).eval()
    q = embed(model, data.queries)  # [Q, D]
    p = embed(model, data.texts)  # [N, D]
    order = torch.argsort(q @ p.T, dim=1, descending=True)[:, :k]  # [Q, k]
    return [[data.ids[i] for i in row] for row in order.tolist()]


def test_loss_raises_high_reward_items_and_matches_policy_gradient():
    torch.manual_seed(0)
    cfg = RetrieverConfig(stage="rgrpo", group_size=4, beta=0.0)
    sims = torch.randn(2, 4, requires_grad=True)  # [B, K]
    logp = torch.log_softmax(sims / 0.05, dim=-1)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    loss, stats = rgrpo_loss(logp, logp.detach(), rewards, cfg)
    loss.backward()
    # gradient descent raises the similarity of above-average items, lowers the others
    assert sims.grad[0, 0] < 0 and (sims.grad[0, 1:] > 0).all()
    assert (sims.grad[1, 2:] < 0).all() and (sims.grad[1, :2] > 0).all()
    # on-policy: loss = -mean(A * logp) in value of gradient; all-equal rewards carry no signal
    flat = torch.zeros(1, 4, requires_grad=True)
    loss0, _ = rgrpo_loss(torch.log_softmax(flat, -1), torch.log_softmax(flat, -1).detach(), torch.ones(1, 4), cfg)
    loss0.backward()
    assert torch.allclose(flat.grad, torch.zeros(1, 4))
    assert stats["clip_region"] == 0.0 and stats["kl"] == 0.0


@pytest.mark.slow
def test_designed_reward_shifts_top_k_towards_a_brand(tiny_data, tmp_path):
    """Reward 1 for HP products (quality column), nothing else: HP's share of the top K rises."""
    ds = load_dataset(tiny_data)
    ds.products["quality"] = (ds.products["brand"] == "HP").astype(float)
    write_dataset(ds, tmp_path / "ds")
    cfg = _cfg(tmp_path, tmp_path / "ds", max_steps=4, lr=5e-5,
               reward=RewardConfig(w_rel=0.0, w_q=1.0, w_x=0.0))
    data = load_training_data(cfg)
    hp = set(ds.products.loc[ds.products["brand"] == "HP", "product_id"].astype(str))  # 2 of the 8 products
    share = lambda tops, k: float(np.mean([np.mean([p in hp for p in t[:k]]) for t in tops]))  # noqa: E731
    before = _top_k(None, data, 4)
    step, final = train_rgrpo(cfg)
    after = _top_k(final, data, 4)
    print(f"HP share of top-2 {share(before, 2):.3f} -> {share(after, 2):.3f}, "
          f"top-4 {share(before, 4):.3f} -> {share(after, 4):.3f}")
    assert step == 4
    assert share(after, 2) >= share(before, 2) + 0.2
    assert share(after, 4) > share(before, 4)


@pytest.mark.slow
def test_exclusivity_weight_lowers_bm25_overlap(tiny_data, tmp_path):
    """Same seed and base reward (a random per-product quality column, w_q = 0.2); w_x = 1 vs 0: the top K
    overlaps less with BM25's top K. (The relevance-scorer reward path is tested in test_retrieval_rewards.py;
    it is left out here because scoring with it costs more than the whole training.)"""
    from searchrl.retrieval.evaluate import Retriever, evaluate_retrieval
    ds = load_dataset(tiny_data)
    ds.products["quality"] = np.random.default_rng(0).uniform(size=len(ds.products))
    write_dataset(ds, tmp_path / "ds")
    overlap = {}
    for w_x in (0.0, 1.0):
        reward = RewardConfig(w_rel=0.0, w_q=0.2, w_x=w_x, bm25_k=4)
        _, final = train_rgrpo(_cfg(tmp_path / f"x{w_x}", tmp_path / "ds", max_steps=4, lr=5e-5, reward=reward))
        row = evaluate_retrieval(Retriever(final, ds.products, progress=False), ds, "train", ks=(2, 4))
        overlap[w_x] = (row["bm25_overlap@2"], row["bm25_overlap@4"])
    print(f"BM25 overlap@2, @4 on train queries: w_x=0 {overlap[0.0]}, w_x=1 {overlap[1.0]}")
    assert overlap[1.0][0] <= overlap[0.0][0] - 0.2
    assert overlap[1.0][1] < overlap[0.0][1]


@pytest.mark.slow
def test_resume_is_exact_including_the_lagging_index(tiny_data, tmp_path):
    """3 steps straight == 2 steps, checkpoint, resume, 1 step (the index built at step 0 is restored)."""
    reward = RewardConfig(w_rel=0.0, w_q=0.0, w_x=1.0, exclusivity="overlap")
    kw = dict(max_steps=3, batch_size=2, group_size=3, rebuild_every=3, reward=reward)
    _, straight = train_rgrpo(_cfg(tmp_path / "a", tiny_data, **kw))
    step, final = train_rgrpo(_cfg(tmp_path / "b", tiny_data, stop_at_step=2, **kw))
    assert step == 2 and final is None and (tmp_path / "b/rgrpo/checkpoint-2/trainer_state.pt").exists()
    step, resumed = train_rgrpo(_cfg(tmp_path / "b", tiny_data, resume=True, **kw))
    assert step == 3
    a, b = build_encoder(str(straight)), build_encoder(str(resumed))
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, msg=name)
    lines = (tmp_path / "b/rgrpo/metrics.jsonl").read_text().splitlines()
    assert [int(__import__("json").loads(ln)["step"]) for ln in lines] == [1, 2, 3]


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_with_the_double_batch(tiny_data, tmp_path):
    """2 ranks x 2 queries == 1 process x 4 queries: each rank takes its micro-batch, gradients are averaged, and
    the loss is a mean over items, so the update is that of the concatenated batch (label-free extra queries
    from a query file make the stream long enough for two steps inside one epoch)."""
    import json
    import os
    import subprocess
    import sys
    qfile = tmp_path / "queries.txt"
    qfile.write_text("\n".join(f"laptop bag {i}" for i in range(8)) + "\n")
    common = ["stage=rgrpo", f"data_dir={tiny_data}", f"query_files=[{qfile}]", "group_size=3", "optim.max_steps=2",
              "max_seq_length=24", "optim.lr=1e-4", "optim.warmup_ratio=0", "optim.schedule=constant", "beta=0.02",
              "rebuild_every=1", "run.progress=false", "reward.w_rel=0", "reward.w_q=0.5", "reward.w_x=1",
              "reward.exclusivity=overlap"]

    def run(launcher, extra):
        sets = [x for kv in common + extra for x in ("--set", kv)]
        proc = subprocess.run(launcher + ["-m", "searchrl.cli", "train", "retriever"] + sets, capture_output=True,
                              text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]

    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        [f"run.output_dir={tmp_path / 'ddp'}", "batch_size=2"])
    run([sys.executable], [f"run.output_dir={tmp_path / 'one'}", "batch_size=4"])
    a, b = build_encoder(str(tmp_path / "ddp" / "final")), build_encoder(str(tmp_path / "one" / "final"))
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4, msg=name)
    la, lb = ([json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
              for d in ("ddp", "one"))
    assert len(la) == len(lb) == 2 and np.allclose(la, lb, atol=1e-5)
