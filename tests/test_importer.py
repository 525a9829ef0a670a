import json

import pandas as pd
import pytest
import yaml

from searchrl.cli import main
from searchrl.data.importer import import_dataset, parse_mapping
from searchrl.data.schema import DataError, load_dataset

PRODUCTS = "sku,name,maker,colour\nP1,Dell XPS 13 laptop,Dell,silver\nP2,Laptop sleeve 13 inch,Targus,black\nP3,USB-C cable,Anker,\n"
JUDGMENTS = ("query,sku,rel\nlaptop,P1,Exact\nlaptop,P2,Partial\nusb c cable,P3,Exact\nusb c cable,P1,Irrelevant\n"
             "usb c cable,P1,Irrelevant\n")  # the last row repeats a pair with the same grade: merged, counted


def _files(tmp_path, judgments=JUDGMENTS, products=PRODUCTS):
    (tmp_path / "products.csv").write_text(products)
    (tmp_path / "judgments.csv").write_text(judgments)
    return parse_mapping(flags=["products.product_id=sku", "products.title=name", "products.brand=maker",
                                "judgments.product_id=sku", "judgments.label=rel"],
                         files={"products": str(tmp_path / "products.csv"),
                                "judgments": str(tmp_path / "judgments.csv")},
                         labels="Exact=4,Partial=3,Irrelevant=1")


def test_import_csv_with_flag_mapping(tmp_path):
    ds = import_dataset(_files(tmp_path), tmp_path / "out", fractions=(0.5, 0.0, 0.5))
    assert len(ds.products) == 3 and len(ds.judgments) == 4
    assert ds.card["report"]["merged_duplicate_judgments"] == 1
    j = ds.judgments.set_index(["query_id", "product_id"])["grade"]
    assert j[("q0001", "P2")] == 3 and j[("q0002", "P1")] == 1
    assert load_dataset(tmp_path / "out").products.set_index("product_id").loc["P1", "brand"] == "Dell"


def test_import_jsonl_and_parquet_with_yaml_mapping(tmp_path):
    pd.DataFrame({"sku": ["P1", "P2"], "name": ["a laptop", "a mouse"], "colour": ["red", "blue"]}).to_parquet(
        tmp_path / "p.parquet")
    (tmp_path / "q.csv").write_text("qid,q\n10,laptop\n11,mouse\n")
    (tmp_path / "j.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"qid": "10", "sku": "P1", "grade": 4}, {"qid": "11", "sku": "P2", "grade": 4},
        {"qid": "11", "sku": "P1", "grade": 1}]) + "\n")
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({
        "products": {"file": str(tmp_path / "p.parquet"), "columns": {"product_id": "sku", "title": "name"},
                     "attributes": ["colour"]},
        "queries": {"file": str(tmp_path / "q.csv"), "columns": {"query_id": "qid", "text": "q"}},
        "judgments": {"file": str(tmp_path / "j.jsonl"),
                      "columns": {"query_id": "qid", "product_id": "sku", "label": "grade"}}}))
    ds = import_dataset(parse_mapping(str(tmp_path / "m.yaml")), tmp_path / "out")
    assert sorted(ds.queries["query_id"]) == ["10", "11"]
    assert json.loads(ds.products.set_index("product_id").loc["P1", "attributes"]) == {"colour": "red"}
    assert ds.judgments["grade"].tolist() == [4, 4, 1]


@pytest.mark.parametrize("judgments, match, reason", [
    ("query,sku,rel\nlaptop,P1,Exact\nlaptop,P2,Great\n", r"judgments.csv:line 3: rel: unknown label 'Great'",
     "unknown label"),
    ("query,sku,rel\nlaptop,P1,Exact\nlaptop,P2\n", r"judgments.csv:line 3: fewer fields", "malformed row"),
    ("query,sku,rel\nlaptop,P1,Exact\nlaptop,P1,Partial\n",
     r"judgments.csv:line 3: grade: conflicting grades .* at .*judgments.csv:line 2", "conflicting duplicate"),
    ("query,sku,rel\nlaptop,P1,Exact\nlaptop,P9,Exact\n",
     r"judgments.csv:line 3: product_id: product 'P9' is not in the catalogue", "unknown product"),
    ("query,sku,rel\nlaptop,P1,Exact\n,P2,Exact\n", r"judgments.csv:line 3: query: missing", "missing query"),
])
def test_bad_rows_raise_or_are_counted(tmp_path, judgments, match, reason):
    with pytest.raises(DataError, match=match):
        import_dataset(_files(tmp_path, judgments), tmp_path / "out")
    ds = import_dataset(_files(tmp_path, judgments), tmp_path / "out", on_error="skip")
    assert ds.card["report"]["skipped"] == {reason: 1}
    assert len(ds.judgments) == 1


def test_missing_column_is_always_an_error(tmp_path):
    with pytest.raises(DataError, match=r"judgments.csv:header: rel: missing column"):
        import_dataset(_files(tmp_path, "query,sku\nlaptop,P1\n"), tmp_path / "out", on_error="skip")


def test_bad_mapping(tmp_path):
    with pytest.raises(ValueError, match="unknown field"):
        parse_mapping(flags=["products.colour=c"], files={"judgments": "j.csv"})
    with pytest.raises(ValueError, match="judgments file is required"):
        parse_mapping(flags=["products.title=n"])
    (tmp_path / "m.yaml").write_text("judgment: {file: x}\n")
    with pytest.raises(ValueError, match="m.yaml: unknown key"):
        parse_mapping(str(tmp_path / "m.yaml"))


def test_cli_import_and_stats(tmp_path, capsys):
    _files(tmp_path)
    rc = main(["data", "import", "--products", str(tmp_path / "products.csv"), "--judgments",
               str(tmp_path / "judgments.csv"), "--map", "products.product_id=sku", "--map", "products.title=name",
               "--map", "judgments.product_id=sku", "--map", "judgments.label=rel",
               "--labels", "Exact=4,Partial=3,Irrelevant=1", "--out", str(tmp_path / "o")])
    assert rc == 0 and "merged 1 duplicate" in capsys.readouterr().out
    assert main(["data", "stats", str(tmp_path / "o")]) == 0
    assert "judgments 4" in capsys.readouterr().out
    rc = main(["data", "import", "--judgments", str(tmp_path / "judgments.csv"), "--labels", "Exact=4",
               "--map", "judgments.product_id=sku", "--map", "judgments.label=rel", "--out", str(tmp_path / "x")])
    assert rc == 2 and "header: title: missing column" in capsys.readouterr().err
