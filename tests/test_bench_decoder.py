"""benchmarks/bench_decoder.py in its CPU setting (tiny-qwen2, float32, a few steps of SFT, sampling, DPO and GRPO):
every stage reports a positive speed and an MFU in (0, 1] against the peak it is given. About 15 s on one thread."""

import importlib.util
import json
from pathlib import Path

STAGES = ("sft", "sample", "dpo", "grpo")


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decoder.py"
    spec = importlib.util.spec_from_file_location("bench_decoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_decoder_benchmark_measures_every_stage_on_the_cpu(tmp_path, one_thread, capsys):
    out = tmp_path / "figures.json"
    figures = _bench().main(["--cpu-tiny", "--peak-tflops", "1.0", "--json", str(out)])
    assert json.loads(out.read_text())["figures"] == figures
    assert figures["model"] == "tiny-qwen2" and figures["dtype"] == "float32" and figures["params"] > 0
    for stage in STAGES:
        assert figures[f"{stage}_tokens_per_s"] > 0, stage
        assert 0 < figures[f"{stage}_mfu"] <= 1, (stage, figures[f"{stage}_mfu"])
        assert figures[f"{stage}_timed_steps"] >= 1, stage
    assert figures["sample_gen_tokens_per_s"] > 0 and figures["sample_pairs"] > 0 and figures["grpo_gen_tokens_per_s"] > 0
    # MFU is the stage's FLOP rate (6N per trained token, 2N per sampled one) over the peak
    assert abs(figures["sft_mfu"] - 6 * figures["params"] * figures["sft_tokens_per_s"] / 1e12) < 1e-12
    assert abs(figures["sample_mfu"] - 2 * figures["params"] * figures["sample_tokens_per_s"] / 1e12) < 1e-12
    printed = capsys.readouterr().out
    assert all(f"\n  {stage} " in printed for stage in STAGES)
