"""Loaders for the upstream formats: Chorus, ESCI and WANDS.

Each loader reads the files exactly as published upstream (see ``registry.py``)
into a :class:`TableBuilder`, mapping source labels to grades 1-4 through a label
map that the caller may override. They know nothing of splits or output files:
``prepare.py`` does that for every source alike.
"""

from __future__ import annotations

import re
from pathlib import Path

from searchrl.data.readers import columns_of, read_rows, require_columns, require_fields
from searchrl.data.schema import ErrorPolicy
from searchrl.data.tables import TableBuilder
from searchrl.errors import ConfigError, shown

CHORUS_LABELS = {"0": 1, "1": 2, "2": 3, "3": 4}
ESCI_LABELS = {"E": 4, "S": 3, "C": 2, "I": 1}
WANDS_LABELS = {"Exact": 4, "Partial": 3, "Irrelevant": 1}  # WANDS has no "mismatch" level
_TAG = re.compile(r"<[^>]+>")


class QueryIds:
    """Stable ids for sources that key queries by text: q0001, q0002, ... in order of first appearance."""

    def __init__(self):
        self.ids: dict[str, str] = {}

    def __call__(self, text: str) -> str:
        text = text.strip()
        if text not in self.ids:
            self.ids[text] = f"q{len(self.ids) + 1:04d}"
        return self.ids[text]


def map_label(value, label_map: dict, file, where, field, policy: ErrorPolicy) -> int | None:
    key = str(value).strip()
    if key.endswith(".0") and key[:-2] in label_map:  # pandas-written integers, e.g. "3.0"
        key = key[:-2]
    if key not in label_map:
        policy.bad(file, where, field, f"unknown label {shown(value)}; expected one of {sorted(label_map)}",
                   "unknown label")
        return None
    return label_map[key]


# ----------------------------------------------------------------------------- Chorus

def load_chorus(files: dict[str, Path], policy: ErrorPolicy, label_map: dict | None = None) -> TableBuilder:
    """Chorus: products in ``{1..4}.json.zip``, judgments in ``Broad_Query_Set_rated.csv``,
    three raters per pair (where known) in ``Broad_Query_Set_individual_ratings.csv``."""
    label_map = label_map or CHORUS_LABELS
    b = TableBuilder(policy)
    for name in sorted(n for n in files if n.endswith(".json.zip")):
        path = files[name]
        for where, row in read_rows(path, policy):
            if not require_fields(path, where, row, ["id", "title"], policy):
                continue
            attrs = {k.split("_", 2)[2]: v for k, v in row.items() if k.startswith("attr_") and k.count("_") >= 2}
            if row.get("name"):
                attrs["model"] = row["name"]
            b.add_product(path, where, row["id"], row["title"], brand=row.get("supplier"),
                          description=row.get("short_description"), category=attrs.get("product_type", ""),
                          attributes=attrs, price=row.get("price"))

    raters = _chorus_raters(files.get("Broad_Query_Set_individual_ratings.csv"), policy)
    qids = QueryIds()
    path = files["Broad_Query_Set_rated.csv"]
    require_columns(path, columns_of(path), ["query", "docid", "rating"])
    for where, row in read_rows(path, policy):
        if not row["query"].strip():
            policy.bad(path, where, "query", "empty query", "missing query")
            continue
        grade = map_label(row["rating"], label_map, path, where, "rating", policy)
        if grade is None:
            continue
        qid = b.add_query(qids(row["query"]), row["query"])
        votes = raters.get((row["query"].strip(), row["docid"].strip()))
        agreement = None if votes is None else sum(v == row["rating"].strip() for v in votes) / len(votes)
        b.add_judgment(path, where, qid, row["docid"], grade, row["rating"].strip(),
                       raters=None if votes is None else len(votes), agreement=agreement)
    return b


def _chorus_raters(path: Path | None, policy: ErrorPolicy) -> dict[tuple[str, str], list[str]]:
    if path is None:
        return {}
    cols = ["query", "docid", "agent_1_rating", "agent_2_rating", "agent_3_rating"]
    require_columns(path, columns_of(path), cols)
    out = {}
    for where, row in read_rows(path, policy):
        votes = [row[c].strip() for c in cols[2:]]
        bad = [c for c, v in zip(cols[2:], votes) if v not in CHORUS_LABELS]
        if bad:
            policy.bad(path, where, bad[0], f"rating {shown(row[bad[0]])} is not 0-3", "unknown label")
            continue
        out[(row["query"].strip(), row["docid"].strip())] = votes
    return out


# ----------------------------------------------------------------------------- ESCI

def load_esci(examples: Path, products: Path, policy: ErrorPolicy, label_map: dict | None = None,
              locale: str | None = "us", version: str = "small") -> TableBuilder:
    """ESCI: the examples parquet (one row per judged pair) and the products parquet
    (or the Vespa feed JSONL of the same products). ``version``: "small" (the Task 1
    reduced set), "large" or "all"; ``locale``: "us", "es", "jp" or None for all, in
    which case product ids become ``locale/ASIN`` (an ASIN recurs across locales)."""
    if version not in ("small", "large", "all"):
        raise ConfigError(f"esci version must be small, large or all, got {version!r}")
    label_map = label_map or ESCI_LABELS
    b = TableBuilder(policy)
    cols = ["query_id", "query", "product_id", "product_locale", "esci_label"]
    if version != "all":
        cols.append(f"{version}_version")
    require_columns(examples, columns_of(examples), cols)

    def pid(asin, loc):
        return str(asin) if locale else f"{loc}/{asin}"

    for where, row in read_rows(examples, policy):
        if locale and row["product_locale"] != locale:
            continue
        if version != "all" and not row[f"{version}_version"]:
            continue
        grade = map_label(row["esci_label"], label_map, examples, where, "esci_label", policy)
        if grade is None:
            continue
        qid = b.add_query(row["query_id"], row["query"], source_split=row.get("split", ""))
        b.add_judgment(examples, where, qid, pid(row["product_id"], row["product_locale"]), grade, row["esci_label"])

    if str(products).endswith(".jsonl"):  # the Vespa feed: {"put": ..., "fields": {...}}
        rows = ((w, _vespa_fields(r)) for w, r in read_rows(products, policy))
    else:
        require_columns(products, columns_of(products), ["product_id", "product_title", "product_locale"])
        rows = read_rows(products, policy)
    for where, row in rows:
        if locale and row.get("product_locale") != locale:
            continue
        attrs = {k: row[f"product_{k}"] for k in ("color", "bullet_point") if row.get(f"product_{k}")}
        b.add_product(products, where, pid(row.get("product_id"), row.get("product_locale")),
                      row.get("product_title"), brand=row.get("product_brand"),
                      description=_TAG.sub(" ", row.get("product_description") or ""), attributes=attrs)
    return b


def _vespa_fields(row: dict) -> dict:
    f = row.get("fields", {})
    return {"product_id": f.get("id"), "product_title": f.get("title"), "product_description": f.get("description"),
            "product_bullet_point": f.get("bullets"), "product_brand": f.get("brand"),
            "product_color": f.get("color"), "product_locale": f.get("locale")}


# ----------------------------------------------------------------------------- WANDS

WANDS_PRODUCT_COLUMNS = ["product_id", "product_name", "product_class", "category hierarchy",
                         "product_description", "product_features", "rating_count", "average_rating", "review_count"]


def load_wands(product: Path, query: Path, label: Path, policy: ErrorPolicy,
               label_map: dict | None = None) -> TableBuilder:
    """WANDS: tab-separated product.csv, query.csv and label.csv. Quality = average
    rating / 5 where the product has ratings."""
    label_map = label_map or WANDS_LABELS
    b = TableBuilder(policy)
    require_columns(product, columns_of(product, "tsv"), WANDS_PRODUCT_COLUMNS[:2])
    for where, row in read_rows(product, policy, fmt="tsv"):
        rated = (row.get("rating_count") or "").strip() not in ("", "0", "0.0")
        avg = row.get("average_rating") if rated else None
        quality = None
        if avg not in (None, ""):
            try:
                quality = float(avg) / 5.0
            except ValueError:
                policy.bad(product, where, "average_rating", f"{shown(avg)} is not a number", "bad average_rating")
                continue
        b.add_product(product, where, row["product_id"], row["product_name"], category=row.get("product_class"),
                      description=row.get("product_description"),
                      attributes={"category_hierarchy": row.get("category hierarchy") or "",
                                  **_wands_features(row.get("product_features") or "")},
                      quality=quality)
    require_columns(query, columns_of(query, "tsv"), ["query_id", "query"])
    for where, row in read_rows(query, policy, fmt="tsv"):
        b.add_query(row["query_id"], row["query"], query_class=row.get("query_class") or "")
    require_columns(label, columns_of(label, "tsv"), ["query_id", "product_id", "label"])
    for where, row in read_rows(label, policy, fmt="tsv"):
        grade = map_label(row["label"], label_map, label, where, "label", policy)
        if grade is not None:
            b.add_judgment(label, where, row["query_id"], row["product_id"], grade, row["label"].strip())
    return b


def _wands_features(text: str) -> dict:
    """``"overallwidth-sidetoside:64.7|producttype : slow cooker|..."`` -> dict (keys stripped)."""
    out = {}
    for part in text.split("|"):
        key, sep, value = part.partition(":")
        if sep and key.strip() and value.strip():
            out[key.strip()] = value.strip()
    return out
