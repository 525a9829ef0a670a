import json

import pandas as pd
import pytest
from conftest import FIXTURES, MIRROR

from searchrl.data.registry import fetch
from searchrl.data.schema import DataError, ErrorPolicy
from searchrl.data.sources import load_chorus, load_esci, load_wands


def test_chorus_full_mirror(mirror):
    b = load_chorus(fetch("chorus", mirror=mirror), ErrorPolicy())
    products, queries, judgments = b.finish()
    assert (len(products), len(queries), len(judgments)) == (19406, 135, 3668)
    assert judgments["grade"].value_counts().sort_index().tolist() == [1853, 238, 105, 1472]
    # rating 0-3 -> grade 1-4, source label kept
    assert (judgments["grade"] == judgments["label"].astype(int) + 1).all()
    # three raters where the individual-ratings file knows the pair (3,188 pairs), agreement in [0, 1]
    assert int(judgments["raters"].notna().sum()) == 3188
    assert judgments["agreement"].dropna().between(0, 1).all()
    hp = products.set_index("product_id").loc["2101957"]
    assert hp["brand"] == "HP" and hp["category"] == "Notebook"
    assert json.loads(hp["attributes"])["product_colour"] == "Silver"


def test_chorus_unknown_label_names_file_line_field(mirror, tmp_path):
    files = fetch("chorus", mirror=mirror)
    bad = tmp_path / "Broad_Query_Set_rated.csv"
    bad.write_text("query,docid,rating\nlaptop,1229111,0\nlaptop,2060476,7\n")
    files["Broad_Query_Set_rated.csv"] = bad
    with pytest.raises(DataError, match=r"Broad_Query_Set_rated.csv:line 3: rating: unknown label '7'"):
        load_chorus(files, ErrorPolicy())
    policy = ErrorPolicy("skip")
    _, _, j = load_chorus(files, policy).finish()
    assert len(j) == 1 and policy.skipped == {"unknown label": 1}


def test_esci_vespa_fixture(mirror):
    files = fetch("esci-sample", mirror=mirror)
    products, queries, judgments = load_esci(files["test-sample.parquet"], files["sample-products.jsonl"],
                                             ErrorPolicy()).finish()
    raw = pd.read_parquet(files["test-sample.parquet"])
    assert len(judgments) == len(raw) == 16 and len(products) == 16
    assert queries["text"].tolist() == [raw["query"].iloc[0]]
    want = raw.set_index("product_id")["esci_label"].map({"E": 4, "S": 3, "C": 2, "I": 1})
    got = judgments.set_index("product_id")["grade"]
    assert (got.loc[want.index] == want).all()
    assert "<b>" not in products["description"].iloc[0]  # HTML stripped


def _esci_upstream_fixture(tmp_path):
    """A few rows in the real ESCI parquet formats (examples + products)."""
    ex = pd.DataFrame({
        "example_id": [0, 1, 2, 3, 4], "query": ["usb c cable"] * 3 + ["gaming mouse", "gaming mouse"],
        "query_id": [7, 7, 7, 9, 9], "product_id": ["A1", "A2", "A3", "A4", "A1"],
        "product_locale": ["us", "us", "us", "us", "es"], "esci_label": ["E", "S", "C", "I", "E"],
        "small_version": [1, 1, 0, 1, 1], "large_version": [1, 1, 1, 1, 1],
        "split": ["train", "train", "test", "test", "train"]})
    pr = pd.DataFrame({
        "product_id": ["A1", "A2", "A3", "A4", "A1"],
        "product_title": ["USB-C cable 1m", "USB-C to USB-A cable", "USB-C charger", "Mouse pad", "Cable USB-C"],
        "product_description": ["<p>braided</p>", None, "fast", "soft", "trenzado"],
        "product_bullet_point": ["1m", None, None, None, None], "product_brand": ["Anker", "Ugreen", "Anker", None, "Anker"],
        "product_color": ["black", None, None, "grey", None], "product_locale": ["us", "us", "us", "us", "es"]})
    ex.to_parquet(tmp_path / "examples.parquet")
    pr.to_parquet(tmp_path / "products.parquet")
    return tmp_path / "examples.parquet", tmp_path / "products.parquet"


def test_esci_upstream_format_locale_and_version(tmp_path):
    ex, pr = _esci_upstream_fixture(tmp_path)
    products, queries, judgments = load_esci(ex, pr, ErrorPolicy()).finish()
    # us locale, small version: A3 (large only) and the es row are out
    assert sorted(judgments["product_id"]) == ["A1", "A2", "A4"]
    assert dict(zip(judgments["product_id"], judgments["grade"])) == {"A1": 4, "A2": 3, "A4": 1}
    assert set(queries["source_split"]) == {"train", "test"}
    assert len(products) == 4  # the us catalogue
    products, _, judgments = load_esci(ex, pr, ErrorPolicy(), locale=None, version="all").finish()
    assert "es/A1" in set(judgments["product_id"]) and len(products) == 5


def test_esci_missing_column(tmp_path):
    ex, pr = _esci_upstream_fixture(tmp_path)
    pd.read_parquet(ex).drop(columns=["esci_label"]).to_parquet(ex)
    with pytest.raises(DataError, match="examples.parquet:header: esci_label: missing column"):
        load_esci(ex, pr, ErrorPolicy())


def test_wands_fixture_and_own_files(mirror):
    query = mirror / "fixtures" / "wands" / "query.csv"
    products, queries, judgments = load_wands(FIXTURES / "wands" / "product.csv", query,
                                              FIXTURES / "wands" / "label.csv", ErrorPolicy()).finish()
    assert len(queries) == 480  # the real query file
    assert queries.set_index("query_id").loc["0", "text"] == "salon chair"
    assert dict(zip(judgments["product_id"] + "@" + judgments["query_id"], judgments["grade"])) == {
        "1@0": 4, "0@0": 1, "2@1": 3, "3@2": 4, "0@2": 1}
    p = products.set_index("product_id")
    assert p.loc["0", "quality"] == pytest.approx(0.9) and pd.isna(p.loc["1", "quality"])
    assert json.loads(p.loc["0", "attributes"])["producttype"] == "bed"
    assert p.loc["2", "category"] == "Coffee & Cocktail Tables"


def test_wands_malformed_row_and_unknown_product(tmp_path):
    label = tmp_path / "label.csv"
    label.write_text("id\tquery_id\tproduct_id\tlabel\n0\t0\t1\tExact\n1\t0\t99\tExact\n2\t1\n")
    args = (FIXTURES / "wands" / "product.csv", MIRROR / "fixtures" / "wands" / "query.csv", label)
    if not args[1].exists():
        pytest.skip("no mirror")
    with pytest.raises(DataError, match=r"label.csv:line 4: fewer fields"):
        load_wands(*args, ErrorPolicy())
    policy = ErrorPolicy("skip")
    b = load_wands(*args, policy)
    _, _, j = b.finish()
    assert len(j) == 1
    assert policy.skipped == {"malformed row": 1, "unknown product": 1}
    assert any("label.csv:line 3: product_id: product '99' is not in the catalogue" in m for m in policy.examples)
