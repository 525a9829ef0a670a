"""`searchrl pipeline --config llm` (SmolLM2 through every relevance recipe) in CI: the packaged config is the
real-model recipe, and every one of its stages runs end to end with the tiny random decoder in its place.

Simplifies: tiny-qwen2 (random weights, MiniLM's vocabulary, no chat template) stands in for SmolLM2, on the
10-query imported dataset with a few steps per stage, so it checks the wiring (LoRA in SFT, DPO and GRPO,
rule-aware reward, guided replay, decoded evaluation), not what the recipe learns. About 15 s on one thread.
"""

import json

from searchrl.cli import main

TINY = {  # the llm config with the tiny decoder and a few steps per stage; the recipe's other settings stay
    "sft.model": "tiny-qwen2", "sft.optim.max_steps": 2, "sft.eval.max_examples": 4, "sft.run.save_every": 1,
    "sft.prompt.max_note_chars": 8,  # notes of at most 4 tokens: a random decoder's completions stay short
    "sample.max_prompts": 4, "sample.max_new_tokens": 120,
    "dpo.optim.max_steps": 2, "dpo.eval.max_examples": 4,
    "grpo.optim.max_steps": 2, "grpo.rollout.max_new_tokens": 120, "grpo.eval.max_examples": 4,
    "evaluate.max_decode": 4, "evaluate.bootstrap": 50, "report.max_new_tokens": 120,
}
DECODED = ("x_parse_rate", "x_step_agreement", "x_self_consistency")  # relevance/scoring/reasoning.py


def test_the_llm_config_is_smollm2_through_every_relevance_recipe():
    from searchrl.pipeline import load_pipeline_config
    cfg = load_pipeline_config("llm")
    assert cfg.sft.model == "smollm2-135m" and cfg.sft.chat_template and cfg.sft.prompt.layout == "lines"
    assert cfg.sft.cot_fraction == 1.0 and cfg.sft.prompt.order == "label_first"
    assert cfg.sft.lora is not None and cfg.dpo.lora is not None and cfg.grpo.lora is not None
    assert cfg.grpo.reward.kind == "rule_aware" and cfg.grpo.replay.enabled
    assert cfg.evaluate.decode and cfg.evaluate.max_decode > 0
    assert {"sft", "sample", "dpo", "grpo", "export", "evaluate"} <= set(cfg.stages) and "retriever" not in cfg.stages


def test_every_stage_of_the_llm_config_runs_with_a_tiny_decoder(tiny_data, tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    assert main(["pipeline", "--config", "llm", "--data", str(tiny_data), "--out", str(out), *sets]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / "pipeline.json").read_text())["stages"]
    assert plan == ["data", "baselines", "sft", "tiering", "sample", "dpo", "grpo", "export", "evaluate", "report"]
    for stage in plan:
        rec = json.loads((out / stage / "stage.json").read_text())
        assert rec["status"] == "done", (stage, rec)
        assert f"{stage}: start" in printed
    grpo = [json.loads(x) for x in (out / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in grpo if "reward_mean" in r] == [1, 2]
    assert all("reward_adherence" in r and "guided_groups" in r for r in grpo if "reward_mean" in r)
    assert (out / "sft" / "final" / "model.safetensors").exists()  # LoRA merged: a plain model directory
    evaluate = json.loads((out / "evaluate" / "stage.json").read_text())["summary"]
    assert evaluate["final"] == "grpo" and all(k in evaluate for k in DECODED)
    assert 0.0 <= evaluate["x_parse_rate"] <= 1.0
    rows = {r["system"]: r for r in json.loads((out / "evaluate" / "relevance.json").read_text())["rows"]}
    for stage in ("sft", "dpo", "grpo"):  # every stage's reasoning measured; the grammar makes even random ones parse
        assert all(k in rows[stage] for k in DECODED) and rows[stage]["x_parse_rate"] == 1.0, rows[stage]
    sampled = json.loads((out / "sample" / "stage.json").read_text())["summary"]
    assert sampled["format_error_rate"] == 0.0, sampled
    assert (out / "report.html").exists()


def test_the_plan_estimates_a_decoder_by_its_own_measured_rates(tmp_path):
    """--dry-run's estimate for the llm config is its measured size (about 50 minutes: docs/results/llm/timing.md),
    not the default model's, and grows with the work the config asks for."""
    from searchrl.pipeline import load_pipeline_config
    from searchrl.pipeline.context import Context
    from searchrl.pipeline.runner import describe_plan, plan_stages

    def plan(cfg):
        return {r["stage"]: r["estimate_s"] for r in describe_plan(Context(cfg, tmp_path, plan_stages(cfg)))}

    llm = load_pipeline_config("llm")
    est = plan(llm)
    assert 40 * 60 < sum(est.values()) < 70 * 60, est
    quick = plan(load_pipeline_config("quickstart"))
    assert est["sft"] > 2 * quick["sft"] and est["evaluate"] > 2 * quick["evaluate"]
    llm.sft.max_train_examples *= 2
    llm.grpo.optim.max_steps *= 2
    doubled = plan(llm)
    assert doubled["sft"] == 2 * est["sft"] and doubled["grpo"] == 2 * est["grpo"]
