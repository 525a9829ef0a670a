import json

import pandas as pd
import pytest

from searchrl.data.prepare import assign_splits, prepare, stats_table
from searchrl.data.schema import SPLITS, load_dataset


def test_split_is_deterministic_disjoint_and_sized():
    ids = [f"q{i}" for i in range(135)]
    a = assign_splits(ids, seed=0)
    assert a == assign_splits(list(reversed(ids)), seed=0)  # order of input does not matter
    assert a != assign_splits(ids, seed=1)
    counts = pd.Series(a).value_counts()
    assert (counts["train"], counts["valid"], counts["test"]) == (81, 27, 27)
    assert set(a) == set(ids)  # every query in exactly one split (a dict cannot hold two)
    b = assign_splits(ids, seed=0, fractions=(0.8, 0.1, 0.1))
    assert pd.Series(b).value_counts()["test"] == 14


@pytest.mark.parametrize("bad", [(0.5, 0.5), (0.6, 0.3, 0.3), (1.2, -0.1, -0.1)])
def test_split_rejects_bad_fractions(bad):
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(["a", "b"], fractions=bad)


def test_prepare_chorus_counts_and_card(chorus_dir):
    ds = load_dataset(chorus_dir)
    card = json.loads((chorus_dir / "dataset.json").read_text())
    assert card["counts"] == {"products": 19406, "queries": 135, "judgments": 3668,
                              "grades": {"1": 1853, "2": 238, "3": 105, "4": 1472}}
    assert card["label_map"] == {"0": 1, "1": 2, "2": 3, "3": 4}
    assert all(f["sha256"] and f["url"].startswith("https://") for f in card["provenance"]["files"])
    # no query in two splits; every judgment's query has a split
    assert ds.queries["query_id"].is_unique and set(ds.queries["split"]) == set(SPLITS)
    assert set(ds.judgments["query_id"]) <= set(ds.queries["query_id"])
    assert sum(len(ds.split(s).judgments) for s in SPLITS) == 3668
    assert "| test | 27 |" in stats_table(ds)


def test_prepare_is_reproducible(mirror, tmp_path):
    a = prepare("esci-sample", tmp_path / "a", mirror)
    b = prepare("esci-sample", tmp_path / "b", mirror)
    pd.testing.assert_frame_equal(a.queries, b.queries)
    pd.testing.assert_frame_equal(load_dataset(tmp_path / "a").judgments, a.judgments)
    assert a.card["counts"]["judgments"] == 16


def test_load_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data prepare"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="products.parquet"):
        load_dataset(tmp_path / "d")
