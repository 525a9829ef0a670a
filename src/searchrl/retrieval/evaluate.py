"""``searchrl eval retrieval``: a trained retriever over a whole catalogue.

:class:`Retriever` loads a saved encoder directory (any SentenceTransformer directory: a
retriever stage's ``final/``, or the zero-shot MiniLM), encodes the catalogue (batched, with
a progress bar, cached on disk by (model, corpus) hash) into a FAISS index (flat unless the
training config or the caller says otherwise) and searches it.

:func:`evaluate_retrieval` reports, for one split's queries:
- ``hitrate@K``, ``ndcg@K``, ``mrr@K`` on the human judgments (eval.metrics.retrieval_metrics;
  nDCG@10 is always included);
- ``goodrate@K``: share of the top K that the relevance scorer grades Good (tiered grade >= L3),
  when a relevance model is given, at ``goodrate_k`` (scoring is the expensive part);
- ``bm25_overlap@K``: share of the dense top K that BM25's top K also returns (the paper's
  overlap with the lexical route; a catalogue smaller than K divides by its size);
- ``added_recall@K``: share of a query's Good items that the top K finds and BM25's top K misses
  (metrics.measures.added_recall; averaged over the queries with a Good judgment, as hitrate);
- ``quality@K``: mean product quality of the top K (rewards.product_quality: the quality
  column, else the completeness proxy).
BM25 overlap and quality average over every query of the split, judged or not, that retrieved
anything (BM25 finds nothing for a query none of whose terms is in the catalogue).

``retriever`` is anything with ``search(queries, k) -> [[(id, score)]]`` (:class:`Retriever`,
BM25Index) or ``search_batch(queries, k) -> [[Hit]]`` (retrieval.hybrid.HybridRetriever, whose
module also holds ``searchrl search``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from searchrl.data.schema import Dataset, product_text
from searchrl.lexical.bm25 import BM25Index
from searchrl.metrics.measures import added_recall, bm25_overlap, retrieval_metrics
from searchrl.retrieval.encoder import build_encoder, corpus_index, embed, encoder_tag
from searchrl.retrieval.index import IndexConfig
from searchrl.retrieval.rewards import product_quality


def saved_config(retriever_dir: str | Path) -> dict:
    """The training config saved beside a retriever (empty for a plain SentenceTransformer directory)."""
    path = Path(retriever_dir) / "retriever_config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


class Retriever:
    """A saved encoder plus a FAISS index over ``products``."""

    def __init__(self, retriever_dir: str | Path | None, products, index: IndexConfig | None = None,
                 batch_size: int = 64, progress: bool = True, device: str = "cpu", max_seq_length: int | None = None):
        saved = saved_config(retriever_dir) if retriever_dir else {}
        self.max_seq_length = max_seq_length or int(saved.get("max_seq_length", 128))  # as trained, unless given
        self.model = build_encoder(str(retriever_dir) if retriever_dir else None, "auto", self.max_seq_length, device)
        self.model.eval()
        if index is None and "index" in saved:  # search with the index kind the retriever was trained with
            index = IndexConfig(**saved["index"])
        self.products = products.reset_index(drop=True)
        self.ids = self.products["product_id"].astype(str).tolist()
        texts = [product_text(r) for r in self.products.to_dict("records")]
        tag = f"{encoder_tag(retriever_dir)}|{self.max_seq_length}"
        self.index = corpus_index(self.model, texts, self.ids, index, batch_size, cache_tag=tag, progress=progress)
        self.batch_size = batch_size

    def search(self, queries: list[str], k: int = 10) -> list[list[tuple[str, float]]]:
        qemb = embed(self.model, queries, self.batch_size).cpu().numpy()  # [Q, D]
        return self.index.search(qemb, k)


def goodrate(scorer, queries: list[str], runs: list[list[str]], products_by_id: dict) -> float:
    """Mean over queries of the share of their ranked products graded Good (tiered grade >= 3)."""
    requests = [(q, [products_by_id[p] for p in run]) for q, run in zip(queries, runs) if run]
    if not requests:
        return 0.0
    return float(np.mean([np.mean([r["tier"] >= 3 for r in res]) for res in scorer.score_many(requests)]))


def ranked_ids(retriever, queries: list[str], k: int) -> list[list[str]]:
    """[Q] lists of the top-k product ids, best first, from a Retriever, a BM25Index or a HybridRetriever."""
    if hasattr(retriever, "search_batch"):
        return [[h.product_id for h in hits] for hits in retriever.search_batch(queries, k)]
    return [[p for p, _ in h] for h in retriever.search(queries, k)]


def evaluate_retrieval(retriever: Retriever, ds: Dataset, split: str = "test", ks=(10, 100), scorer=None,
                       goodrate_k: int = 10, bm25: BM25Index | None = None, system: str = "dense") -> dict:
    """One metrics row for ``split`` (see the module docstring)."""
    sub = ds.split(split)
    ks = sorted(set(int(k) for k in ks) | {10})
    kmax = max(ks)
    qids, texts = sub.queries["query_id"].tolist(), sub.queries["text"].tolist()
    runs = ranked_ids(retriever, texts, kmax)
    qrels = {q: dict(zip(g["product_id"].astype(str), g["grade"].astype(int)))
             for q, g in sub.judgments.groupby("query_id")}
    row = {"system": system, **retrieval_metrics(dict(zip(qids, runs)), qrels, ks)}
    # the catalogue the retriever searches (a hybrid's own index)
    bm25 = bm25 or getattr(retriever, "bm25", None) or BM25Index(getattr(retriever, "products", ds.products))
    lexical = [[p for p, _ in h] for h in bm25.search(texts, kmax)]
    quality = product_quality(ds.products)
    found = [r for r in runs if r]  # a query with no result has no overlap or quality
    for k in ks:
        row[f"bm25_overlap@{k}"] = bm25_overlap(dict(zip(qids, runs)), dict(zip(qids, lexical)), k)
        row[f"added_recall@{k}"] = added_recall(dict(zip(qids, runs)), dict(zip(qids, lexical)), qrels, k)
        row[f"quality@{k}"] = float(np.mean([np.mean([quality[p] for p in r[:k]]) for r in found]))
    if scorer is not None:
        by_id = {str(r["product_id"]): r for r in ds.products.to_dict("records")}
        row[f"goodrate@{goodrate_k}"] = goodrate(scorer, texts, [r[:goodrate_k] for r in runs], by_id)
    return row
