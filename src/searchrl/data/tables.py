"""Reading rows from CSV/TSV/JSONL/JSON/Parquet with locations, and building the canonical tables.

``read_rows`` yields ``(location, row)`` pairs so that every later check can name the
file and line (text formats) or row (Parquet, JSON arrays). Malformed rows go to the
:class:`ErrorPolicy`. ``TableBuilder`` collects products, queries and judgments from
any source and enforces the shared invariants: grades 1-4, no (query, product) pair
with two different grades, no judgment of an unknown product.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow.parquet as pq

from ..errors import MissingFileError
from .schema import GRADES, JUDGMENT_COLUMNS, PRODUCT_COLUMNS, DataError, ErrorPolicy

csv.field_size_limit(sys.maxsize)  # WANDS descriptions exceed csv's 128 KiB default


def detect_format(path: Path) -> str:
    name = path.name.lower()
    for ext, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json.zip", "json-zip"),
                     (".json", "json"), (".tsv", "tsv"), (".csv", "csv")):
        if name.endswith(ext):
            return fmt
    raise DataError(path, None, None, "unknown file format (expected .csv, .tsv, .jsonl, .json, .parquet)")


def read_rows(path: str | Path, policy: ErrorPolicy, fmt: str | None = None,
              delimiter: str | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, row dict)``; malformed rows are reported to ``policy``."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    if fmt in ("csv", "tsv"):
        yield from _read_delimited(path, policy, delimiter or ("\t" if fmt == "tsv" else ","))
    elif fmt == "jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    policy.bad(path, f"line {n}", None, f"malformed JSON ({e.msg})", "malformed row")
                    continue
                if not isinstance(row, dict):
                    policy.bad(path, f"line {n}", None, "expected a JSON object", "malformed row")
                    continue
                yield f"line {n}", row
    elif fmt in ("json", "json-zip"):
        if fmt == "json-zip":
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.namelist() if m.endswith(".json")]
                if len(members) != 1:
                    raise DataError(path, None, None, f"expected one .json member, found {members}")
                items = json.loads(z.read(members[0]))
        else:
            items = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(items, list):
            raise DataError(path, None, None, "expected a JSON array of objects")
        for n, row in enumerate(items, start=1):
            if not isinstance(row, dict):
                policy.bad(path, f"item {n}", None, "expected a JSON object", "malformed row")
                continue
            yield f"item {n}", row
    elif fmt == "parquet":
        n = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65536):
            for row in batch.to_pylist():
                n += 1
                yield f"row {n}", row
    else:
        raise DataError(path, None, None, f"unknown format {fmt!r}")


def _read_delimited(path: Path, policy: ErrorPolicy, delimiter: str) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter, restkey="__extra__")
        for row in reader:
            where = f"line {reader.line_num}"
            if "__extra__" in row:
                policy.bad(path, where, None, f"{len(reader.fieldnames) + len(row['__extra__'])} fields, "
                           f"header has {len(reader.fieldnames)}", "malformed row")
                continue
            if any(v is None for v in row.values()):
                policy.bad(path, where, None, f"fewer fields than the header's {len(reader.fieldnames)}",
                           "malformed row")
                continue
            yield where, row


def columns_of(path: str | Path, fmt: str | None = None, delimiter: str | None = None) -> list[str] | None:
    """Header columns of a tabular file (None for JSON formats, whose keys vary per row)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt in ("csv", "tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            return next(csv.reader(io.StringIO(f.readline()), delimiter=delimiter or (
                "\t" if fmt == "tsv" else ",")), [])
    if fmt == "parquet":
        return pq.ParquetFile(path).schema_arrow.names
    return None


def require_columns(path, present: list[str] | None, required: list[str]) -> None:
    """A missing column is always an error: no row could be read without it."""
    if present is None:
        return
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(path, "header", missing[0], f"missing column(s) {missing}; found {present}")


def require_fields(path, where, row: dict, fields: list[str], policy: ErrorPolicy) -> bool:
    """For JSON rows (no header): each required key must be present and non-empty."""
    for f in fields:
        if row.get(f) in (None, ""):
            policy.bad(path, where, f, "missing or empty", f"missing {f}")
            return False
    return True


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
                    attributes=None, price=None, quality=None) -> None:
        pid = _clean_id(product_id)
        if not pid:
            return self.policy.bad(file, where, "product_id", "missing or empty", "missing product_id")
        if not title or not str(title).strip():
            return self.policy.bad(file, where, "title", "missing or empty", "missing title")
        if pid in self.products:
            return self.policy.bad(file, where, "product_id", f"duplicate product {pid!r}", "duplicate product_id")
        for name, value in (("price", price), ("quality", quality)):
            if _float_or_none(value) is None and _text(value) not in ("", "nan", "NaN"):
                return self.policy.bad(file, where, name, f"{value!r} is not a number", f"bad {name}")
        self.products[pid] = {
            "product_id": pid, "title": str(title).strip(), "brand": _text(brand), "description": _text(description),
            "category": _text(category), "attributes": json.dumps(attributes or {}, ensure_ascii=False, sort_keys=True),
            "price": _float_or_none(price), "quality": _float_or_none(quality)}

    def add_query(self, query_id, text, **extra) -> str:
        qid = _clean_id(query_id)
        if qid not in self.queries:
            self.queries[qid] = {"query_id": qid, "text": str(text).strip(), **extra}
        return qid

    def add_judgment(self, file, where, query_id, product_id, grade, label, raters=None, agreement=None) -> None:
        key = (_clean_id(query_id), _clean_id(product_id))
        if grade not in GRADES:
            return self.policy.bad(file, where, "grade", f"grade {grade!r} is not in 1-4", "bad grade")
        prev = self.judgments.get(key)
        if prev is not None:
            if prev["grade"] != grade:
                pfile, pwhere = self._where[key]
                return self.policy.bad(file, where, "grade",
                                       f"conflicting grades for (query {key[0]!r}, product {key[1]!r}): {grade} here, "
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
                self.policy.bad(file, where, "product_id", f"product {key[1]!r} is not in the catalogue",
                                "unknown product")
            elif key[0] not in self.queries:
                self.policy.bad(file, where, "query_id", f"query {key[0]!r} is not in the query table",
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


def _clean_id(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _text(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return str(value).strip()


def _float_or_none(value):
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(v) else v
