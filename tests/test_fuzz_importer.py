"""Property-based fuzzing of the data readers and ``searchrl data import`` with hostile files.

Files are CSV, TSV, JSONL, JSON or Parquet with wrong encodings (latin-1, UTF-16, invalid UTF-8 bytes),
byte-order marks, CRLF, embedded NULs, quotes, huge fields, duplicate or missing header columns, ragged
rows, empty and header-only files, and mistyped values (a grade "4.5" or "four", a price "abc"). The
property: an import ends in success, in a UserError that names the file and the line and/or field, or
(with on_error=skip) in counted skips, where every input row is in the output or counted: per file,
rows = kept + merged duplicates (+ unjudged queries) + skipped. Never an exception from inside pandas,
pyarrow, csv or json. Also here: read_rows on arbitrary bytes, and the mapping (YAML, --map, --labels).
"""

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from searchrl.data.importer import import_dataset, parse_mapping
from searchrl.data.readers import read_rows
from searchrl.data.schema import DataError, ErrorPolicy, load_dataset
from searchrl.errors import ConfigError, InputError, UserError

# derandomize: the same examples in CI on every run; deadline=None: a loaded 2-core machine is slow
SETTINGS = {"deadline": None, "derandomize": True, "suppress_health_check": [HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large]}
LOCATION = re.compile(r"(line \d+|row \d+|item \d+|header)")

# ----------------------------------------------------------------------------- values

TEXT = st.one_of(
    st.sampled_from(["laptop", "usb c cable", "", " ", "  padded  ", 'say "hi"', '"', '""', "a,b", "a\tb",
                     "two\nlines", "cr\ronly", "crlf\r\nend", "nul\x00byte", "café", "日本語", "\ufeffbom inside",
                     "\u2028sep", "'", "\\", "=SUM(A1)", "x" * 100_000]),
    st.text(max_size=12))
IDS = st.sampled_from(["P1", "P2", "P3", " P1 ", "p1", "", " ", "1", "1.0", "P\x00"])
QUERY_IDS = st.sampled_from(["q1", "q2", "q3", " q1", "", "10", "10.0"])
QUERIES = st.one_of(st.sampled_from(["laptop", "mouse", " laptop ", "", "  ", "usb"]), TEXT)
LABELS = st.sampled_from(["1", "2", "3", "4", " 4 ", "4.0", "4.5", "four", "0", "5", "", "L3", "-1", "1e0"])
PRICES = st.sampled_from(["", "9.99", "abc", "nan", "1e400", "-1", "1" * 400, " 3 ", "inf"])
# typed values, for the formats that carry types (JSONL, Parquet)
TYPED = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=True), st.binary(max_size=3),
                  st.just(10 ** 400), st.lists(st.integers(0, 4), max_size=2),
                  st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 4), max_size=2))

# the same columns from values that are all valid, so that some imports get through every row
CLEAN = {"query": st.sampled_from(["laptop", "mouse", "usb c"]), "product_id": st.sampled_from(["P1", "P2", "P3"]),
         "query_id": st.sampled_from(["q1", "q2", "q3"]), "text": st.sampled_from(["laptop", "mouse", "usb c"]),
         "title": st.sampled_from(["a laptop", "café crème", 'say "hi"', "a,b", "two\nlines", "tab\there"]),
         "brand": st.sampled_from(["", "Dell", "日本"]), "label": st.sampled_from(["1", "2", "3", "4"]),
         "price": st.sampled_from(["", "9.99", "10"])}

LAYOUTS = {  # table -> {column: value strategy}
    "judgments_only": {"judgments": {"query": QUERIES, "product_id": IDS, "title": TEXT, "label": LABELS,
                                     "price": PRICES}},
    "three_files": {"products": {"product_id": IDS, "title": TEXT, "brand": TEXT, "price": PRICES},
                    "queries": {"query_id": QUERY_IDS, "text": QUERIES},
                    "judgments": {"query_id": QUERY_IDS, "product_id": IDS, "label": LABELS}},
}
FORMATS = ["csv", "tsv", "jsonl", "parquet"]
# file-level damage is rare, so that with three files most imports get to the rows
ENCODINGS = ["utf-8"] * 12 + ["utf-8-sig"] * 2 + ["latin-1"] * 2 + ["utf-16", "utf-16-le"]
HEADER_MUTATIONS = ["none"] * 16 + ["duplicate", "drop", "empty_file", "header_only"]
TEXT_ROW_MUTATIONS = ["none"] * 12 + ["ragged_short", "ragged_long", "bad_byte"]
JSON_ROW_MUTATIONS = ["none"] * 12 + ["typed", "typed", "not_object", "malformed", "deep", "big_int", "surrogate",
                                       "bad_byte", "missing_key"]


@st.composite
def table_file(draw, columns: dict, clean_values: dict | None = None):
    """One file's spec: format, mutations and rows (the bytes are made by write_file). ``clean_values``:
    valid values per column (default CLEAN), used for the files that hold only valid rows."""
    fmt = draw(st.sampled_from(FORMATS))
    clean = draw(st.booleans())  # half the files hold only valid rows
    spec = {"fmt": fmt, "header": "none" if clean else draw(st.sampled_from(HEADER_MUTATIONS)),
            "encoding": "utf-8" if clean else draw(st.sampled_from(ENCODINGS)),
            "newline": draw(st.sampled_from(["\n", "\r\n"])), "columns": list(columns)}
    row_mutations = ["none"] if clean else JSON_ROW_MUTATIONS if fmt in ("jsonl", "parquet") else TEXT_ROW_MUTATIONS
    n = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]))
    strategies = {c: (clean_values or CLEAN)[c] for c in columns} if clean else columns
    spec["rows"] = [({c: draw(s) for c, s in strategies.items()}, draw(st.sampled_from(row_mutations)))
                    for _ in range(n)]
    if clean:  # valid as a whole too: no duplicate ids, one grade per (query, product)
        for i, (row, _) in enumerate(spec["rows"]):
            if "label" in row:
                key = row.get("query", row.get("query_id", "")) + row["product_id"]
                row["label"] = str(1 + sum(map(ord, key)) % 4)
            elif "product_id" in row:
                row["product_id"] = f"P{i + 1}"
            elif "query_id" in row:
                row["query_id"] = f"q{i + 1}"
    if fmt in ("jsonl", "parquet"):
        for row, mutation in spec["rows"]:
            if mutation == "typed":
                row[draw(st.sampled_from(list(columns)))] = draw(TYPED)
    spec["parquet_damage"] = "none" if clean else draw(st.sampled_from(["none"] * 14 + ["truncate", "garbage"]))
    return spec


def write_file(path: Path, spec: dict) -> int:
    """Write ``spec`` to ``path``; returns how many data rows (records) the file holds."""
    fmt, header_mut, rows = spec["fmt"], spec["header"], spec["rows"]
    columns = spec["columns"]
    if header_mut == "drop":
        columns = columns[1:]
    if header_mut == "duplicate":
        columns = columns + [columns[0]]
    records = [[row.get(c) for c in columns] for row, _ in rows]
    if header_mut == "empty_file":
        path.write_bytes(b"")
        return 0
    if header_mut == "header_only":
        records = []
    if fmt == "parquet":
        return _write_parquet(path, columns, records, spec["parquet_damage"])
    if fmt == "jsonl":
        return _write_jsonl(path, columns, records, [m for _, m in rows], spec)
    return _write_delimited(path, columns, records, [m for _, m in rows], spec, "\t" if fmt == "tsv" else ",")


def _write_delimited(path, columns, records, mutations, spec, delimiter) -> int:
    lines = []
    for values, mutation in [(columns, "none")] + list(zip(records, mutations)):
        values = ["" if v is None else str(v) for v in values]
        if mutation == "ragged_short" and len(values) > 1:
            values = values[:-1]
        elif mutation == "ragged_long":
            values = values + ["extra"]
        buf = io.StringIO()
        # "\r\n" as the terminator, so that a value with a lone CR or LF is quoted (a lone CR ends a record
        # for every reader), then the newline this file uses
        csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerow(values)
        lines.append((buf.getvalue()[:-2] + spec["newline"], mutation))
    enc = spec["encoding"]
    if enc.startswith("utf-16"):
        path.write_bytes("".join(text for text, _ in lines).encode(enc))
        return len(records)
    newline = spec["newline"].encode()
    parts = []
    for text, mutation in lines:
        data = text.encode("latin-1" if enc == "latin-1" else "utf-8", errors="replace")
        if mutation == "bad_byte":  # before the terminator: the record stays one record
            data = data[: -len(newline)] + b"\xff" + newline
        parts.append(data)
    path.write_bytes((b"\xef\xbb\xbf" if enc == "utf-8-sig" else b"") + b"".join(parts))
    return len(records)


def _write_jsonl(path, columns, records, mutations, spec) -> int:
    out = []
    for values, mutation in zip(records, mutations):
        row = dict(zip(columns, values))  # a duplicated header column cannot exist in an object
        if mutation == "missing_key":
            row.pop(columns[-1], None)
        if mutation == "surrogate":
            row[columns[-1]] = "\ud800"
        line = json.dumps(row, ensure_ascii=mutation == "surrogate", default=str)  # default: bytes
        if mutation == "not_object":
            line = json.dumps(list(row.values()))
        elif mutation == "malformed":
            line = line[:-1]
        elif mutation == "deep":
            line = "[" * 100_000 + "]" * 100_000
        elif mutation == "big_int":
            line = line[:-1] + (", " if row else "") + '"n": ' + "9" * 5000 + "}"
        data = line.encode("utf-8") + (b"\xff" if mutation == "bad_byte" else b"") + spec["newline"].encode()
        out.append(data + (b"\n" if mutation == "none" and len(out) % 3 == 2 else b""))  # blank lines: no rows
    enc = spec["encoding"]
    body = b"".join(out)
    if enc.startswith("utf-16"):
        body = body.decode("utf-8", errors="replace").encode(enc)
    elif enc == "utf-8-sig":
        body = b"\xef\xbb\xbf" + body
    path.write_bytes(body)
    return len(records)


def _write_parquet(path, columns, records, damage) -> int:
    arrays = []
    for i, _ in enumerate(columns):
        values = [r[i] for r in records]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowException, OverflowError, TypeError, ValueError):  # mixed types: as text
            arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
    pq.write_table(pa.Table.from_arrays(arrays, names=columns), path)
    if damage == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"PAR1" + b"\x00\xff" * 50)
    return len(records)


# ----------------------------------------------------------------------------- the property


def _run(mapping, out, on_error):
    try:
        return import_dataset(mapping, out, on_error=on_error, fractions=(0.5, 0.25, 0.25)), None
    except UserError as e:  # anything else is a crash and fails the test with its traceback
        return None, e


def assert_clear(err: UserError, files: list[str]) -> None:
    """A UserError a user can act on: one line, of sane length, naming the file and the place in it."""
    msg = str(err)
    assert "\n" not in msg and len(msg) < 1000, msg
    assert "Traceback" not in msg
    if isinstance(err, InputError):  # nothing at all was left to import: about the whole dataset
        assert "no judgments left" in msg, msg
        return
    assert isinstance(err, DataError), f"{type(err).__name__}: {msg}"
    assert err.file in files and msg.startswith(err.file), msg
    assert err.where is None or LOCATION.fullmatch(err.where), msg
    # without a line or field, it is about the whole file: its encoding or its format
    assert err.where or err.field or any(k in msg for k in ("UTF-16", "Parquet", "zip", "JSON", "format")), msg


def check_accounting(ds, paths: dict, rows: dict) -> None:
    """Per file: every data row is in the output, merged into another, or counted as skipped."""
    rep = ds.card["report"]
    by_file = rep["skipped_by_file"]
    assert sum(by_file.values()) == sum(rep["skipped"].values())
    j = str(paths["judgments"])
    assert rows["judgments"] == len(ds.judgments) + rep["merged_duplicate_judgments"] + by_file.get(j, 0)
    if "products" in paths:
        assert rows["products"] == len(ds.products) + by_file.get(str(paths["products"]), 0)
    if "queries" in paths:
        assert rows["queries"] == (len(ds.queries) + rep["unjudged_queries_dropped"]
                                   + by_file.get(str(paths["queries"]), 0))
    # what is kept is clean: ids and texts are non-empty, grades 1-4, every judgment refers to kept rows
    assert ds.products["product_id"].str.strip().ne("").all() and ds.products["title"].str.strip().ne("").all()
    assert ds.queries["text"].str.strip().ne("").all() and ds.queries["query_id"].str.strip().ne("").all()
    assert ds.judgments["grade"].isin([1, 2, 3, 4]).all()
    assert ds.judgments["product_id"].isin(ds.products["product_id"]).all()
    assert ds.judgments["query_id"].isin(ds.queries["query_id"]).all()


@settings(max_examples=150, **SETTINGS)
@given(layout=st.sampled_from(sorted(LAYOUTS)), data=st.data())
def test_import_hostile_files(layout, data):
    specs = {t: data.draw(table_file(cols), label=t) for t, cols in LAYOUTS[layout].items()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = {t: tmp / f"{t}.{s['fmt']}" for t, s in specs.items()}
        rows = {t: write_file(paths[t], specs[t]) for t in specs}
        mapping = parse_mapping(files={t: str(p) for t, p in paths.items()})
        files = [str(p) for p in paths.values()]

        ds_raise, err_raise = _run(mapping, tmp / "out_raise", "raise")
        ds_skip, err_skip = _run(mapping, tmp / "out_skip", "skip")
        # --hypothesis-show-statistics: how often each outcome is reached (a fuzz that only ever fails at the
        # header tests little)
        event(f"raise: {'ok' if err_raise is None else type(err_raise).__name__}; "
              f"skip: {'ok' if err_skip is None else type(err_skip).__name__}")
        if err_raise is not None:
            assert_clear(err_raise, files)
        if err_skip is not None:
            assert_clear(err_skip, files)
            assert err_raise is not None  # skipping never fails where stopping at the first bad row succeeds
        if ds_raise is not None:
            assert ds_raise.card["report"]["skipped"] == {}
            check_accounting(ds_raise, paths, rows)
            assert ds_skip is not None and ds_skip.card["report"]["skipped"] == {}
            assert ds_skip.judgments.equals(ds_raise.judgments)
        if ds_skip is not None:
            check_accounting(ds_skip, paths, rows)
            if err_raise is not None and isinstance(err_raise, DataError):
                # the row that stopped the strict run is the first one the lenient run skipped
                assert ds_skip.card["report"]["skipped_examples"][0] == str(err_raise)
            back = load_dataset(tmp / "out_skip")
            assert len(back.judgments) == len(ds_skip.judgments) and len(back.products) == len(ds_skip.products)


# ----------------------------------------------------------------------------- read_rows on any bytes

BYTE_PIECES = [b",", b"\t", b'"', b"\n", b"\r\n", b"\r", b"\x00", b"\xff", b"\xc3", b"\xc3\xa9", b"\xef\xbb\xbf",
               b"\xff\xfe", b"{", b"}", b"[", b"]", b":", b'"a"', b"1", b"9" * 5000, b"query", b"title", b"PAR1",
               b"\\ud800", b"NaN", b"null"]
any_bytes = st.one_of(st.binary(max_size=200), st.lists(st.sampled_from(BYTE_PIECES), max_size=40).map(b"".join))


@settings(max_examples=150, **SETTINGS)
@given(data=any_bytes, fmt=st.sampled_from(["csv", "tsv", "jsonl", "json", "parquet"]),
       on_error=st.sampled_from(["raise", "skip"]))
@example(data=b"\xff\xfeq\x00u\x00e\x00r\x00y\x00\n\x00", fmt="csv", on_error="skip")  # UTF-16 with a BOM
@example(data=b"query,title\nlaptop,caf\xe9\n", fmt="csv", on_error="raise")  # latin-1
@example(data=b"a,b,a\n1,2,3\n", fmt="csv", on_error="skip")  # duplicate header
@example(data=b'{"a": ' + b"9" * 5000 + b"}\n", fmt="jsonl", on_error="raise")  # past int's digit limit
@example(data=b"[" * 100_000, fmt="json", on_error="raise")  # nesting past the recursion limit
@example(data=b'{"a": "\\ud800"}\n', fmt="jsonl", on_error="raise")  # a lone surrogate escape
@example(data=b"PAR1\x00\x00PAR1", fmt="parquet", on_error="skip")
@example(data=b'a,b\n1,"2\n3,4\n', fmt="csv", on_error="raise")  # an unclosed quote swallows the rest
def test_read_rows_on_any_bytes(data, fmt, on_error):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f.{fmt}"
        path.write_bytes(data)
        policy = ErrorPolicy(on_error)
        try:
            rows = list(read_rows(path, policy))
        except UserError as e:
            assert_clear(e, [str(path)])
            return
        for where, row in rows:
            assert LOCATION.fullmatch(where) and isinstance(row, dict)
            assert all(isinstance(k, str) for k in row)
            for v in row.values():  # text that cannot be written back (lone surrogates) never gets through
                if isinstance(v, str):
                    v.encode("utf-8")
        assert on_error == "skip" or policy.total_skipped == 0


@pytest.mark.parametrize("data, fmt, message", [
    (b"\xff\xfeq\x00,\x00", "csv", r"f.csv: UTF-16 .*save it as UTF-8"),
    (b"query,title\nlaptop,caf\xe9\n", "csv", r"f.csv:line 2: title: not UTF-8 \(byte 0xe9 at offset 22\)"),
    (b"a,b,a\n1,2,3\n", "csv", r"f.csv:header: a: duplicate column \(columns 1 and 3\)"),
    (b'{"a": 1}\n{"a": ' + b"9" * 5000 + b"}\n", "jsonl", r"f.jsonl:line 2: malformed JSON \(.*digits"),
    (b"[" * 100_000, "json", r"f.json: malformed JSON \(nested too deeply\)"),
    (b'{"a": "\\ud800"}\n', "jsonl", r"f.jsonl:line 1: a: invalid text \(a lone surrogate"),
    (b"PAR1\x00\x00PAR1", "parquet", r"f.parquet: not a readable Parquet file"),
    (b'a,b\n1,"2\n3,4\n', "csv", r"f.csv:line 2: an unclosed quote: the record runs from line 2 to line 3"),
    (b'a,b\n1,2\n"3,4\n5,6\n', "csv", r"f.csv:line 3: an unclosed quote: the record runs from line 3 to line 4"),
    (b'a,b\n"x\ny",1,2\n', "csv", r"f.csv:line 2: 3 fields, header has 2 \(the record runs from line 2 to line 3\)"),
    (b"\n1,2\n", "csv", r"f.csv:header: the first line \(the header\) is empty"),
    (b"q\x00u\x00e\x00r\x00y\x00\n\x00", "csv", r"f.csv:header: NUL bytes in the header"),
])
def test_hostile_files_name_file_line_and_field(tmp_path, data, fmt, message):
    path = tmp_path / f"f.{fmt}"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message):
        list(read_rows(path, ErrorPolicy("raise")))


def test_utf8_bom_and_crlf_read_like_plain_utf8(tmp_path):
    plain, bom = tmp_path / "plain.csv", tmp_path / "bom.csv"
    plain.write_bytes(b"query,title\nlaptop,caf\xc3\xa9\n")
    bom.write_bytes(b"\xef\xbb\xbfquery,title\r\nlaptop,caf\xc3\xa9\r\n")
    assert list(read_rows(plain, ErrorPolicy())) == list(read_rows(bom, ErrorPolicy()))
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"query": "laptop"}\r\n')
    assert list(read_rows(tmp_path / "bom.jsonl", ErrorPolicy())) == [("line 1", {"query": "laptop"})]


def test_a_record_spanning_lines_is_located_at_its_first_line(tmp_path):
    path = tmp_path / "j.csv"
    path.write_text('query,product_id,label\nlaptop,"P\n1",4\nmouse,P2,four,extra\n')
    with pytest.raises(DataError, match=r"j.csv:line 4: 4 field"):
        list(read_rows(path, ErrorPolicy()))
    policy = ErrorPolicy("skip")
    assert [w for w, _ in read_rows(path, policy)] == ["line 2"] and policy.skipped_by_file == {str(path): 1}


def test_invalid_bytes_in_one_row_are_skipped_and_counted(tmp_path):
    path = tmp_path / "j.tsv"
    path.write_bytes(b"query\tproduct_id\tlabel\nlaptop\tP1\t4\ncaf\xe9\tP2\t3\nmouse\tP3\t1\n")
    policy = ErrorPolicy("skip")
    assert [w for w, _ in read_rows(path, policy)] == ["line 2", "line 4"]
    assert policy.skipped == {"not UTF-8": 1}
    assert "j.tsv:line 3: query: not UTF-8 (byte 0xe9 at offset 38)" in policy.examples[0]


# ----------------------------------------------------------------------------- import regressions


def _import(tmp_path, files: dict[str, str], on_error="raise", **kw):
    paths = {}
    for table, (name, text) in files.items():
        paths[table] = tmp_path / name
        paths[table].write_bytes(text.encode() if isinstance(text, str) else text)
    mapping = parse_mapping(files={t: str(p) for t, p in paths.items()}, **kw)
    return import_dataset(mapping, tmp_path / "out", on_error=on_error, fractions=(0.5, 0.25, 0.25))


def test_a_jsonl_queries_file_without_a_key_is_a_located_error(tmp_path):
    files = {"queries": ("q.jsonl", '{"query_id": "q1", "text": "laptop"}\n{"query_id": "q2"}\n'),
             "judgments": ("j.csv", "query_id,product_id,title,label\nq1,P1,a laptop,4\nq2,P1,a laptop,3\n")}
    with pytest.raises(DataError, match=r"q.jsonl:line 2: text: missing or empty"):
        _import(tmp_path, files)
    ds = _import(tmp_path, files, "skip")
    assert ds.card["report"]["skipped"] == {"missing text": 1, "unknown query": 1}


def test_float_ids_in_jsonl_match_their_integer_form(tmp_path):
    # 3.0 and 3 are one product: the second row must not add product "3" again (a duplicate product_id)
    files = {"judgments": ("j.jsonl", ('{"query": "laptop", "product_id": 3.0, "title": "a laptop", "label": 4}\n'
                                      '{"query": "mouse", "product_id": 3.0, "title": "a laptop", "label": 1}\n'))}
    ds = _import(tmp_path, files)
    assert ds.products["product_id"].tolist() == ["3"] and len(ds.judgments) == 2


def test_a_row_whose_product_is_bad_is_counted_once(tmp_path):
    files = {"judgments": ("j.csv", ("query,product_id,title,label,price\nlaptop,P1,a laptop,4,1\n"
                                    "laptop,P2,a bag,2,abc\n"))}
    ds = _import(tmp_path, files, "skip")
    assert ds.card["report"]["skipped"] == {"bad price": 1}  # not also "unknown product"


def test_whitespace_only_query_text_is_missing(tmp_path):
    files = {"judgments": ("j.csv", "query,product_id,title,label\nlaptop,P1,a laptop,4\n   ,P1,a laptop,3\n")}
    with pytest.raises(DataError, match=r"j.csv:line 3: query: missing or empty"):
        _import(tmp_path, files)


def test_a_duplicate_query_id_in_the_queries_file_is_counted(tmp_path):
    files = {"queries": ("q.csv", "query_id,text\nq1,laptop\nq1,notebook\n"),
             "judgments": ("j.csv", "query_id,product_id,title,label\nq1,P1,a laptop,4\n")}
    with pytest.raises(DataError, match=r"q.csv:line 3: query_id: duplicate query 'q1' \(first at line 2\)"):
        _import(tmp_path, files)
    assert _import(tmp_path, files, "skip").card["report"]["skipped_by_file"] == {str(tmp_path / "q.csv"): 1}


def test_a_price_too_large_for_a_float_is_a_bad_price(tmp_path):
    files = {"judgments": ("j.jsonl", '{"query": "laptop", "product_id": "P1", "title": "a laptop", "label": 4, '
                                      '"price": 1' + "0" * 400 + "}\n")}
    with pytest.raises(DataError, match=r"j.jsonl:line 1: price: 10000.*\(401 characters\) is not a number"):
        _import(tmp_path, files)


def test_a_huge_value_is_shortened_in_the_message(tmp_path):
    files = {"judgments": ("j.csv", "query,product_id,title,label\nlaptop,P1,a laptop," + "x" * 100_000 + "\n")}
    with pytest.raises(DataError, match=r"j.csv:line 2: label: unknown label 'xxx.*\(100002 characters\)") as e:
        _import(tmp_path, files)
    assert len(str(e.value)) < 300


# ----------------------------------------------------------------------------- the mapping


KEYS = ["products", "queries", "judgments", "labels", "file", "columns", "attributes", "format", "product_id",
        "title", "query", "label", "query_id", "text", "bogus"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 6), st.floats(allow_nan=False, width=16),
                    st.sampled_from(["4", "Exact", "csv", "jsonl", "[", "4.5", "²", "$FILE"]), st.text(max_size=6))
mapping_doc = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)), max_leaves=12)


@settings(max_examples=100, **SETTINGS)
@given(doc=st.one_of(mapping_doc, st.dictionaries(st.sampled_from(KEYS[:4]), mapping_doc, max_size=4)),
       raw=st.one_of(st.none(), st.text(max_size=30)),
       flags=st.lists(st.one_of(st.text(max_size=15), st.sampled_from(
           ["judgments.label=rel", "products.title=name", "x.y=z", "judgments.=a", "=", "judgments.label"])),
           max_size=3),
       labels=st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["Exact=4,Bad=1", "A=²", "A=9", "A=4,,"])))
@example(doc=None, raw="judgments: [", flags=[], labels=None)  # invalid YAML
@example(doc=None, raw="a: 2024-13-45", flags=[], labels=None)  # a date yaml cannot build
@example(doc=["judgments"], raw=None, flags=[], labels=None)  # not a mapping
@example(doc={"judgments": 3}, raw=None, flags=[], labels=None)
@example(doc={"judgments": {"file": "$FILE", "columns": ["a"]}}, raw=None, flags=[], labels=None)
@example(doc={"judgments": {"file": "$FILE"}, "labels": {"4": "four"}}, raw=None, flags=[], labels=None)
@example(doc={"judgments": {"file": "$FILE"}, "labels": {"4": 4.5}}, raw=None, flags=[], labels=None)
@example(doc={"judgments": {"file": "$FILE"}}, raw=None, flags=[], labels="A=²")
def test_any_mapping_is_accepted_or_a_config_error(doc, raw, flags, labels):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        judgments = tmp / "j.csv"
        judgments.write_text("query,product_id,title,label\nlaptop,P1,a laptop,4\nmouse,P2,a mouse,3\n")
        text = raw if raw is not None else yaml.safe_dump(doc)
        (tmp / "m.yaml").write_text(text.replace("$FILE", str(judgments)))
        try:
            mapping = parse_mapping(str(tmp / "m.yaml"), flags, {"judgments": str(judgments)}, labels)
            import_dataset(mapping, tmp / "out", on_error="skip")
        except UserError as e:
            assert "\n" not in str(e) and len(str(e)) < 1000, str(e)
            assert isinstance(e, (ConfigError, DataError, InputError)) or "no such file" in str(e), repr(e)
