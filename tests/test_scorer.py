"""The library scorer and `searchrl score` on files."""

import json

import numpy as np
import pandas as pd
import pytest

from searchrl.cli import main
from searchrl.data.schema import DataError
from searchrl.relevance.model.load import grade_probs
from searchrl.relevance.scoring.scorer import RelevanceScorer, read_scoring_requests
from searchrl.relevance.scoring.tiering import tiered_grades

PRODUCTS = [{"title": "Dell XPS 13 laptop", "brand": "Dell", "product_id": "p1"},
            {"title": "Targus laptop bag 15.6", "brand": "Targus", "product_id": "p2",
             "attributes": {"colour": "black"}},
            {"title": "Logitech wireless mouse", "product_id": "p3"}]


def test_results_are_consistent_with_the_probabilities(tiny_model_dir):
    scorer = RelevanceScorer.load(tiny_model_dir, batch_size=2)
    res = scorer.score("laptop", PRODUCTS)
    probs = np.array([[r["probabilities"][f"L{g}"] for g in range(1, 5)] for r in res])
    plain = grade_probs(scorer.model, scorer.tokenizer, [scorer.prompt("laptop", p) for p in PRODUCTS])
    np.testing.assert_allclose(probs, plain, atol=1e-4)
    assert [r["grade"] for r in res] == (probs.argmax(1) + 1).tolist()
    assert [r["tier"] for r in res] == tiered_grades(probs, scorer.config.beta).tolist()
    for r, p in zip(res, probs):
        assert r["p_good"] == pytest.approx(p[2] + p[3]) and r["expected_grade"] == pytest.approx(p @ [1, 2, 3, 4])
    # plain scoring (the benchmark baseline) gives the same numbers
    plain_scorer = RelevanceScorer(scorer.model, scorer.tokenizer, scorer.config, shared_prefix=False)
    np.testing.assert_allclose(plain_scorer.grade_probs([("laptop", PRODUCTS)])[0], probs, atol=1e-4)
    assert scorer.score("laptop", []) == []


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_score_command_reads_and_writes_each_format(tiny_model_dir, tmp_path, fmt, capsys):
    rows = [{"query": q, **{k: (json.dumps(v) if k == "attributes" else v) for k, v in p.items()}}
            for q in ("laptop", "mouse") for p in PRODUCTS]
    df = pd.DataFrame(rows)
    src, out = tmp_path / f"pairs.{fmt}", tmp_path / f"scores.{fmt}"
    {"jsonl": lambda: df.to_json(src, orient="records", lines=True), "csv": lambda: df.to_csv(src, index=False),
     "parquet": lambda: df.to_parquet(src, index=False)}[fmt]()
    assert main(["score", "--model", str(tiny_model_dir), "--input", str(src), "--output", str(out)]) == 0
    got = {"jsonl": lambda: pd.read_json(out, lines=True, dtype={"product_id": str}),
           "csv": lambda: pd.read_csv(out, dtype={"product_id": str}), "parquet": lambda: pd.read_parquet(out)}[fmt]()
    assert len(got) == 6 and got["product_id"].tolist() == ["p1", "p2", "p3"] * 2
    assert np.allclose(got[["p_l1", "p_l2", "p_l3", "p_l4"]].sum(axis=1), 1.0)
    assert set(got["grade"]) <= {1, 2, 3, 4} and set(got["tier"]) <= {1, 2, 3, 4}
    assert "scored 6 pairs of 2 queries" in capsys.readouterr().out


def test_bad_rows_are_located_or_skipped_and_counted(tiny_model_dir, tmp_path, capsys):
    src = tmp_path / "pairs.jsonl"
    src.write_text('{"query": "laptop", "title": "Dell XPS"}\n{"query": "laptop"}\nnot json\n'
                   '{"query": "laptop", "title": "bag", "attributes": "{broken"}\n{"query": 5, "title": "x"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:line 2: title: missing"):
        read_scoring_requests(src)
    requests, policy = read_scoring_requests(src, on_error="skip")
    assert requests == [("laptop", [{"title": "Dell XPS", "product_id": ""}])]
    assert policy.total_skipped == 4
    assert main(["score", "--model", str(tiny_model_dir), "--input", str(src), "--output",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "pairs.jsonl:line 2: title: missing" in capsys.readouterr().err
    assert main(["score", "--model", str(tiny_model_dir), "--input", str(src), "--output",
                 str(tmp_path / "o.jsonl"), "--on-error", "skip"]) == 0
    assert "skipped 4 bad row(s)" in capsys.readouterr().out
