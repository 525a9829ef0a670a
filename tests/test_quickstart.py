"""The README's main command on Chorus: `searchrl quickstart` is the pipeline with the quickstart config."""

import json

import pytest

from searchrl.cli import main


@pytest.mark.slow
def test_quickstart_runs_the_pipeline_on_chorus(mirror, tmp_path, capsys):
    """Every stage on the real data, cut to a few steps each (the README's command runs the full quickstart)."""
    out = tmp_path / "qs"
    sets = ["sft.optim.max_steps=2", "sft.synthetic_queries=20", "sample.max_prompts=8", "dpo.optim.max_steps=1",
            "grpo.optim.max_steps=1", "retriever.optim.max_steps=1", "retriever.max_products=600",
            "evaluate.max_decode=8", "evaluate.bootstrap=50", "report.examples_per_grade=1"]
    assert main(["quickstart", "--out", str(out), "--mirror", str(mirror)] + [x for s in sets for x in ("--set", s)]) == 0
    printed = capsys.readouterr().out
    assert "Relevance, chorus test (802 pairs)" in printed and "Retrieval, chorus test" in printed
    assert f"report: {out / 'report.html'}" in printed
    rows = {r["system"] for r in json.loads((out / "evaluate" / "relevance.json").read_text())["rows"]}
    assert {"bm25-thresholds", "minilm-cosine", "rules", "sft", "dpo", "grpo"} <= rows
    assert all(r["n"] == 802 for r in json.loads((out / "evaluate" / "relevance.json").read_text())["rows"]
               if "n" in r)
    ret = json.loads((out / "retriever" / "retrieval.json").read_text())["rows"]
    dense = ["minilm-zero-shot", "sft", "sft+hardneg", "sft+rgrpo"]
    assert [r["system"] for r in ret] == ["bm25", *dense] + [f"hybrid(bm25+{s})" for s in dense]
    for r in ret:
        assert 0.2 < r["ndcg@10"] <= 1 and r["n_queries"] == 21
        assert 0 <= r["goodrate@10"] <= 1 and 0 <= r["bm25_overlap@10"] <= 1
    assert ret[0]["bm25_overlap@10"] == pytest.approx(1.0)  # BM25 against itself
    assert (out / "retriever" / "ret_hardneg" / "mining.json").exists() and ret[3]["x_train_seconds"] > 0
    assert 'id="retrieval"' in (out / "report.html").read_text()
