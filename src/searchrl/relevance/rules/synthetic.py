"""Rule-teacher pairs on queries written from the catalogue: more SFT data than the human judgments.

Chorus has 81 train queries. A small model fine-tuned on them memorises "these
queries want these products" instead of learning to match a query against a
listing, and grades unseen queries near the majority grade. The catalogue has
~19k unlabeled products, and the rule knowledge base names their product types,
brands, lines and features, so we write queries the way shoppers do from those
names ("laptop", "garmin", "hp laptop", "wireless mouse", "iphone") and let the
rule teacher grade BM25 candidates for them: teacher distillation on unlabeled
(query, item) pairs, with the rule engine as the teacher.

What keeps this honest: queries whose normalised text equals a query of an
excluded split (valid, test by default) are never written, and products judged
for those splits are never candidates, so evaluation queries and their listings
stay unseen. The labels are the rule engine's (its own quality is measured by
``searchrl teacher agreement``); the human train judgments stay in the mix and
win where they exist.

Simplifies: one query per seed product, written from a few templates; candidates
are BM25's top hits plus random products, with no attempt to match the human
data's grade distribution beyond that mix.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from searchrl.data.schema import Dataset
from searchrl.errors import ConfigError, InputError
from searchrl.relevance.rules.rule_text import norm

TEMPLATES = ("type", "brand_type", "feature_type", "brand", "line")
TEMPLATE_WEIGHTS = (0.35, 0.25, 0.2, 0.1, 0.1)  # product-type queries dominate real e-commerce logs (and Chorus)


@lru_cache(maxsize=4)  # read once per engine: every drafted query needs them
def _names(engine) -> tuple[dict, dict, dict]:
    """type id -> its names, feature id -> its names, brand id -> its names (first = canonical)."""
    types = {t["id"]: [str(n) for n in t.get("names", [])] for t in engine.kb.get("types", [])}
    feats = {f["id"]: [str(n) for n in f.get("names", [])] for f in engine.kb.get("features", [])}
    # a brand's first two names are how people type it ("hp", "hewlett packard"); later ones are legal forms ("hp inc")
    brands = {b: [str(n) for n in ns][:2] for b, ns in engine.kb.get("brands", {}).items()}
    return types, feats, brands


def _draft_query(engine, item: dict, rng: np.random.Generator) -> str | None:
    """One query from one template, built from the item's type, brand, title features and lines."""
    types, feats, brands = _names(engine)
    type_names = types.get(item.get("type"), [])
    type_names = [n for n in type_names if len(n.split()) <= 2] or type_names  # "business notebook pc" is no query
    brand_names = brands.get(item.get("brand") or "", [])
    if not brand_names and item.get("brand_n") and len(item["brand_n"].split()) <= 2:
        brand_names = [item["brand_n"]]
    feature_names = [n for f in sorted(item.get("title_features", ())) for n in feats.get(f, [])[:2]
                     if len(n.split()) <= 2]
    lines = sorted(item.get("lines", ()))
    usable = {"type": bool(type_names), "brand_type": bool(type_names and brand_names),
              "feature_type": bool(type_names and feature_names), "brand": bool(brand_names), "line": bool(lines)}
    options = [t for t in TEMPLATES if usable[t]]
    if not options:
        return None
    w = np.array([TEMPLATE_WEIGHTS[TEMPLATES.index(t)] for t in options])
    template = options[int(rng.choice(len(options), p=w / w.sum()))]
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    if template == "type":
        return pick(type_names)
    if template == "brand_type":
        return f"{pick(brand_names)} {pick(type_names)}"
    if template == "feature_type":
        name, feature = pick(type_names), pick(feature_names)
        return name if feature in name else f"{feature} {name}"  # not "bluetooth bluetooth speaker"
    if template == "brand":
        return pick(brand_names)
    return pick(lines)


def write_query(engine, product: dict, rng: np.random.Generator, attempts: int = 5) -> str | None:
    """A shopper-style query that the rules say this product answers (L3 or L4); None when none is found.

    A type's names include narrower ones ("portable speaker" for a speaker) that the
    product may not satisfy, so a draft is kept only when the product itself passes.
    """
    item = engine._read_item(product)
    for _ in range(attempts):
        query = _draft_query(engine, item, rng)
        if query is None:
            return None
        if engine.judge(query, product).grade >= 3:
            return query
    return None


def synthetic_pairs(ds: Dataset, engine, n_queries: int, per_query: int = 8, random_share: float = 0.25,
                    seed: int = 0, exclude_splits: tuple[str, ...] = ("valid", "test"), bm25=None,
                    progress: bool = True) -> pd.DataFrame:
    """Rule-graded pairs, columns as Dataset.pairs() (query_id "syn-N", text, product fields, grade).

    n_queries distinct queries, each with per_query candidates: BM25's best hits for
    the query and a random_share of random products, all from the catalogue minus
    the products judged for exclude_splits. The query's seed product is always a candidate.
    """
    if n_queries <= 0:
        return ds.pairs().iloc[:0].assign(split="train")
    if per_query < 1 or not 0 <= random_share <= 1:
        raise ConfigError(f"synthetic: per_query must be >= 1 and random_share in [0, 1], got {per_query}, "
                         f"{random_share}")
    from searchrl.lexical.bm25 import BM25Index

    rng = np.random.default_rng([seed, 11])
    held_q = ds.queries[ds.queries["split"].isin(exclude_splits)]
    held_texts = {norm(t) for t in held_q["text"]}
    held_products = set(ds.judgments.loc[ds.judgments["query_id"].isin(held_q["query_id"]), "product_id"].astype(str))
    products = ds.products[~ds.products["product_id"].astype(str).isin(held_products)].reset_index(drop=True)
    if products.empty:
        raise InputError("synthetic: no catalogue products left after removing the held-out splits' products")
    bm25 = bm25 or BM25Index(products)
    records = products.to_dict("records")
    row_of = {str(r["product_id"]): i for i, r in enumerate(records)}
    n_random = int(round(per_query * random_share))
    seen, rows = set(), []
    bar = tqdm(total=n_queries, desc="synthetic queries", disable=not progress)
    for idx in rng.permutation(len(records)):
        if len(seen) >= n_queries:
            break
        seed_product = records[int(idx)]
        query = write_query(engine, seed_product, rng)
        key = norm(query) if query else ""
        if not key or key in seen or key in held_texts:
            continue
        seen.add(key)
        hits = [pid for pid, _ in bm25.search([query], k=4 * per_query)[0] if pid in row_of]
        chosen = [str(seed_product["product_id"])]
        chosen += [pid for pid in hits if pid not in chosen][:per_query - n_random - 1]
        while len(chosen) < per_query and len(chosen) < len(records):
            pid = str(records[int(rng.integers(len(records)))]["product_id"])
            if pid not in chosen:
                chosen.append(pid)
        qid = f"syn-{len(seen):05d}"
        for pid in chosen:
            product = records[row_of[pid]]
            rows.append({**product, "query_id": qid, "text": query, "split": "train",
                         "grade": int(engine.judge(query, product).grade)})
        bar.update(1)
    bar.close()
    return pd.DataFrame(rows)


def synthetic_dataset(ds: Dataset, engine, n_queries: int, per_query: int = 8, seed: int = 0,
                      split: str = "test", exclude_splits: tuple[str, ...] = ("valid", "test")) -> Dataset:
    """The synthetic pairs as a dataset of their own (all queries in `split`, grades from the rules), so that
    ``searchrl eval relevance`` measures how well a model learned the rule teacher on queries it never saw.
    exclude_splits as in synthetic_pairs (every split: no query text or candidate of the human data)."""
    pairs = synthetic_pairs(ds, engine, n_queries, per_query, seed=seed, exclude_splits=exclude_splits,
                            progress=False)
    if pairs.empty:
        raise InputError("synthetic: no queries could be written from this catalogue")
    queries = pairs[["query_id", "text"]].drop_duplicates("query_id").assign(split=split).reset_index(drop=True)
    judgments = pairs[["query_id", "product_id", "grade"]].assign(label=pairs["grade"] - 1, raters=0,
                                                                 agreement=float("nan"))
    card = {"name": f"{ds.card.get('name', 'dataset')}-synthetic", "source": "searchrl.relevance.rules.synthetic",
            "seed": seed, "queries": int(len(queries)), "per_query": per_query, "labels": "rule engine grades"}
    return Dataset(ds.products, queries, judgments.reset_index(drop=True), card)
