import pytest

from searchrl.cli import main
from searchrl.eval.metrics import read_metrics_json


@pytest.mark.slow
def test_quickstart_end_to_end(mirror, tmp_path, capsys):
    """The README's main command: prepare Chorus, baselines, SFT, tiering, print and save both tables."""
    # the SFT stage cut to a few steps here; the README's command runs the full config
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--mirror", str(mirror), "--set", "optim.max_steps=2",
                 "--set", "eval.every=0", "--set", "eval.max_examples=16", "--retriever-set", "optim.max_steps=2",
                 "--retriever-set", "run.save_every=0"]) == 0
    out = capsys.readouterr().out
    assert "Relevance, Chorus test" in out and "Retrieval, Chorus test" in out
    rel = read_metrics_json(tmp_path / "qs" / "relevance.json")
    ret = read_metrics_json(tmp_path / "qs" / "retrieval.json")
    assert rel["task"] == "relevance"
    systems = [r["system"] for r in rel["rows"]]
    assert systems[:5] == ["majority", "bm25-thresholds", "lexical-logreg", "rules", "sft-label-first"]
    # the SFT model's grade also by cumulative-probability tiering (beta tuned on valid) and per-grade thresholds
    assert systems[5].startswith("sft-label-first tiered (beta=") and systems[6].startswith("sft-label-first thresh")
    assert len(systems) == 7
    assert all(r["n"] == 802 for r in rel["rows"])
    assert [r["system"] for r in ret["rows"]] == ["bm25", "minilm-zero-shot", "sft", "sft+hardneg", "sft+rgrpo"]
    for r in ret["rows"]:
        assert 0.2 < r["ndcg@10"] <= 1 and r["n_queries"] == 21
        assert 0 <= r["goodrate@10"] <= 1 and 0 <= r["bm25_overlap@10"] <= 1
    assert ret["rows"][0]["bm25_overlap@10"] == pytest.approx(1.0)  # BM25 against itself
    assert (tmp_path / "qs" / "ret_hardneg" / "mining.json").exists() and ret["rows"][3]["x_train_seconds"] > 0
