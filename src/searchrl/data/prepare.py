"""``searchrl data prepare|import|stats``: from upstream files to a canonical dataset directory.

Flow: fetch (registry, sha256-verified) -> load (sources) -> query-level split ->
write the three Parquet tables and ``dataset.json``. The split is a seeded
permutation of the sorted query ids, so it is the same on every machine and no
query is ever in two splits.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from searchrl.data import registry
from searchrl.data.schema import GRADE_NAMES, GRADES, SPLITS, Dataset, ErrorPolicy, write_dataset
from searchrl.data.sources import CHORUS_LABELS, ESCI_LABELS, WANDS_LABELS, load_chorus, load_esci, load_wands
from searchrl.data.tables import TableBuilder
from searchrl.errors import ConfigError, InputError

DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)  # train / valid / test, by query


def assign_splits(query_ids, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> dict[str, str]:
    """Map each query id to train/valid/test. Deterministic in (ids, seed, fractions)."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = sorted(set(map(str, query_ids)))
    order = np.random.default_rng(seed).permutation(len(ids))
    n_test = int(round(fractions[2] * len(ids)))
    n_valid = int(round(fractions[1] * len(ids)))
    out = {}
    for rank, idx in enumerate(order):
        out[ids[idx]] = "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
    return out


def build_dataset(builder: TableBuilder, policy: ErrorPolicy, *, name: str, label_map: dict, seed: int,
                  fractions, provenance: dict) -> Dataset:
    products, queries, judgments = builder.finish()
    if judgments.empty:
        raise InputError(f"{name}: no judgments left after loading (skipped: {policy.skipped})")
    # Queries without any judgment carry no signal for any stage; keep only judged ones, and say so.
    judged = set(judgments["query_id"])
    unjudged = int((~queries["query_id"].isin(judged)).sum())
    queries = queries[queries["query_id"].isin(judged)].reset_index(drop=True)
    split_of = assign_splits(queries["query_id"], seed, fractions)
    queries.insert(2, "split", queries["query_id"].map(split_of))
    ds = Dataset(products, queries, judgments)
    ds.card = {
        "name": name,
        "counts": counts(ds),
        "label_map": {str(k): int(v) for k, v in label_map.items()},
        "grades": {str(g): GRADE_NAMES[g] for g in GRADES},
        "split": {"seed": seed, "fractions": dict(zip(SPLITS, map(float, fractions))), "unit": "query"},
        "provenance": provenance,
        "report": {"skipped": dict(policy.skipped), "skipped_by_file": dict(policy.skipped_by_file),
                   "skipped_examples": policy.examples,
                   "merged_duplicate_judgments": builder.merged_duplicates, "unjudged_queries_dropped": unjudged},
        "notes": "grade 1-4 = L1 Irrelevant, L2 Mismatch, L3 Related, L4 Excellent; Good = L3 or L4.",
    }
    return ds


def prepare(name: str, out: str | Path, mirror: str | Path | None = None, *, seed: int = 0,
            fractions=DEFAULT_FRACTIONS, on_error: str = "raise", pins: dict | None = None,
            download: bool = True, label_map: dict | None = None, **options) -> Dataset:
    """Fetch, verify, load, split and write dataset ``name`` to ``out``."""
    t0 = time.time()
    files = registry.fetch(name, mirror=mirror, pins=pins, download=download)
    policy = ErrorPolicy(on_error)
    if name == "chorus":
        label_map = label_map or CHORUS_LABELS
        builder = load_chorus(files, policy, label_map)
    elif name in ("esci", "esci-sample"):
        label_map = label_map or ESCI_LABELS
        ex, pr = (("shopping_queries_dataset_examples.parquet", "shopping_queries_dataset_products.parquet")
                  if name == "esci" else ("test-sample.parquet", "sample-products.jsonl"))
        builder = load_esci(files[ex], files[pr], policy, label_map, **options)
    elif name == "wands":
        label_map = label_map or WANDS_LABELS
        builder = load_wands(files["product.csv"], files["query.csv"], files["label.csv"], policy, label_map)
    else:
        raise InputError(f"no loader for {name!r}")
    spec = registry.DATASETS[name]
    provenance = {"description": spec.description, "licence": spec.licence, "options": options,
                  "files": [{"name": f.name, "url": f.url, "sha256": f.sha256 or (pins or {}).get(f.name)}
                            for f in spec.files]}
    ds = build_dataset(builder, policy, name=name, label_map=label_map, seed=seed, fractions=fractions,
                       provenance=provenance)
    ds.card["prepare_seconds"] = round(time.time() - t0, 2)
    write_dataset(ds, out)
    return ds


def counts(ds: Dataset) -> dict:
    grades = ds.judgments["grade"].value_counts()
    return {"products": int(len(ds.products)), "queries": int(len(ds.queries)),
            "judgments": int(len(ds.judgments)), "grades": {str(g): int(grades.get(g, 0)) for g in GRADES}}


def stats_table(ds: Dataset) -> str:
    """Counts, grade distribution per split and judgments per query, as text."""
    c = counts(ds)
    lines = [f"products {c['products']:,}   queries {c['queries']:,}   judgments {c['judgments']:,}",
             "grades (all) " + "  ".join(f"L{g}={c['grades'][str(g)]:,}" for g in GRADES), "",
             "| split | queries | judgments | " + " | ".join(f"L{g}" for g in GRADES)
             + " | judgments/query (min/median/max) |",
             "|---|---|---|" + "---|" * len(GRADES) + "---|"]
    pairs = ds.judgments.merge(ds.queries[["query_id", "split"]], on="query_id")
    for split in SPLITS:
        p = pairs[pairs["split"] == split]
        nq = int((ds.queries["split"] == split).sum())
        per_q = p.groupby("query_id").size() if len(p) else pd.Series([0])
        g = p["grade"].value_counts()
        lines.append(f"| {split} | {nq} | {len(p)} | " + " | ".join(str(int(g.get(x, 0))) for x in GRADES)
                     + f" | {per_q.min()}/{int(per_q.median())}/{per_q.max()} |")
    return "\n".join(lines)
