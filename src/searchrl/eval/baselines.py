"""``searchrl baseline relevance|retrieval``: the cheap systems every learned model must beat.

Relevance (grade a judged pair):
- ``majority``: the most frequent train grade for every pair.
- ``bm25-thresholds``: BM25(query, product) divided by the query's best BM25 score in
  the whole catalogue (so one set of cut-offs fits every query), cut into four grades
  by three thresholds fitted on train for macro-F1 (exhaustive over a quantile grid).
- ``lexical-logreg``: a class-balanced logistic regression on a handful of lexical
  features (BM25, normalised BM25, query-term coverage of title and text, brand hit).
- ``minilm-cosine``: zero-shot all-MiniLM-L6-v2 cosine(query, title + brand); a score, not a
  grade, so its row has only the AUCs of P(Good) ranking (over all pairs and within queries).

:func:`relevance_baseline_predictions` gives each system's per-pair grades and scores, so
that intervals and paired comparisons against a model can be computed on the same pairs.

Retrieval (rank the whole catalogue): BM25, and zero-shot all-MiniLM-L6-v2 with a
FAISS flat index.
"""

from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from searchrl.data.schema import GRADES, Dataset, product_text
from searchrl.errors import InputError
from searchrl.lexical.bm25 import BM25Index
from searchrl.metrics.measures import classification_metrics, good_auc, retrieval_metrics
from searchrl.retrieval.encoder import build_encoder, encode, encoder_tag
from searchrl.retrieval.index import FaissIndex

_WORD = re.compile(r"\w+")


def text_words(text: str) -> set[str]:
    # crude plural folding so "speakers" matches "speaker" in coverage features
    return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in _WORD.findall(str(text).lower())}


def lexical_features(pairs: pd.DataFrame, bm25: BM25Index) -> np.ndarray:
    """[N, 6] features for judged pairs (columns text, product_id, title, brand, ...)."""
    feats = np.zeros((len(pairs), 6))
    for query, idx in pairs.groupby("text").indices.items():
        all_scores = bm25.scores(query)
        best = max(float(all_scores.max()), 1e-9)
        sub = pairs.iloc[idx]
        s = bm25.pair_scores(query, sub["product_id"].astype(str).tolist(), all_scores)
        q = text_words(query)
        for row_i, (i, r) in enumerate(zip(idx, sub.to_dict("records"))):
            title, text = text_words(r["title"]), text_words(product_text(r))
            brand = str(r.get("brand") or "").lower()
            feats[i] = [s[row_i], s[row_i] / best, len(q & title) / max(len(q), 1), len(q & text) / max(len(q), 1),
                        float(bool(brand) and brand in query.lower()), np.log1p(len(title))]
    return feats


def _fast_macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    # Used only inside the threshold search (thousands of calls); reported numbers use sklearn.
    f1s = []
    for g in GRADES:
        tp = np.sum((p == g) & (y == g))
        denom = np.sum(p == g) + np.sum(y == g)
        f1s.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(f1s))


def fit_thresholds(x: np.ndarray, y: np.ndarray, grid: int = 30) -> tuple[float, float, float]:
    """Three cut-offs on ``x`` maximising train macro-F1; grade = 1 + #(cut-offs <= x)."""
    cands = np.unique(np.quantile(x, np.linspace(0.02, 0.98, grid)))
    best, best_t = -1.0, (np.inf, np.inf, np.inf)
    for t in itertools.combinations_with_replacement(cands, 3):
        f = _fast_macro_f1(y, apply_thresholds(x, t))
        if f > best:
            best, best_t = f, t
    return tuple(float(v) for v in best_t)


def apply_thresholds(x: np.ndarray, t) -> np.ndarray:
    return 1 + (x[:, None] >= np.asarray(t)[None, :]).sum(1)


def minilm_cosine(pairs: pd.DataFrame, encoder: str | None = None, batch_size: int = 64) -> np.ndarray:
    """[N] cosine(query, title + brand) under the zero-shot encoder (all-MiniLM-L6-v2 by default)."""
    model = build_encoder(encoder, max_seq_length=None)
    items = [" ".join(str(v) for v in (r.get("title"), r.get("brand")) if isinstance(v, str) and v)
             for r in pairs.to_dict("records")]
    q = encode(model, pairs["text"].astype(str).tolist(), batch_size=batch_size, progress=False)
    p = encode(model, items, batch_size=batch_size, cache_tag=encoder_tag(encoder), progress=False)
    return (q * p).sum(1)


def relevance_baseline_predictions(ds: Dataset, split: str = "test", bm25: BM25Index | None = None,
                                   minilm: bool = True) -> dict[str, dict]:
    """Fit on train, predict ``split``: {system: {"pred": [N] grades or None, "score": [N] Good score or None}}
    in the order of ``ds.split(split).pairs()``."""
    bm25 = bm25 or BM25Index(ds.products)
    train, test = ds.split("train").pairs(), ds.split(split).pairs()
    if train.empty or test.empty:
        raise InputError(f"the baselines are fit on train and scored on {split}: "
                         f"{'train' if train.empty else split} has no judged pairs")
    y_tr = train["grade"].to_numpy()
    f_tr, f_te = lexical_features(train, bm25), lexical_features(test, bm25)
    out = {"majority": {"pred": np.full(len(test), int(pd.Series(y_tr).mode().iloc[0])), "score": None}}
    t = fit_thresholds(f_tr[:, 1], y_tr)
    out["bm25-thresholds"] = {"pred": apply_thresholds(f_te[:, 1], t), "score": f_te[:, 1]}
    clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    clf.fit(f_tr, y_tr)
    proba = clf.predict_proba(f_te)  # [N, classes seen in train]
    good = [i for i, c in enumerate(clf.classes_) if c >= 3]
    out["lexical-logreg"] = {"pred": clf.predict(f_te), "score": proba[:, good].sum(1) if good else None}
    if minilm:
        out["minilm-cosine"] = {"pred": None, "score": minilm_cosine(test)}
    return out


def relevance_baselines(ds: Dataset, split: str = "test", bm25: BM25Index | None = None,
                        minilm: bool = True) -> list[dict]:
    """Fit on train, report on ``split``: one metrics row per system."""
    test = ds.split(split).pairs()
    y, qids = test["grade"].to_numpy(), test["query_id"].tolist()
    rows = []
    for system, p in relevance_baseline_predictions(ds, split, bm25, minilm).items():
        row = {"system": system, **(classification_metrics(y, p["pred"]) if p["pred"] is not None else {})}
        if p["score"] is not None:  # how the system's own score ranks Good pairs
            row.update(good_auc(y, p["score"], qids))
        rows.append(row)
    return rows


def retrieval_baselines(ds: Dataset, split: str = "test", ks=(10, 100), encoder: str | None = None,
                        batch_size: int = 64, progress: bool = True, bm25: BM25Index | None = None) -> list[dict]:
    """BM25 and zero-shot dense retrieval over the whole catalogue for ``split``'s queries."""
    sub = ds.split(split)
    qrels = {q: dict(zip(g["product_id"].astype(str), g["grade"].astype(int)))
             for q, g in sub.judgments.groupby("query_id")}
    qids, texts = sub.queries["query_id"].tolist(), sub.queries["text"].tolist()
    kmax = max(ks)
    rows = []
    bm25 = bm25 or BM25Index(ds.products)
    run = {q: [p for p, _ in hits] for q, hits in zip(qids, bm25.search(texts, k=kmax))}
    rows.append({"system": "bm25", **retrieval_metrics(run, qrels, ks)})
    model = build_encoder(encoder, max_seq_length=None)  # the model's own length, as sentence-transformers loads it
    corpus = [product_text(r) for r in ds.products.to_dict("records")]
    emb = encode(model, corpus, batch_size=batch_size, cache_tag=encoder_tag(encoder), progress=progress)
    index = FaissIndex(emb, ds.products["product_id"].astype(str).tolist())
    hits = index.search(encode(model, texts, batch_size=batch_size, progress=False), kmax)
    run = {q: [p for p, _ in h] for q, h in zip(qids, hits)}
    rows.append({"system": "minilm-zero-shot", **retrieval_metrics(run, qrels, ks)})
    return rows
