"""retrieval/pipeline.run_stage: a finished stage is reused when only resume or progress bars differ."""

import dataclasses
import json

import pytest
import yaml

from searchrl.retrieval import chain as pipeline
from searchrl.retrieval.config import RetrieverConfig


def finished_stage(tmp_path) -> RetrieverConfig:
    cfg = RetrieverConfig(stage="sft")
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(tmp_path / "sft"), resume=False))
    final = tmp_path / "sft" / "final"
    final.mkdir(parents=True)
    (final / "retriever_config.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg)))))
    (tmp_path / "sft" / "stage_seconds.json").write_text('{"seconds": 54.0}\n')
    return cfg


def test_a_finished_stage_is_reused_when_only_resume_or_progress_differ(tmp_path, monkeypatch):
    cfg = finished_stage(tmp_path)

    def train(_):
        raise AssertionError("retrained a finished stage")
    monkeypatch.setattr(pipeline, "train_contrastive", train)
    same = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True, progress=not cfg.run.progress))
    final, seconds = pipeline.run_stage(same)
    assert final == tmp_path / "sft" / "final" and seconds == 54.0  # the original training time, not 0


def test_a_stage_whose_training_config_differs_is_trained_again(tmp_path, monkeypatch):
    cfg = finished_stage(tmp_path)

    class Trained(Exception):
        pass

    def train(_):
        raise Trained
    monkeypatch.setattr(pipeline, "train_contrastive", train)
    with pytest.raises(Trained):
        pipeline.run_stage(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=cfg.optim.lr * 2)))


def test_the_table_adds_a_hybrid_row_for_each_dense_model(tiny_data, tmp_path, monkeypatch):
    from searchrl.data.schema import load_dataset
    trained = []

    def stage(cfg):  # every stage "trains" the zero-shot encoder: the table, not training, is under test
        trained.append(cfg.stage)
        return None, 2.0
    monkeypatch.setattr(pipeline, "run_stage", stage)
    base = RetrieverConfig(max_products=0, run=dataclasses.replace(RetrieverConfig().run, progress=False))
    rows = pipeline.run_retriever_stages(base, load_dataset(tiny_data), tmp_path, split="train", ks=(5,))
    dense = ["minilm-zero-shot", "sft", "sft+hardneg", "sft+rgrpo"]
    assert trained == ["sft", "hardneg", "rgrpo"]
    assert [r["system"] for r in rows] == ["bm25", *dense, *[f"hybrid(bm25+{d})" for d in dense]]
    by = {r["system"]: r for r in rows}
    assert by["bm25"]["added_recall@5"] == 0.0 and by["bm25"]["bm25_overlap@5"] == 1.0
    for d in dense:
        hybrid = by[f"hybrid(bm25+{d})"]
        for key in ("hitrate@10", "hitrate@5", "ndcg@10", "added_recall@5", "added_recall@10", "bm25_overlap@5"):
            assert 0.0 <= hybrid[key] <= 1.0, key
        assert hybrid["x_train_seconds"] == by[d]["x_train_seconds"]
    assert by["hybrid(bm25+sft)"] == {**by["hybrid(bm25+minilm-zero-shot)"], "system": "hybrid(bm25+sft)",
                                      "x_train_seconds": 2.0}
