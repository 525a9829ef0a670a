"""Contrastive stages: InfoNCE with masking, SFT learning on tiny data, hard-negative mining, data helpers."""

import dataclasses
import json

import pytest
import torch
from conftest import retriever_config

from searchrl.retrieval.encoder import build_encoder, embed
from searchrl.retrieval.shared import generated_pairs, load_training_data, read_query_file
from searchrl.retrieval.train_sft import info_nce, mine_hard_negatives, train_contrastive


def _cfg(tmp_path, data_dir, **kw):
    base = dict(stage="sft", data_dir=str(data_dir), output_dir=str(tmp_path / "out"), batch_size=4,
                global_negatives=4, max_seq_length=24, lr=1e-4, warmup_ratio=0.0, schedule="constant",
                progress=False)
    base.update(kw)
    return retriever_config(**base)



def test_info_nce_masks_known_positives():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cands = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # column 2 duplicates query 0's positive
    none = torch.zeros(2, 3, dtype=torch.bool)
    masked = none.clone()
    masked[0, 2] = True
    assert info_nce(q, cands, masked, 0.1) < info_nce(q, cands, none, 0.1)
    expected = -torch.log_softmax(torch.tensor([10.0, 0.0]), 0)[0] / 2 - torch.log_softmax(
        torch.tensor([0.0, 10.0, 0.0]), 0)[1] / 2
    torch.testing.assert_close(info_nce(q, cands, masked, 0.1), expected)


def test_training_data_queries_pairs_and_generated(tiny_data, tmp_path):
    (tmp_path / "q.txt").write_text("usb stick\n\nhdmi cable\n")
    (tmp_path / "q.jsonl").write_text('{"query": "tablet"}\n')
    data = load_training_data(_cfg(tmp_path, tiny_data, query_files=[str(tmp_path / "q.txt"),
                                                                       str(tmp_path / "q.jsonl")],
                                   generated_queries=3))
    assert data.queries[-3:] == ["usb stick", "hdmi cable", "tablet"]
    judged = [p for p in data.pairs if len(p[2]) and p[0] in data.queries]
    assert judged and all(p[1] in p[2] for p in data.pairs)
    gen = generated_pairs(data.products, 3, 0)
    assert len(gen) == 3 and all(q == q.lower() and p in g for q, p, g in gen)
    assert all(p in data.pairs for p in gen)
    (tmp_path / "bad.csv").write_text("other\nx\n")
    with pytest.raises(ValueError, match="query"):
        read_query_file(tmp_path / "bad.csv")


@pytest.mark.slow
def test_sft_raises_positive_margin_and_hardneg_mines_non_positives(tiny_data, tmp_path):
    cfg = _cfg(tmp_path, tiny_data, max_steps=4, temperature=0.05)
    data = load_training_data(cfg)
    queries = [q for q, _, _ in data.pairs]

    def margin(model):  # mean cos(query, positive) - mean cos(query, every product)
        q, p = embed(model.eval(), queries), embed(model.eval(), data.texts)
        pos = torch.stack([p[data.row[pid]] for _, pid, _ in data.pairs])
        return float(((q * pos).sum(1) - (q @ p.T).mean(1)).mean())

    before = margin(build_encoder(max_seq_length=24))
    step, final = train_contrastive(cfg)
    after = margin(build_encoder(str(final)))
    print(f"SFT margin {before:.3f} -> {after:.3f}")
    assert step == 4 and after > before
    rows = [json.loads(ln) for ln in (tmp_path / "out/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["candidates"] == 8 for r in rows)

    hn = _cfg(tmp_path / "hn", tiny_data, stage="hardneg", encoder=str(final), hard_negatives=2, mine_skip=0,
              mine_depth=8)
    mined, stats = mine_hard_negatives(build_encoder(str(final)), load_training_data(hn), hn)
    good = {q: g for q, _, g in data.pairs}
    assert all(len(v) == 2 and not set(v) & good[q] for q, v in mined.items())
    assert stats["mining_seconds"] > 0 and stats["mining_queries"] == len(good)
    step, _ = train_contrastive(dataclasses.replace(hn, optim=dataclasses.replace(hn.optim, max_steps=1)))
    assert step == 1 and json.loads((tmp_path / "hn/out/mining.json").read_text())["mined_negatives"] > 0


def test_subset_products_keeps_every_judged_product_and_a_seeded_fill():
    import pandas as pd

    from searchrl.retrieval.shared import subset_products
    products = pd.DataFrame({"product_id": [f"p{i}" for i in range(20)], "title": ["t"] * 20})
    a = subset_products(products, {"p3", "p17"}, limit=6, seed=0)
    assert len(a) == 6 and {"p3", "p17"} <= set(a["product_id"])
    assert a["product_id"].tolist() == subset_products(products, {"p3", "p17"}, 6, 0)["product_id"].tolist()
    assert len(subset_products(products, {"p3"}, limit=0, seed=0)) == 20  # 0 = the whole catalogue
    with pytest.raises(ValueError, match="max_products"):
        subset_products(products, {"p3"}, limit=-5, seed=0)
