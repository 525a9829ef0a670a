"""The canonical tables every stage reads, and the errors raised on bad input.

A prepared dataset is a directory with three Parquet tables and a JSON card:

- ``products.parquet``: product_id (str), title, brand, description, category (str,
  "" when unknown), attributes (str: a JSON object of name -> value), price and
  quality (float, null where the source has none; quality in [0, 1]).
- ``queries.parquet``: query_id (str), text (str), split ("train" | "valid" | "test").
- ``judgments.parquet``: query_id, product_id, grade (int 1-4: L1 Irrelevant,
  L2 Mismatch, L3 Related, L4 Excellent), label (the source's own label, str),
  raters (int, null if unknown), agreement (float in [0, 1], share of raters who
  gave the final label; null if unknown).
- ``dataset.json``: counts, label mapping, split settings and provenance.

Every loader goes through :class:`ErrorPolicy`, so bad input either raises a
:class:`DataError` naming file, line/row and field, or (``on_error="skip"``) is
skipped and counted in the report. Nothing is dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import ConfigError, InputError, MissingFileError, UserError

GRADES = (1, 2, 3, 4)
GRADE_NAMES = {1: "L1 Irrelevant", 2: "L2 Mismatch", 3: "L3 Related", 4: "L4 Excellent"}
GOOD_MIN_GRADE = 3  # "Good" = L3 or L4
SPLITS = ("train", "valid", "test")

PRODUCT_COLUMNS = ["product_id", "title", "brand", "description", "category", "attributes", "price", "quality"]
QUERY_COLUMNS = ["query_id", "text", "split"]
JUDGMENT_COLUMNS = ["query_id", "product_id", "grade", "label", "raters", "agreement"]
PRODUCT_FIELDS = ("title", "brand", "category", "description", "attributes")  # what a relevance prompt shows


class DataError(UserError, ValueError):
    """Bad input, located: ``file:line: field: message``."""

    def __init__(self, file: str | Path, where: str | None, field: str | None, message: str):
        self.file, self.where, self.field = str(file), where, field
        loc = self.file + (f":{where}" if where else "")
        super().__init__(f"{loc}: {field + ': ' if field else ''}{message}")


@dataclass
class ErrorPolicy:
    """``raise`` stops at the first bad row; ``skip`` counts it and goes on."""

    on_error: str = "raise"
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: list[str] = field(default_factory=list)  # first few messages, for the report

    def __post_init__(self):
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")

    def bad(self, file, where, field, message, reason: str | None = None) -> None:
        err = DataError(file, where, field, message)
        if self.on_error == "raise":
            raise err
        key = reason or (f"{field}: {message}" if field else message)
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(str(err))

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclass
class Dataset:
    """The three canonical tables in memory."""

    products: pd.DataFrame
    queries: pd.DataFrame
    judgments: pd.DataFrame
    card: dict = field(default_factory=dict)

    def split(self, name: str) -> "Dataset":
        """Queries of one split and their judgments; the catalogue stays whole."""
        if name not in SPLITS:
            raise InputError(f"unknown split {name!r}; expected one of {SPLITS}")
        q = self.queries[self.queries["split"] == name]
        j = self.judgments[self.judgments["query_id"].isin(q["query_id"])]
        return Dataset(self.products, q.reset_index(drop=True), j.reset_index(drop=True), self.card)

    def pairs(self) -> pd.DataFrame:
        """Judgments joined with query text and product fields (one row per pair)."""
        out = self.judgments.merge(self.queries[["query_id", "text", "split"]], on="query_id", how="left")
        return out.merge(self.products, on="product_id", how="left")


def pair_products(pairs: pd.DataFrame) -> list[dict]:
    """One {field: text} per row of ``pairs`` (Dataset.pairs()) for PRODUCT_FIELDS; a missing value is ""."""
    def text(value) -> str:
        return "" if value is None or (isinstance(value, float) and value != value) else str(value)
    cols = [c for c in PRODUCT_FIELDS if c in pairs.columns]
    return [{c: text(r.get(c)) for c in PRODUCT_FIELDS} for r in pairs[cols].to_dict("records")]


def product_attributes(value) -> dict:
    """The attributes column decoded (it is stored as a JSON string)."""
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def product_text(row, max_description: int = 200) -> str:
    """One line of text for lexical/dense matching: title, brand, category, description head."""
    parts = [str(row.get("title") or ""), str(row.get("brand") or ""), str(row.get("category") or "")]
    desc = str(row.get("description") or "")[:max_description]
    return " ".join(p for p in parts + [desc] if p)


def write_dataset(ds: Dataset, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds.products[PRODUCT_COLUMNS].to_parquet(out / "products.parquet", index=False)
    ds.queries[QUERY_COLUMNS + [c for c in ds.queries.columns if c not in QUERY_COLUMNS]].to_parquet(
        out / "queries.parquet", index=False)
    ds.judgments[JUDGMENT_COLUMNS].to_parquet(out / "judgments.parquet", index=False)
    (out / "dataset.json").write_text(json.dumps(ds.card, indent=2, default=str) + "\n")
    return out


def load_dataset(data_dir: str | Path) -> Dataset:
    """Read a prepared dataset directory, checking that it is complete."""
    d = Path(data_dir)
    if not d.is_dir():
        raise MissingFileError(f"{d}: no such dataset directory (run `searchrl data prepare NAME --out {d}`)")
    tables = {}
    for name, cols in (("products", PRODUCT_COLUMNS), ("queries", QUERY_COLUMNS), ("judgments", JUDGMENT_COLUMNS)):
        path = d / f"{name}.parquet"
        if not path.exists():
            raise MissingFileError(f"{path}: missing; {d} is not a prepared dataset")
        df = pd.read_parquet(path)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(path, None, missing[0], f"missing column(s) {missing}")
        tables[name] = df
    card_path = d / "dataset.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    return Dataset(tables["products"], tables["queries"], tables["judgments"], card)
