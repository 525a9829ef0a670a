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

import yaml

from ..errors import ConfigError
from .prepare import DEFAULT_FRACTIONS, build_dataset
from .schema import Dataset, ErrorPolicy, write_dataset
from .sources import QueryIds, map_label
from .tables import TableBuilder, columns_of, read_rows, require_columns

MAPPABLE_PRODUCT_FIELDS = ("product_id", "title", "brand", "description", "category", "price", "quality")
TABLES = {"products": MAPPABLE_PRODUCT_FIELDS, "queries": ("query_id", "text"),
          "judgments": ("query_id", "query", "product_id", "label")}
IDENTITY_LABELS = {str(g): g for g in (1, 2, 3, 4)}


def parse_mapping(yaml_path: str | None = None, flags: list[str] | None = None,
                  files: dict[str, str | None] | None = None, labels: str | None = None) -> dict:
    """Merge a YAML mapping with ``--map table.field=column`` flags, ``--products/--queries/
    --judgments FILE`` and ``--labels A=4,B=3``; flags win. Unknown tables/fields are errors."""
    m: dict = yaml.safe_load(Path(yaml_path).read_text()) if yaml_path else {}
    m = m or {}
    unknown = set(m) - set(TABLES) - {"labels"}
    if unknown:
        raise ConfigError(f"{yaml_path}: unknown key(s) {sorted(unknown)}; expected {sorted(TABLES)} and labels")
    for table, spec in m.items():
        if table == "labels":
            continue
        bad = set(spec or {}) - {"file", "columns", "attributes", "format"}
        if bad:
            raise ConfigError(f"{yaml_path}: {table}: unknown key(s) {sorted(bad)}")
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
            if not sep or not v.strip().isdigit():
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


def import_dataset(mapping: dict, out: str | Path, *, name: str = "custom", seed: int = 0,
                   fractions=DEFAULT_FRACTIONS, on_error: str = "raise") -> Dataset:
    policy = ErrorPolicy(on_error)
    b = TableBuilder(policy)
    labels = {str(k): int(v) for k, v in (mapping.get("labels") or IDENTITY_LABELS).items()}
    bad = {k: v for k, v in labels.items() if v not in (1, 2, 3, 4)}
    if bad:
        raise ConfigError(f"label map: grades must be 1-4, got {bad}")

    def col(table, field):
        return mapping.get(table, {}).get("columns", {}).get(field, field)

    def add_product(path, where, row, attrs_cols):
        b.add_product(path, where, row.get(col("products", "product_id")), row.get(col("products", "title")),
                      brand=row.get(col("products", "brand")), description=row.get(col("products", "description")),
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
        require_columns(path, columns_of(path, q.get("format")), [col("queries", "query_id"), col("queries", "text")])
        for where, row in read_rows(path, policy, q.get("format")):
            b.add_query(row[col("queries", "query_id")], row[col("queries", "text")])

    j = mapping["judgments"]
    path = Path(j["file"])
    key = col("judgments", "query_id") if q else col("judgments", "query")
    required = [key, col("judgments", "product_id"), col("judgments", "label")]
    if not prod:
        required.append(col("products", "title"))
    require_columns(path, columns_of(path, j.get("format")), required)
    for where, row in read_rows(path, policy, j.get("format")):
        missing = [c for c in required if row.get(c) in (None, "")]
        if missing:
            policy.bad(path, where, missing[0], "missing or empty", f"missing {missing[0]}")
            continue
        grade = map_label(row[col("judgments", "label")], labels, path, where, col("judgments", "label"), policy)
        if grade is None:
            continue
        qid = str(row[key]).strip() if q else b.add_query(qids(str(row[key])), row[key])
        if not prod and str(row[col("products", "product_id")]).strip() not in b.products:
            add_product(path, where, row, mapping.get("products", {}).get("attributes", []))
        b.add_judgment(path, where, qid, row[col("judgments", "product_id")], grade, row[col("judgments", "label")])

    provenance = {"imported_from": {t: str(mapping[t]["file"]) for t in TABLES if (mapping.get(t) or {}).get("file")},
                  "mapping": {t: mapping[t].get("columns", {}) for t in TABLES if t in mapping}}
    ds = build_dataset(b, policy, name=name, label_map=labels, seed=seed, fractions=fractions,
                       provenance=provenance)
    write_dataset(ds, out)
    return ds
