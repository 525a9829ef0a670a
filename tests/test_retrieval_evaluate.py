"""eval retrieval / search / train retriever through the CLI, and the metrics they report."""


import pytest

from searchrl.cli import main
from searchrl.data.schema import load_dataset
from searchrl.metrics.measures import read_metrics_json
from searchrl.retrieval.evaluate import Retriever, evaluate_retrieval


def test_evaluate_metrics_and_cache(tiny_data, tiny_model_dir, isolated_cache):
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    ds = load_dataset(tiny_data)
    retriever = Retriever(None, ds.products, progress=False)  # zero-shot all-MiniLM-L6-v2
    assert len(list((isolated_cache / "embeddings").glob("*.npy"))) == 1  # corpus embeddings cached
    row = evaluate_retrieval(retriever, ds, "test", ks=(2, 4), scorer=RelevanceScorer.load(tiny_model_dir),
                             goodrate_k=2)
    for key in ("hitrate@2", "ndcg@10", "bm25_overlap@4", "quality@4", "goodrate@2"):
        assert 0.0 <= row[key] <= 1.0, key
    assert row["quality@4"] == pytest.approx(0.5)  # completeness proxy: title, brand, category of 6 fields
    assert row["hitrate@4"] >= row["hitrate@2"]
    hits = retriever.search(["bluetooth speaker"], 2)[0]
    assert hits[0][0] == "p5" and hits[0][1] >= hits[1][1]


@pytest.mark.slow
def test_cli_train_eval_search(tiny_data, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["train", "retriever", "--stage", "sft", "--set", f"data_dir={tiny_data}", "--set",
                 f"run.output_dir={out}", "--set", "optim.max_steps=1", "--set", "batch_size=2", "--set",
                 "global_negatives=2", "--set", "max_seq_length=24", "--set", "run.progress=false"]) == 0
    assert (out / "final/modules.json").exists() and (out / "final/retriever_config.yaml").exists()
    assert main(["eval", "retrieval", "--retriever", str(out / "final"), "--data", str(tiny_data), "--k", "4",
                 "--json", str(tmp_path / "m.json")]) == 0
    doc = read_metrics_json(tmp_path / "m.json")
    assert doc["task"] == "retrieval" and "bm25_overlap@4" in doc["rows"][0]
    capsys.readouterr()
    assert main(["search", "--retriever", str(out / "final"), "--k", "2", "hp ink cartridge"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "p8" in lines[0]
    assert main(["train", "retriever", "--set", "stage=bogus"]) == 2
    assert main(["train", "retriever", "--set", "nope=1"]) == 2
