"""Reading rows from CSV/TSV/JSONL/JSON/Parquet with locations, and the cell cleaners every reader shares.

``read_rows`` yields ``(location, row)`` pairs so that every later check can name the
file and line (text formats) or row (Parquet, JSON arrays). Malformed rows go to the
:class:`ErrorPolicy`; a bad header (encoding, NULs, duplicate or missing columns) is a
DataError naming the file. tables.py builds the canonical tables from these rows.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from searchrl.data.schema import DataError, ErrorPolicy
from searchrl.errors import MissingFileError, shown

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
    """Yield ``(location, row dict)``; malformed rows are reported to ``policy``.

    Text is UTF-8, with or without a byte-order mark. A row with bytes that are not UTF-8 is a bad row
    (named with the byte and its offset); a UTF-16 file, a duplicate or empty header and a file that is
    not of its format are errors whatever the policy. Errors of the csv, json and pyarrow readers never
    escape: they become a DataError with the file and line (or row)."""
    path = _existing_file(path)
    fmt = fmt or detect_format(path)
    if fmt in ("csv", "tsv"):
        yield from _read_delimited(path, policy, delimiter or ("\t" if fmt == "tsv" else ","))
    elif fmt == "jsonl":
        yield from _read_jsonl(path, policy)
    elif fmt in ("json", "json-zip"):
        items, escapes = _read_json_array(path, fmt)
        for n, row in enumerate(items, start=1):
            where = f"item {n}"
            if not isinstance(row, dict):
                policy.bad(path, where, None, "expected a JSON object", "malformed row")
            elif not escapes or _valid_text(path, where, row, policy):
                yield where, row
    elif fmt == "parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(path, None, None, f"unknown format {shown(fmt)}")


# ----------------------------------------------------------------------------- text files

_ESCAPED = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a byte that is not UTF-8
_SURROGATE = re.compile("[\ud800-\udfff]")  # also lone surrogates, which JSON "\ud800" escapes can produce
_JSON_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_BOM = b"\xef\xbb\xbf"


def _existing_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such file")
    if not path.is_file():
        raise MissingFileError(f"{path}: not a file")
    return path


def _open_text(path: Path):
    """(file, offset of its text): the file as UTF-8 text (a BOM is skipped); bytes that are not UTF-8 come
    through as surrogate escapes, so that the row holding them can be named (and skipped) instead of the
    whole read failing."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise DataError(path, None, None, f"UTF-16 text (it starts with the byte-order mark "
                            f"{head[:2].hex(' ')}); save it as UTF-8")
        return open(path, encoding="utf-8-sig", errors="surrogateescape", newline=""), len(_BOM) * head.startswith(_BOM)
    except OSError as e:  # e.g. no permission to read it
        raise DataError(path, None, None, f"cannot read it ({e.strerror or e})") from None


class _Lines:
    """Lines of a text file for csv.reader, remembering those of the record being read and the byte offsets."""

    def __init__(self, f, offset: int):
        self.f, self.n, self.offset = f, 0, offset
        self.lines: list[str] = []
        self.first, self.first_offset = 1, offset

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self.f)
        if not self.lines:
            self.first, self.first_offset = self.n + 1, self.offset
        self.lines.append(line)
        self.n += 1
        self.offset += len(line) if line.isascii() else len(line.encode("utf-8", "surrogateescape"))
        return line

    def take(self) -> tuple[int, int, str, int]:
        """(first line, last line, text, byte offset) of the record just read."""
        text, self.lines = "".join(self.lines), []
        return self.first, self.n, text, self.first_offset


def _not_utf8(text: str, offset: int) -> str:
    """'not UTF-8 (byte 0xe9 at offset N)' for the first escaped byte of ``text``, which starts at ``offset``."""
    m = _ESCAPED.search(text)
    at = offset + len(text[: m.start()].encode("utf-8", "surrogateescape"))
    return f"not UTF-8 (byte 0x{ord(m.group()) - 0xdc00:02x} at offset {at})"


def _unique_columns(path: Path, names: list[str]) -> None:
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise DataError(path, "header", name, f"duplicate column (columns {first[name] + 1} and {i + 1})")
        first[name] = i


def _header(path: Path, reader, lines: _Lines) -> list[str] | None:
    """The header row, checked: UTF-8, no NULs, not empty, no duplicate names. None for an empty file."""
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise DataError(path, "header", None, f"unreadable ({e})") from None
    if header is None:
        return None
    _, _, text, offset = lines.take()
    if _ESCAPED.search(text):
        raise DataError(path, "header", None, _not_utf8(text, offset))
    if "\x00" in text:
        raise DataError(path, "header", None, "NUL bytes in the header: is the file UTF-16 (saved without a "
                        "byte-order mark) or binary? Save it as UTF-8")
    if not header:
        raise DataError(path, "header", None, "the first line (the header) is empty")
    _unique_columns(path, header)
    return header


def _read_delimited(path: Path, policy: ErrorPolicy, delimiter: str) -> Iterator[tuple[str, dict]]:
    f, offset = _open_text(path)
    with f:
        lines = _Lines(f, offset)
        reader = csv.reader(lines, delimiter=delimiter)
        header = _header(path, reader, lines)
        if header is None:
            return
        n = len(header)
        while True:
            try:
                fields = next(reader, None)
            except csv.Error as e:
                raise DataError(path, f"line {lines.n}", None, f"unreadable ({e})") from None
            if fields is None:
                return
            first, last, text, offset = lines.take()
            if not fields:  # a blank line is no row
                continue
            where = f"line {first}"  # a record with a quoted newline is named by its first line
            span = f"the record runs from line {first} to line {last}"
            if last > first and text.count('"') % 2:
                policy.bad(path, where, None, f"an unclosed quote: {span}", "malformed row")
            elif len(fields) > n:
                policy.bad(path, where, None, f"{len(fields)} fields, header has {n}"
                           + (f" ({span})" if last > first else ""), "malformed row")
            elif len(fields) < n:
                policy.bad(path, where, None, f"fewer fields than the header's {n}"
                           + (f" ({span})" if last > first else ""), "malformed row")
            elif _ESCAPED.search(text):
                field = next((h for h, v in zip(header, fields) if _ESCAPED.search(v)), None)
                policy.bad(path, where, field, _not_utf8(text, offset), "not UTF-8")
            else:
                yield where, dict(zip(header, fields))


def _json_error(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg}, column {e.colno}"
    return _one_line(e)  # e.g. an integer past Python's 4300-digit limit


def _read_jsonl(path: Path, policy: ErrorPolicy) -> Iterator[tuple[str, dict]]:
    f, offset = _open_text(path)
    with f:
        lines = _Lines(f, offset)
        for _ in lines:
            n, _, line, at = lines.take()
            where = f"line {n}"
            if not line.strip():
                continue
            if _ESCAPED.search(line):
                policy.bad(path, where, None, _not_utf8(line, at), "not UTF-8")
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as e:
                policy.bad(path, where, None, f"malformed JSON ({_json_error(e)})", "malformed row")
                continue
            if not isinstance(row, dict):
                policy.bad(path, where, None, "expected a JSON object", "malformed row")
            elif not _JSON_SURROGATE_ESCAPE.search(line) or _valid_text(path, where, row, policy):
                yield where, row


def _read_json_array(path: Path, fmt: str) -> tuple[list, bool]:
    """(the items, whether the text has \\ud800-\\udfff escapes, so that items may hold lone surrogates)"""
    try:
        if fmt == "json-zip":
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.namelist() if m.endswith(".json")]
                if len(members) != 1:
                    raise DataError(path, None, None, f"expected one .json member, found {shown(members)}")
                data = z.read(members[0])
        else:
            data = path.read_bytes()
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as e:
        raise DataError(path, None, None, f"not a readable zip file ({_one_line(e)})") from None
    except OSError as e:
        raise DataError(path, None, None, f"cannot read it ({e.strerror or e})") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(path, None, None, "UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = skip + e.start
        line = data.count(b"\n", 0, at) + 1
        raise DataError(path, f"line {line}", None, f"not UTF-8 (byte 0x{data[at]:02x} at offset {at})") from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno}", None, f"malformed JSON ({_json_error(e)})") from None
    except (ValueError, RecursionError) as e:
        raise DataError(path, None, None, f"malformed JSON ({_json_error(e)})") from None
    if not isinstance(items, list):
        raise DataError(path, None, None, "expected a JSON array of objects")
    return items, _JSON_SURROGATE_ESCAPE.search(text) is not None


def _has_surrogate(value) -> bool:
    todo = [value]  # a loop, not recursion: JSON nests as deep as json.loads allows
    while todo:
        v = todo.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            todo.extend(v.keys())
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return False


def _valid_text(path, where, row: dict, policy: ErrorPolicy) -> bool:
    """False (and the row reported) when a key or value holds a lone surrogate, which no file can store."""
    for key, value in row.items():
        if _has_surrogate(key) or _has_surrogate(value):
            policy.bad(path, where, None if _has_surrogate(key) else key,
                       "invalid text (a lone surrogate, from a JSON \\ud800-\\udfff escape)", "invalid text")
            return False
    return True


# ----------------------------------------------------------------------------- Parquet

_PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError)  # ArrowInvalid is a ValueError, ArrowIOError an OSError


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
    except _PARQUET_ERRORS as e:
        raise DataError(path, None, None, f"not a readable Parquet file ({_one_line(e)})") from None
    _unique_columns(path, names)
    return pf


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    batches = _parquet_file(path).iter_batches(batch_size=65536)
    n = 0
    while True:
        try:
            batch = next(batches, None)
            rows = None if batch is None else batch.to_pylist()
        except _PARQUET_ERRORS as e:
            raise DataError(path, f"row {n + 1}", None, f"unreadable Parquet data ({_one_line(e)})") from None
        if rows is None:
            return
        for row in rows:
            n += 1
            yield f"row {n}", row


def _one_line(e: Exception, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def columns_of(path: str | Path, fmt: str | None = None, delimiter: str | None = None) -> list[str] | None:
    """Header columns of a tabular file (None for JSON formats, whose keys vary per row); [] for an empty file.

    The header is checked as read_rows checks it (encoding, duplicates), so a bad one fails here first."""
    path = _existing_file(path)
    fmt = fmt or detect_format(path)
    if fmt in ("csv", "tsv"):
        f, offset = _open_text(path)
        with f:
            lines = _Lines(f, offset)
            return _header(path, csv.reader(lines, delimiter=delimiter or ("\t" if fmt == "tsv" else ",")),
                           lines) or []
    if fmt == "parquet":
        return _parquet_file(path).schema_arrow.names
    return None


def require_columns(path, present: list[str] | None, required: list[str]) -> None:
    """A missing column is always an error: no row could be read without it."""
    if present is None:
        return
    missing = [c for c in required if c not in present]
    if missing:
        raise DataError(path, "header", missing[0], f"missing column(s) {missing}; found {present}")


def require_fields(path, where, row: dict, fields: list[str], policy: ErrorPolicy) -> bool:
    """Each required key must be present and hold more than blanks (a JSON row has no header to check)."""
    for f in fields:
        if not clean_text(row.get(f)):
            policy.bad(path, where, f, "missing or empty", f"missing {f}")
            return False
    return True


def clean_id(value) -> str:
    """An id as text: stripped, a float that is an integer written as one (3.0 -> "3"), "" for None/NaN."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def clean_text(value) -> str:
    """A value as stripped text; "" for None and NaN."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return str(value).strip()
