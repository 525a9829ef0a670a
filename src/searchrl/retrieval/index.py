"""FAISS indexes over L2-normalised embeddings (inner product = cosine): flat, IVF or HNSW.

- ``flat`` (default): exact search, ``IndexFlatIP``. Right up to a few hundred thousand items.
- ``ivf``: ``IndexIVFFlat`` with ``nlist`` k-means lists, ``nprobe`` searched per query.
  ``nlist`` is capped at N / 39 so that k-means has the points per centroid FAISS asks for.
- ``hnsw``: ``IndexHNSWFlat`` graph (``hnsw_m`` links per node, ``ef_search`` at query time).

Simplifies: one index in memory on one device; no sharding, no product quantisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from searchrl.errors import ConfigError

INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass
class IndexConfig:
    kind: str = "flat"  # flat (exact) | ivf (inverted lists, approximate) | hnsw (graph, approximate)
    nlist: int = 256  # ivf: number of k-means lists (capped at N / 39)
    nprobe: int = 16  # ivf: lists searched per query (more = slower, closer to exact)
    hnsw_m: int = 32  # hnsw: neighbours per node
    ef_construction: int = 80  # hnsw: candidate list size while building
    ef_search: int = 64  # hnsw: candidate list size at query time (>= k for good recall)

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ConfigError(f"index kind must be one of {INDEX_KINDS}, got {self.kind!r}")


class FaissIndex:
    """Inner-product search over normalised embeddings; ``config`` picks flat (default), IVF or HNSW."""

    def __init__(self, embeddings: np.ndarray, ids: list[str], config: IndexConfig | None = None):
        if len(embeddings) != len(ids):
            raise ValueError(f"{len(embeddings)} embeddings for {len(ids)} ids")
        self.config = config or IndexConfig()
        self.ids = list(ids)
        emb = np.ascontiguousarray(embeddings, dtype=np.float32)  # [N, D]
        d = emb.shape[1]
        if self.config.kind == "flat":
            self.index = faiss.IndexFlatIP(d)
        elif self.config.kind == "ivf":
            nlist = max(1, min(self.config.nlist, len(emb) // 39))
            self._quantizer = faiss.IndexFlatIP(d)  # kept referenced: the IVF index does not own it
            self.index = faiss.IndexIVFFlat(self._quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.train(emb)
            self.index.nprobe = min(self.config.nprobe, nlist)
        else:
            self.index = faiss.IndexHNSWFlat(d, self.config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = self.config.ef_construction
            self.index.hnsw.efSearch = self.config.ef_search
        self.index.add(emb)

    def search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], rows [Q, k]); rows are positions in ``ids``, -1 where fewer than k were found."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(self.ids)))

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """Top-k (id, score) per query, best first."""
        scores, rows = self.search_rows(queries, k)
        return [[(self.ids[r], float(s)) for r, s in zip(rrow, srow) if r >= 0] for rrow, srow in zip(rows, scores)]
