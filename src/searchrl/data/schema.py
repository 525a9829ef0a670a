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
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from searchrl.errors import (
    ConfigError,
    InputError,
    MissingFileError,
    OutputError,
    OutputExistsError,
    UserError,
    disk_full,
)

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
    skipped_by_file: dict[str, int] = field(default_factory=dict)  # file -> count (the same rows, by file)
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
        self.skipped_by_file[err.file] = self.skipped_by_file.get(err.file, 0) + 1
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


DATASET_FILES = ("products.parquet", "queries.parquet", "judgments.parquet", "dataset.json")


def write_dataset(ds: Dataset, out_dir: str | Path) -> Path:
    """Write ``ds`` to ``out_dir`` all or nothing: the four files go to a temporary directory first and are
    renamed into place only when all are complete, so a full disk (or a crash) never leaves a half-written
    dataset under the real name, nor old and new tables mixed in a dataset prepared before. A full disk
    is an OutputError naming the file (the OSError as its ``__cause__``), with nothing half-written left.

    Simplifies: an existing directory is updated by renaming the four files one after the other (other
    files in it stay), so a crash between two renames, not a full disk, could still mix them."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory")
    existed = out.is_dir()
    tables = {"products.parquet": ds.products[PRODUCT_COLUMNS],
              "queries.parquet": ds.queries[QUERY_COLUMNS + [c for c in ds.queries.columns if c not in QUERY_COLUMNS]],
              "judgments.parquet": ds.judgments[JUDGMENT_COLUMNS]}
    staging, current = None, "its directory"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # mkdir, not mkdtemp: the directory may become ``out``, and should get the umask's permissions, not 0700
        staging = (out if existed else out.parent) / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
        for name, table in tables.items():
            current = name
            table.to_parquet(staging / name, index=False)
        current = "dataset.json"
        (staging / current).write_text(json.dumps(ds.card, indent=2, default=str) + "\n")
        if existed:  # renames only: they need no free space
            for name in DATASET_FILES:
                os.replace(staging / name, out / name)
            staging.rmdir()
        else:
            os.replace(staging, out)
    except BaseException as e:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        full = disk_full(e)
        if full is None:
            raise
        raise OutputError(f"{out}: dataset not written: writing {current} failed: {full[0]}; nothing half-written "
                          f"is left, {out} {'is as it was' if existed else 'was not created'}") from e
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
