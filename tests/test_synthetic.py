"""Synthetic rule-graded pairs: shopper-style queries, held-out queries and products kept out, rule grades."""

import numpy as np
import pandas as pd
import pytest

from searchrl.data.schema import Dataset
from searchrl.relevance.rules.engine import RuleEngine
from searchrl.relevance.rules.rule_text import norm
from searchrl.relevance.rules.synthetic import synthetic_pairs, write_query

TITLES = [
    ("Dell XPS 13 laptop 16 GB", "Dell"), ("HP Pavilion 15 notebook silver", "HP"),
    ("Lenovo ThinkPad laptop", "Lenovo"),
    ("Targus laptop bag 15.6 inch", "Targus"), ("Logitech wireless mouse M185", "Logitech"),
    ("Logitech M100 wired mouse", "Logitech"), ("JBL Flip 5 bluetooth speaker", "JBL"),
    ("Sony bluetooth speaker", "Sony"), ("Anker USB-C cable 1m", "Anker"),
    ("Samsung 32GB microSD memory card", "Samsung"),
    ("HP 301 black ink cartridge", "HP"), ("Epson 603 ink cartridge", "Epson"), ("Apple iPhone 11 64GB", "Apple"),
    ("Samsung Galaxy S10 smartphone", "Samsung"), ("Dell 24 inch monitor", "Dell"), ("LG 27 inch gaming monitor", "LG"),
]


@pytest.fixture(scope="module")
def engine():
    return RuleEngine.from_yaml()


@pytest.fixture(scope="module")
def dataset():
    products = pd.DataFrame([{"product_id": f"p{i}", "title": t, "brand": b, "description": "", "category": "",
                              "attributes": "{}", "price": None, "quality": None} for i, (t, b) in enumerate(TITLES)])
    queries = pd.DataFrame({"query_id": ["q1", "q2", "q3"], "text": ["laptop", "Wireless Mouse", "monitor"],
                            "split": ["train", "valid", "test"]})
    judgments = pd.DataFrame({"query_id": ["q1", "q1", "q2", "q2", "q3"], "product_id": ["p0", "p3", "p4", "p5", "p14"],
                              "grade": [4, 1, 4, 2, 4], "label": [3, 0, 3, 1, 3], "raters": 1, "agreement": 1.0})
    return Dataset(products, queries, judgments)


def test_queries_name_what_the_seed_product_is(engine):
    product = {"title": "JBL Flip 5 bluetooth speaker", "brand": "JBL", "description": "", "category": "",
               "attributes": "{}"}
    queries = {write_query(engine, product, np.random.default_rng(s)) for s in range(40)}
    assert len(queries) > 5 and None not in queries  # several templates and names are used
    assert "jbl" in queries and any(q.startswith("jbl ") for q in queries) and any("bluetooth" in q for q in queries)
    assert not any("bluetooth bluetooth" in q for q in queries)
    # a type's narrower names the product does not satisfy ("usb speakers") are not kept: the seed passes the rules
    assert all(engine.judge(q, product).grade >= 3 for q in queries), queries
    assert write_query(engine, {"title": "zzz qqq"}, np.random.default_rng(0)) is None


def test_pairs_leave_out_held_out_queries_and_products_and_carry_rule_grades(engine, dataset):
    df = synthetic_pairs(dataset, engine, n_queries=12, per_query=4, seed=3, progress=False)
    assert df["query_id"].nunique() == len(df) // 4 and df["query_id"].str.startswith("syn-").all()
    assert 6 <= df["query_id"].nunique() <= 12  # a 13-product pool cannot always yield 12 distinct queries
    held_products = {"p4", "p5", "p14"}  # judged for the valid and test queries
    assert not set(df["product_id"]) & held_products
    assert not {norm(t) for t in df["text"]} & {"wireless mouse", "monitor"}
    for row in df.to_dict("records"):
        assert row["grade"] == engine.judge(row["text"], row).grade
    assert set(df["grade"]) >= {1, 4}  # BM25 hits and random products: both relevant and irrelevant pairs
    again = synthetic_pairs(dataset, engine, n_queries=12, per_query=4, seed=3, progress=False)
    pd.testing.assert_frame_equal(df, again)  # seeded


def test_no_synthetic_pairs_and_bad_settings(engine, dataset):
    assert synthetic_pairs(dataset, engine, 0).empty
    with pytest.raises(ValueError, match="per_query"):
        synthetic_pairs(dataset, engine, 3, per_query=0)


def test_train_sft_adds_the_synthetic_pairs(dataset, tmp_path, capsys):
    from conftest import tiny_sft_sets

    from searchrl.cli import main
    from searchrl.data.schema import write_dataset
    write_dataset(dataset, tmp_path / "ds")
    sets = tiny_sft_sets() + [f"data_dir={tmp_path / 'ds'}", f"run.output_dir={tmp_path / 'sft'}", "model=tiny-qwen2", "run.device=cpu",
            "run.progress=false", "optim.max_steps=2", "batch_size=4", "synthetic_queries=5", "synthetic_per_query=3"]
    assert main(["train", "sft"] + [x for kv in sets for x in ("--set", kv)]) == 0
    out = capsys.readouterr().out
    assert "sft: 2 train examples" in out and "15 rule-graded pairs for 5 synthetic queries" in out


def test_data_synthetic_writes_a_dataset_that_eval_reads(dataset, tmp_path, capsys):
    from searchrl.cli import main
    from searchrl.data.schema import load_dataset, write_dataset
    write_dataset(dataset, tmp_path / "ds")
    assert main(["data", "synthetic", "--data", str(tmp_path / "ds"), "--queries", "4", "--per-query", "3",
                 "--seed", "5", "--out", str(tmp_path / "syn")]) == 0
    syn = load_dataset(tmp_path / "syn")
    pairs = syn.split("test").pairs()
    assert len(pairs) == 12 and set(syn.queries["split"]) == {"test"} and syn.queries["query_id"].nunique() == 4
    expected = synthetic_pairs(dataset, RuleEngine.from_yaml(), 4, 3, seed=5, progress=False)
    assert pairs["grade"].tolist() == expected["grade"].tolist()  # the rules' grades, as training gets them
    assert (syn.judgments["label"] == syn.judgments["grade"] - 1).all()
    assert main(["data", "synthetic", "--data", str(tmp_path / "ds"), "--queries", "0", "--out",
                 str(tmp_path / "none")]) == 2
    assert "--queries and --per-query must be >= 1" in capsys.readouterr().err
