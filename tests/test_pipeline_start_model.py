"""The pipeline's Python API as the experiments use it: a run that starts its relevance chain from another run's
model (``start_model``), reused while that model is unchanged and rerun when it changes, with tiering leaving it
alone; and grade-only pass@N pairs (``sample.teacher_chosen=grade``)."""

import json
import os

from conftest import tiny_sft

from searchrl.config import config_from_dict
from searchrl.pipeline import PipelineConfig, run_pipeline
from searchrl.relevance.format.prompt import grade_token

SFT = tiny_sft({"prompt": {"instruction": "Grade it.", "max_note_chars": 20}, "max_length": 256, "batch_size": 4,
                "optim": {"lr": 3.0e-3, "max_steps": 4, "warmup_ratio": 0}, "run": {"device": "cpu", "progress": False},
                "eval": {"max_examples": 8}})
DPO = {"batch_size": 2, "max_length": 512, "optim": {"max_steps": 2, "lr": 1.0e-4},
       "run": {"device": "cpu", "progress": False}, "eval": {"max_examples": 4}}


def config(data, **top) -> PipelineConfig:
    return config_from_dict(PipelineConfig, {
        "data": {"data_dir": str(data)}, "sft": SFT, "dpo": DPO,
        "sample": {"n": 2, "max_prompts": 8, "max_new_tokens": 1, "prompts_per_batch": 4, "teacher_chosen": "grade"},
        **top})


def test_a_run_starts_from_another_runs_model_and_follows_it(tiny_data, tmp_path, one_thread):
    run_pipeline(config(tiny_data), tmp_path / "a", stages=["data", "sft"])
    start = tmp_path / "a" / "sft" / "final"
    scorer_config = (start / "relevance_config.json").read_bytes()
    cfg = config(tiny_data, start_model=str(start))
    stages = ["data", "tiering", "sample", "dpo"]
    first = run_pipeline(cfg, tmp_path / "b", stages=stages)
    assert first["tiering"]["status"] == "skipped" and "another run's" in first["tiering"]["message"]
    assert (start / "relevance_config.json").read_bytes() == scorer_config  # tiering wrote nothing into it
    assert first["dpo"]["status"] == "done" and not (tmp_path / "b" / "sft").exists()
    assert f"model: {start}" in (tmp_path / "b" / "dpo" / "dpo_config.yaml").read_text()  # DPO from the start model
    pairs = [json.loads(x) for x in (tmp_path / "b" / "sample" / "pairs.jsonl").read_text().splitlines()]
    taught = [p for p in pairs if p["source"] == "teacher"]
    assert taught and all(p["chosen"] == grade_token(p["grade"]) for p in taught)  # the grade token, not a CoT

    again = run_pipeline(cfg, tmp_path / "b", stages=stages)
    assert {s: r["status"] for s, r in again.items()} == {"data": "reused", "tiering": "skipped", "sample": "reused",
                                                          "dpo": "reused"}
    weights = next(p for p in start.iterdir() if p.suffix == ".safetensors")
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # trained again in place
    moved = run_pipeline(cfg, tmp_path / "b", stages=stages)
    assert moved["data"]["status"] == "reused" and moved["sample"]["status"] == moved["dpo"]["status"] == "done"
