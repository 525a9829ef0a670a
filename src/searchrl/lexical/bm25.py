"""The lexical route: BM25 over the catalogue with bm25s (Lucene scoring, English
stop words, Snowball stemming via PyStemmer).

It is the baseline retriever, the source of lexical relevance features, and the
"other way" of multi-way retrieval that the exclusivity reward measures against.
"""

from __future__ import annotations

import bm25s
import numpy as np
import pandas as pd
import Stemmer

from searchrl.data.schema import product_text

_STEMMER = Stemmer.Stemmer("english")


def tokenize(texts: list[str]):
    return bm25s.tokenize(texts, stopwords="en", stemmer=_STEMMER, show_progress=False)


class BM25Index:
    """BM25 over ``product_text`` of every product; ids are the catalogue's product ids."""

    def __init__(self, products: pd.DataFrame, k1: float = 1.2, b: float = 0.75):
        self.product_ids = products["product_id"].astype(str).tolist()
        self._row = {pid: i for i, pid in enumerate(self.product_ids)}
        texts = [product_text(r) for r in products.to_dict("records")]
        self.model = bm25s.BM25(k1=k1, b=b, method="lucene")
        self.model.index(tokenize(texts), show_progress=False)

    def search(self, queries: list[str], k: int = 100) -> list[list[tuple[str, float]]]:
        """Top-k (product_id, score) per query, best first; zero-score items are left out."""
        k = min(k, len(self.product_ids))
        docs, scores = self.model.retrieve(tokenize(queries), k=k, show_progress=False, n_threads=1)
        return [[(self.product_ids[d], float(s)) for d, s in zip(drow, srow) if s > 0]
                for drow, srow in zip(docs, scores)]

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of ``query`` against every product, in catalogue order."""
        tokens = tokenize([query])
        vocab = {i: t for t, i in tokens.vocab.items()}
        return self.model.get_scores([vocab[i] for i in tokens.ids[0]])

    def pair_scores(self, query: str, product_ids: list[str], scores: np.ndarray | None = None) -> np.ndarray:
        """BM25 of ``query`` for the given products (``scores``: the query's precomputed ``scores()``)."""
        s = self.scores(query) if scores is None else scores
        return np.array([s[self._row[p]] for p in product_ids], dtype=np.float64)
