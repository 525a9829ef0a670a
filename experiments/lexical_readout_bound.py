"""How far a lexical term in the relevance readout could go, bounded on the CV folds before building it.

    python -m experiments.lexical_readout_bound --data runs/quickstart/data [--k 5] [--json PATH]

A term the scorer could compute from one pair alone is the IDF-weighted share of the query's words found in the
product text (IDF over the catalogue, a fixed table once trained). This fits, on crossval's query folds (fold f
predicted by a fit on the others: crossval.cross_fitted_probs, the stack of experiments/cv_compare.py), a 4-grade
logistic regression over

- ``cos``: MiniLM cosine(query, title + brand) and its within-query z-score (ranks exactly as the cosine);
- ``cos+idfcov``: the same plus the IDF coverage;
- ``cos+idfcov+z``: plus the coverage's within-query z-score;
- ``cos+bm25n``: cosine plus BM25 over the query's best BM25 in the catalogue (not a one-pair term: a reference),

and prints per-query AUC of P(Good), pooled AUC, Good-F1 and macro-F1 of each, with paired query bootstraps
against ``cos``.

Simplifies: the fits see the labels of every other fold, so each row is an upper bound on what a readout over
these inputs learns, not a deployable model. Wall time: about 1 minute on 2 cores (one MiniLM pass over the pairs).
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from experiments.common import table, tables_markdown
from searchrl.data.schema import GOOD_MIN_GRADE, load_dataset, product_text
from searchrl.eval.baselines import lexical_features, minilm_cosine, text_words
from searchrl.eval.crossval import cross_fitted_probs, query_folds, within_query_z
from searchrl.lexical.bm25 import BM25Index
from searchrl.metrics.measures import classification_metrics, good_auc, per_query_auc
from searchrl.metrics.stats import format_difference, paired_bootstrap, paired_metric_bootstrap

FEATURE_SETS = {"cos": ["cos", "z_cos"], "cos+idfcov": ["cos", "z_cos", "idfcov"],
                "cos+idfcov+z": ["cos", "z_cos", "idfcov", "z_idfcov"], "cos+bm25n": ["cos", "z_cos", "bm25n"]}


def idf_coverage(pairs: pd.DataFrame, products: pd.DataFrame) -> np.ndarray:
    """[N] sum of IDF over the query words in the product text / sum of IDF over the query words (the words of
    the baselines' coverage features)."""
    df: dict[str, int] = {}
    for r in products.to_dict("records"):
        for w in text_words(product_text(r)):
            df[w] = df.get(w, 0) + 1
    n = len(products)
    idf = {w: math.log((n + 1) / (c + 1)) + 1 for w, c in df.items()}
    out = np.zeros(len(pairs))
    for i, r in enumerate(pairs.to_dict("records")):
        q, t = text_words(r["text"]), text_words(product_text(r))
        weight = {w: idf.get(w, math.log(n + 1) + 1) for w in q}
        out[i] = sum(weight[w] for w in q & t) / max(sum(weight.values()), 1e-9)
    return out


def measure(ds, k: int) -> tuple[dict, int]:
    """({feature set: its row}, queries)."""
    pairs = pd.concat([ds.split(s).pairs() for s in ("train", "valid", "test")], ignore_index=True)
    qid, y = pairs["query_id"].astype(str).to_numpy(), pairs["grade"].to_numpy()
    folds = query_folds(ds.queries["query_id"], k, seed=0)
    fold = np.array([folds[q] for q in qid])
    cos, cov = minilm_cosine(pairs), idf_coverage(pairs, ds.products)
    feats = {"cos": cos, "z_cos": within_query_z(cos, qid), "idfcov": cov, "z_idfcov": within_query_z(cov, qid),
             "bm25n": lexical_features(pairs, BM25Index(ds.products))[:, 1]}
    queries, good = sorted(set(qid)), y >= GOOD_MIN_GRADE

    def per_query(score):
        d = per_query_auc(y, score, qid)
        return np.array([d.get(q, np.nan) for q in queries])

    def good_f1(pred):
        return lambda rows: f1_score(good[rows], pred[rows] >= GOOD_MIN_GRADE)

    fits = {}
    for name, cols in FEATURE_SETS.items():
        probs = cross_fitted_probs(np.stack([feats[c] for c in cols], 1), y, fold)  # [N, 4]
        fits[name] = probs[:, GOOD_MIN_GRADE - 1:].sum(1), probs.argmax(1) + 1
    base_p, base_pred = fits["cos"]
    rows = {}
    for name, (p, pred) in fits.items():
        auc, cls = good_auc(y, p, qid), classification_metrics(y, pred)
        d_auc = paired_bootstrap(per_query(p), per_query(base_p))
        d_f1 = paired_metric_bootstrap(good_f1(pred), good_f1(base_pred), qid)
        rows[name] = {"per_query_auc": auc["x_good_auc_per_query"], "pooled_auc": auc["x_good_auc"],
                      "good_f1": cls["good_f1"], "macro_f1": cls["macro_f1"],
                      **d_auc.as_dict("auc_vs_cos_"), **d_f1.as_dict("good_f1_vs_cos_")}
    return rows, len(queries)


def markdown(rows: dict, k: int, n_queries: int) -> str:
    def diff(r, prefix):
        return format_difference({"mean": r[f"{prefix}mean"], "lo": r[f"{prefix}lo"], "hi": r[f"{prefix}hi"]})
    return tables_markdown([table(
        [f"inputs ({k} folds, {n_queries} queries)", "per-query AUC", "pooled AUC", "Good-F1", "macro-F1",
         "AUC - cos [95% CI]", "Good-F1 - cos [95% CI]"],
        [[name, f"{r['per_query_auc']:.3f}", f"{r['pooled_auc']:.3f}", f"{r['good_f1']:.3f}", f"{r['macro_f1']:.3f}",
          diff(r, "auc_vs_cos_"), diff(r, "good_f1_vs_cos_")] for name, r in rows.items()])])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a prepared dataset directory (searchrl data prepare)")
    ap.add_argument("--k", type=int, default=5, help="folds (crossval's: query_folds seed 0)")
    ap.add_argument("--json", help="write the table as JSON here")
    args = ap.parse_args(argv)
    rows, n_queries = measure(load_dataset(args.data), args.k)
    print(markdown(rows, args.k, n_queries))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
