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
