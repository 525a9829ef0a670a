"""Building the canonical tables (products, queries, judgments) from rows of any source.

``TableBuilder`` collects products, queries and judgments (rows come from readers.py,
located) and enforces the shared invariants: grades 1-4, no (query, product) pair with
two different grades, no judgment of an unknown product.
"""

from __future__ import annotations

import json

import pandas as pd

from searchrl.data.readers import clean_id, clean_text
from searchrl.data.schema import GRADES, JUDGMENT_COLUMNS, PRODUCT_COLUMNS, ErrorPolicy
from searchrl.errors import shown


class TableBuilder:
    """Accumulates canonical rows from any source, checking the shared invariants."""

    def __init__(self, policy: ErrorPolicy):
        self.policy = policy
        self.products: dict[str, dict] = {}
        self.queries: dict[str, dict] = {}
        self.judgments: dict[tuple[str, str], dict] = {}
        self._where: dict[tuple[str, str], tuple[str, str]] = {}
        self.merged_duplicates = 0

    def add_product(self, file, where, product_id, title, brand="", description="", category="",
                    attributes=None, price=None, quality=None) -> bool:
        """True when the product was added; False when the row was reported to the policy."""
        pid = clean_id(product_id)
        if not pid:
            self.policy.bad(file, where, "product_id", "missing or empty", "missing product_id")
            return False
        if not clean_text(title):  # also NaN (a JSON NaN, an empty Parquet float cell)
            self.policy.bad(file, where, "title", "missing or empty", "missing title")
            return False
        if pid in self.products:
            self.policy.bad(file, where, "product_id", f"duplicate product {shown(pid)}", "duplicate product_id")
            return False
        for name, value in (("price", price), ("quality", quality)):
            if _float_or_none(value) is None and clean_text(value) not in ("", "nan", "NaN"):
                self.policy.bad(file, where, name, f"{shown(value)} is not a number", f"bad {name}")
                return False
        self.products[pid] = {
            "product_id": pid, "title": str(title).strip(), "brand": clean_text(brand),
            "description": clean_text(description), "category": clean_text(category),
            # default=str: Parquet cells can be bytes or timestamps, which JSON has no type for
            "attributes": json.dumps(attributes or {}, ensure_ascii=False, sort_keys=True, default=str),
            "price": _float_or_none(price), "quality": _float_or_none(quality)}
        return True

    def add_query(self, query_id, text, **extra) -> str:
        qid = clean_id(query_id)
        if qid not in self.queries:
            self.queries[qid] = {"query_id": qid, "text": str(text).strip(), **extra}
        return qid

    def add_judgment(self, file, where, query_id, product_id, grade, label, raters=None, agreement=None) -> None:
        key = (clean_id(query_id), clean_id(product_id))
        if grade not in GRADES:
            return self.policy.bad(file, where, "grade", f"grade {shown(grade)} is not in 1-4", "bad grade")
        prev = self.judgments.get(key)
        if prev is not None:
            if prev["grade"] != grade:
                pfile, pwhere = self._where[key]
                return self.policy.bad(file, where, "grade",
                                       f"conflicting grades for (query {shown(key[0])}, product {shown(key[1])}): "
                                       f"{grade} here, "
                                       f"{prev['grade']} at {pfile}:{pwhere}", "conflicting duplicate")
            self.merged_duplicates += 1  # same pair, same grade: keep one, count it
            return
        self.judgments[key] = {"query_id": key[0], "product_id": key[1], "grade": int(grade), "label": str(label),
                               "raters": raters, "agreement": agreement}
        self._where[key] = (str(file), where)

    def finish(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        keep = {}
        for key, j in self.judgments.items():
            file, where = self._where[key]
            if key[1] not in self.products:
                self.policy.bad(file, where, "product_id", f"product {shown(key[1])} is not in the catalogue",
                                "unknown product")
            elif key[0] not in self.queries:
                self.policy.bad(file, where, "query_id", f"query {shown(key[0])} is not in the query table",
                                "unknown query")
            else:
                keep[key] = j
        products = pd.DataFrame(list(self.products.values()), columns=PRODUCT_COLUMNS)
        products["price"] = products["price"].astype("float64")
        products["quality"] = products["quality"].astype("float64")
        queries = pd.DataFrame(list(self.queries.values()))
        if queries.empty:
            queries = pd.DataFrame(columns=["query_id", "text"])
        judgments = pd.DataFrame(list(keep.values()), columns=JUDGMENT_COLUMNS)
        judgments["grade"] = judgments["grade"].astype("int64")
        judgments["raters"] = judgments["raters"].astype("Int64")
        judgments["agreement"] = judgments["agreement"].astype("float64")
        return products, queries, judgments


def _float_or_none(value):
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past float's range
        return None
    return None if pd.isna(v) else v
