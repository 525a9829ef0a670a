"""retrieval/chain.run_stage: a finished stage is reused when only resume or progress bars differ, and trained
again when its config or an input (the encoder it starts from) changed."""

import dataclasses
from pathlib import Path

import pytest

from searchrl.retrieval import chain
from searchrl.retrieval.config import RetrieverConfig


def finished_stage(tmp_path, name="sft", **changes) -> RetrieverConfig:
    """A stage that run_stage trained (54 s), without training: the trainer is a stub that writes final/."""
    cfg = RetrieverConfig(stage="sft", **changes)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(tmp_path / name), resume=False))

    def train(c):
        (Path(c.run.output_dir) / "final").mkdir(parents=True, exist_ok=True)
        return None, Path(c.run.output_dir) / "final"
    clock = iter([100.0, 154.0])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(chain, "train_contrastive", train)
        mp.setattr(chain.time, "perf_counter", lambda: next(clock))
        chain.run_stage(cfg)
    return cfg


def test_a_finished_stage_is_reused_when_only_resume_or_progress_differ(tmp_path, monkeypatch):
    cfg = finished_stage(tmp_path)

    def train(_):
        raise AssertionError("retrained a finished stage")
    monkeypatch.setattr(chain, "train_contrastive", train)
    same = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True, progress=not cfg.run.progress))
    final, seconds = chain.run_stage(same)
    assert final == tmp_path / "sft" / "final" and seconds == 54.0  # the original training time, not 0


def test_a_stage_whose_training_config_differs_is_trained_again(tmp_path, monkeypatch):
    cfg = finished_stage(tmp_path)

    class Trained(Exception):
        pass

    def train(_):
        raise Trained
    monkeypatch.setattr(chain, "train_contrastive", train)
    with pytest.raises(Trained):
        chain.run_stage(dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=cfg.optim.lr * 2)))


def test_the_table_adds_a_hybrid_row_for_each_dense_model(tiny_data, tmp_path, monkeypatch):
    from searchrl.data.schema import load_dataset
    trained = []

    def stage(cfg):  # every stage "trains" the zero-shot encoder: the table, not training, is under test
        trained.append(cfg.stage)
        return None, 2.0
    monkeypatch.setattr(chain, "run_stage", stage)
    base = RetrieverConfig(max_products=0, run=dataclasses.replace(RetrieverConfig().run, progress=False))
    rows = chain.run_retriever_stages(base, load_dataset(tiny_data), tmp_path, split="train", ks=(5,))
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


def test_a_stage_whose_start_encoder_was_trained_again_is_trained_again(tmp_path, monkeypatch):
    from searchrl.stage_records import read_record, write_record
    finished_stage(tmp_path, "start")
    cfg = finished_stage(tmp_path, "hardneg", encoder=str(tmp_path / "start" / "final"))

    def train(_):
        raise AssertionError("retrained")
    monkeypatch.setattr(chain, "train_contrastive", train)
    assert chain.run_stage(cfg)[1] == 54.0  # the start encoder unchanged: reused
    write_record(tmp_path / "start", **{**read_record(tmp_path / "start"), "fingerprint": "trained-again"})
    with pytest.raises(AssertionError, match="retrained"):
        chain.run_stage(cfg)
