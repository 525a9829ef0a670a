"""``searchrl data import``: a team's own CSV/TSV/JSONL/Parquet files to the canonical form.

The mapping says, per table, which source column feeds each canonical field::

    products:  {file: catalogue.parquet, columns: {product_id: sku, title: name, brand: brand},
                attributes: [colour, size]}      # extra columns kept as attributes
    queries:   {file: queries.csv, columns: {query_id: qid, text: query}}   # optional
    judgments: {file: labels.jsonl, columns: {query_id: qid, product_id: sku, label: rel}}
    labels:    {"Exact": 4, "Partial": 3, "Irrelevant": 1}                  # optional

Without a queries file the judgments must carry the query text (column ``query``);
ids are then q0001, q0002, ... in order of first appearance. Without a products file
the product fields are read from the judgments rows. Without a label map the labels
must already be grades 1-4. Unmapped canonical fields default to the same column name.
"""

from __future__ import annotations

from pathlib import Path

from searchrl.config import read_config_text, safe_load_yaml
from searchrl.data.prepare import DEFAULT_FRACTIONS, build_dataset
from searchrl.data.readers import clean_id, clean_text, columns_of, read_rows, require_columns, require_fields
from searchrl.data.schema import Dataset, ErrorPolicy, write_dataset
from searchrl.data.sources import QueryIds, map_label
from searchrl.data.tables import TableBuilder
from searchrl.errors import ConfigError, shown

MAPPABLE_PRODUCT_FIELDS = ("product_id", "title", "brand", "description", "category", "price", "quality")
TABLES = {"products": MAPPABLE_PRODUCT_FIELDS, "queries": ("query_id", "text"),
          "judgments": ("query_id", "query", "product_id", "label")}
IDENTITY_LABELS = {str(g): g for g in (1, 2, 3, 4)}
FORMATS = ("csv", "tsv", "jsonl", "json", "json-zip", "parquet")  # what read_rows reads


def parse_mapping(yaml_path: str | None = None, flags: list[str] | None = None,
                  files: dict[str, str | None] | None = None, labels: str | None = None) -> dict:
    """Merge a YAML mapping with ``--map table.field=column`` flags, ``--products/--queries/
    --judgments FILE`` and ``--labels A=4,B=3``; flags win. Unknown tables/fields are errors, and so is
    a value of the wrong kind (a list where a mapping belongs, a label mapped to "four")."""
    m = _read_mapping(yaml_path) if yaml_path else {}
    where = yaml_path or "mapping"
    unknown = set(m) - set(TABLES) - {"labels"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(map(str, unknown))}; expected {sorted(TABLES)} and labels")
    for table, spec in m.items():
        if table == "labels":
            if not isinstance(spec or {}, dict):
                raise ConfigError(f"{where}: labels: expected a mapping of LABEL: GRADE, got {shown(spec)}")
            continue
        if not isinstance(spec or {}, dict):
            raise ConfigError(f"{where}: {table}: expected a mapping (file, columns, attributes, format), "
                              f"got {shown(spec)}")
        m[table] = spec = dict(spec or {})
        bad = set(spec) - {"file", "columns", "attributes", "format"}
        if bad:
            raise ConfigError(f"{where}: {table}: unknown key(s) {sorted(map(str, bad))}")
        if "file" in spec and not isinstance(spec["file"], str):
            raise ConfigError(f"{where}: {table}.file: expected a path, got {shown(spec['file'])}")
        if "format" in spec and spec["format"] not in FORMATS:
            raise ConfigError(f"{where}: {table}.format: expected one of {list(FORMATS)}, got {shown(spec['format'])}")
        columns = spec.get("columns") or {}
        if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
            raise ConfigError(f"{where}: {table}.columns: expected a mapping of FIELD: COLUMN, got {shown(columns)}")
        spec["columns"] = {str(k): v for k, v in columns.items()}
        attributes = spec.get("attributes") or []
        if not isinstance(attributes, list) or not all(isinstance(a, str) for a in attributes):
            raise ConfigError(f"{where}: {table}.attributes: expected a list of column names, got {shown(attributes)}")
        spec["attributes"] = attributes
    for table, path in (files or {}).items():
        if path:
            m.setdefault(table, {})["file"] = path
    for flag in flags or []:
        key, sep, column = flag.partition("=")
        table, dot, field = key.partition(".")
        if not (sep and dot) or table not in TABLES:
            raise ConfigError(f"--map {flag!r}: expected TABLE.FIELD=COLUMN with TABLE in {sorted(TABLES)}")
        m.setdefault(table, {}).setdefault("columns", {})[field] = column
    if labels:
        m["labels"] = {}
        for part in labels.split(","):
            k, sep, v = part.partition("=")
            if not sep or not (v.strip().isascii() and v.strip().isdigit()):  # "²".isdigit(), but int("²") fails
                raise ConfigError(f"--labels {labels!r}: expected LABEL=GRADE pairs, e.g. Exact=4,Partial=3")
            m["labels"][k.strip()] = int(v)
    for table, spec in m.items():
        if table != "labels":
            bad = set((spec or {}).get("columns", {})) - set(TABLES[table])
            if bad:
                raise ConfigError(f"mapping for {table}: unknown field(s) {sorted(bad)}; "
                                  f"canonical fields are {list(TABLES[table])}")
    if "judgments" not in m or "file" not in m["judgments"]:
        raise ConfigError("a judgments file is required (--judgments FILE or judgments.file in the mapping)")
    if "queries" in m and "file" not in (m["queries"] or {}):
        raise ConfigError("a queries mapping is given but no queries file (--queries FILE or queries.file); "
                          "without one, the judgments carry the query text: map it with --map judgments.query=COLUMN")
    return m


def _read_mapping(yaml_path: str) -> dict:
    m = safe_load_yaml(read_config_text(yaml_path, "mapping"), yaml_path) or {}
    if not isinstance(m, dict):
        raise ConfigError(f"{yaml_path}: expected a mapping at the top level (products, queries, judgments, "
                          f"labels), got {shown(m)}")
    return m


def _label_map(mapping: dict) -> dict[str, int]:
    labels = {}
    for k, v in (mapping.get("labels") or IDENTITY_LABELS).items():
        # a grade is a whole number 1-4: a YAML 4 or "4"; not 4.5 (int() would make it 4), true or "four"
        grade = None
        if isinstance(v, int) and not isinstance(v, bool):
            grade = v
        elif isinstance(v, str) and v.strip().isascii() and v.strip().isdigit():
            grade = int(v)
        if grade not in (1, 2, 3, 4):
            raise ConfigError(f"label map: grades must be 1-4, got {shown(k)}: {shown(v)}")
        labels[str(k)] = grade
    return labels


def import_dataset(mapping: dict, out: str | Path, *, name: str = "custom", seed: int = 0,
                   fractions=DEFAULT_FRACTIONS, on_error: str = "raise") -> Dataset:
    policy = ErrorPolicy(on_error)
    b = TableBuilder(policy)
    labels = _label_map(mapping)

    def col(table, field):
        return (mapping.get(table) or {}).get("columns", {}).get(field, field)

    def add_product(path, where, row, attrs_cols) -> bool:
        return b.add_product(path, where, row.get(col("products", "product_id")), row.get(col("products", "title")),
                             brand=row.get(col("products", "brand")),
                             description=row.get(col("products", "description")),
                             category=row.get(col("products", "category")),
                             attributes={c: row[c] for c in attrs_cols if row.get(c) not in (None, "")},
                             price=row.get(col("products", "price")), quality=row.get(col("products", "quality")))

    # a products mapping without a file names the product columns of the judgments rows
    prod = mapping.get("products") if (mapping.get("products") or {}).get("file") else None
    if prod:
        path = Path(prod["file"])
        fmt = prod.get("format")
        require_columns(path, columns_of(path, fmt), [col("products", "product_id"), col("products", "title")])
        for where, row in read_rows(path, policy, fmt):
            add_product(path, where, row, prod.get("attributes", []))

    qids = QueryIds()
    q = mapping.get("queries")
    if q:
        path = Path(q["file"])
        id_col, text_col = col("queries", "query_id"), col("queries", "text")
        require_columns(path, columns_of(path, q.get("format")), [id_col, text_col])
        first_at: dict[str, str] = {}
        for where, row in read_rows(path, policy, q.get("format")):
            if not require_fields(path, where, row, [id_col, text_col], policy):
                continue
            qid = clean_id(row[id_col])
            if qid in first_at:  # like a duplicate product: which text is meant cannot be told
                policy.bad(path, where, id_col, f"duplicate query {shown(qid)} (first at {first_at[qid]})",
                           "duplicate query_id")
                continue
            first_at[qid] = where
            b.add_query(qid, row[text_col])

    j = mapping["judgments"]
    path = Path(j["file"])
    key = col("judgments", "query_id") if q else col("judgments", "query")
    required = [key, col("judgments", "product_id"), col("judgments", "label")]
    if not prod:
        required.append(col("products", "title"))
    require_columns(path, columns_of(path, j.get("format")), required)
    attrs = (mapping.get("products") or {}).get("attributes", [])
    for where, row in read_rows(path, policy, j.get("format")):
        if not require_fields(path, where, row, required, policy):
            continue
        grade = map_label(row[col("judgments", "label")], labels, path, where, col("judgments", "label"), policy)
        if grade is None:
            continue
        qid = clean_id(row[key]) if q else b.add_query(qids(clean_text(row[key])), row[key])
        pid = clean_id(row[col("judgments", "product_id")])
        # a row whose product cannot be added is reported once, not again as "unknown product"
        if not prod and pid not in b.products and not add_product(path, where, row, attrs):
            continue
        b.add_judgment(path, where, qid, pid, grade, row[col("judgments", "label")])

    provenance = {"imported_from": {t: str(mapping[t]["file"]) for t in TABLES if (mapping.get(t) or {}).get("file")},
                  "mapping": {t: mapping[t].get("columns", {}) for t in TABLES if t in mapping}}
    ds = build_dataset(b, policy, name=name, label_map=labels, seed=seed, fractions=fractions,
                       provenance=provenance)
    write_dataset(ds, out)
    return ds
