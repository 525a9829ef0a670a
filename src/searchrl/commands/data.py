"""``searchrl data ...``: prepare a dataset by name, import a team's files, add rule-graded synthetic pairs, stats.
"""

from __future__ import annotations

from searchrl.data.importer import import_dataset, parse_mapping
from searchrl.data.prepare import prepare, stats_table
from searchrl.data.schema import load_dataset, write_dataset
from searchrl.errors import ConfigError
from searchrl.relevance.rules.engine import RuleEngine
from searchrl.relevance.rules.synthetic import synthetic_dataset


def _kv(items: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        out[k] = v
    return out


def cmd_data_prepare(a) -> None:
    options = _kv(a.option, "--option")
    ds = prepare(a.name, a.out or f"data/{a.name}", a.mirror, seed=a.seed, fractions=a.fractions,
                 on_error=a.on_error, pins=_kv(a.pin, "--pin"), download=not a.no_download, **options)
    _print_report(ds, a.out or f"data/{a.name}")


def cmd_data_import(a) -> None:
    mapping = parse_mapping(a.mapping, a.map, {"products": a.products, "queries": a.queries,
                                               "judgments": a.judgments}, a.labels)
    ds = import_dataset(mapping, a.out, name=a.name, seed=a.seed, fractions=a.fractions, on_error=a.on_error)
    _print_report(ds, a.out)


def _print_report(ds, out) -> None:
    print(f"wrote {out}")
    print(stats_table(ds))
    rep = ds.card["report"]
    if rep["skipped"]:
        print(f"skipped {sum(rep['skipped'].values())} bad row(s): {rep['skipped']}")
        for line in rep["skipped_examples"]:
            print(f"  {line}")
    if rep["merged_duplicate_judgments"]:
        print(f"merged {rep['merged_duplicate_judgments']} duplicate judgment(s) with equal grades")
    if rep["unjudged_queries_dropped"]:
        print(f"dropped {rep['unjudged_queries_dropped']} quer(ies) without judgments")


def cmd_data_synthetic(a) -> None:
    if a.queries < 1 or a.per_query < 1:
        raise ConfigError(f"--queries and --per-query must be >= 1, got {a.queries}, {a.per_query}")
    ds = synthetic_dataset(load_dataset(a.data), RuleEngine.from_yaml(a.rules or None), a.queries, a.per_query,
                           a.seed, a.split)
    write_dataset(ds, a.out)
    print(f"wrote {a.out}")
    print(stats_table(ds))


def cmd_data_stats(a) -> None:
    print(stats_table(load_dataset(a.dir)))
