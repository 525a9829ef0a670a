"""Kill anywhere, resume to the same result: every trainer, SIGKILLed at named points (searchrl.faults), resumed.

Each case runs the trainer's real command in a subprocess three times: uninterrupted; with
SEARCHRL_FAULT=<point> (the process kills itself there, exit -9); and again with run.resume=true.
The resumed run's final weights and logged losses must equal the uninterrupted run's, and no
step may be logged twice. The points: after an optimizer step ("step"), inside a checkpoint
write after each of its parts ("checkpoint:the weights", "checkpoint:trainer_state.pt",
"checkpoint:manifest.json"), just before its rename ("checkpoint:rename"), and while final/ is
written ("final:the final model", "final:rename").
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import tiny_sft_sets
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY_LM = ["model=tiny-qwen2", "run.device=cpu", "run.progress=false", "prompt.instruction=Grade it.",
           "prompt.max_note_chars=20"]


def _run(args: list[str], out, fault: str | None = None, resume: bool = False) -> subprocess.CompletedProcess:
    sets = [*args, f"run.output_dir={out}", "run.save_every=2"] + (["run.resume=true"] if resume else [])
    env = {**ENV, "SEARCHRL_FAULT": fault} if fault else ENV
    return subprocess.run([sys.executable, "-m", "searchrl.cli", *sets[:sets.index("--")],
                           *[x for kv in sets[sets.index("--") + 1:] for x in ("--set", kv)]],
                          env=env, capture_output=True, text=True, timeout=600)


def _weights(out) -> dict:
    final = out / "final"
    path = final / "model.safetensors"
    return load_file(path)


def _losses(out) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def _check_kill_and_resume(args, tmp_path, points):
    full = _run(args, tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    for point in points:
        out = tmp_path / point.replace(":", "_").replace(" ", "_").replace("@", "_")
        killed = _run(args, out, fault=point)
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-1500:])
        assert not (out / "final" / "model.safetensors").exists() or point.startswith("final:"), point
        resumed = _run(args, out, resume=True)
        assert resumed.returncode == 0, (point, resumed.stderr[-2000:])
        a, b = _weights(tmp_path / "full"), _weights(out)
        assert a.keys() == b.keys(), point
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (point, k)
        steps, losses = zip(*_losses(out))
        full_steps, full_losses = zip(*_losses(tmp_path / "full"))
        assert steps == full_steps, (point, steps)  # every step logged, none twice
        assert losses == pytest.approx(full_losses, abs=1e-6), point
        assert not list(out.glob("*.tmp")), point  # a half-written directory never stays under a real name


@pytest.mark.slow
def test_sft_survives_a_kill_at_every_point(tiny_data, tmp_path):
    args = ["train", "sft", "--", *tiny_sft_sets(), *TINY_LM, f"data_dir={tiny_data}", "optim.lr=3e-3", "optim.max_steps=6",
            "batch_size=2", "max_length=256"]
    _check_kill_and_resume(args, tmp_path, ["step@3", "checkpoint:the weights@2", "checkpoint:trainer_state.pt@2",
                                            "checkpoint:manifest.json@2", "checkpoint:rename@2",
                                            "final:the final model", "final:rename"])


@pytest.mark.slow
def test_dpo_survives_a_kill_during_a_checkpoint_write(tiny_model_dir, tmp_path):
    from test_dpo import make_pairs

    from searchrl.relevance.train.sample import write_pairs
    pairs = write_pairs(tmp_path / "pairs.jsonl", make_pairs(8))
    args = ["train", "dpo", "--", f"model={tiny_model_dir}", f"pairs={pairs}", "run.device=cpu",
            "run.progress=false", "batch_size=2", "optim.max_steps=6", "optim.lr=1e-3", "max_length=256"]
    _check_kill_and_resume(args, tmp_path, ["checkpoint:trainer_state.pt@2", "step@5"])


@pytest.mark.slow
def test_grpo_with_guided_replay_survives_kills(tiny_data, tmp_path):
    args = ["train", "grpo", "--", *TINY_LM, f"data_dir={tiny_data}", "rollout.group_size=2",
            "rollout.prompts_per_step=2", "rollout.max_new_tokens=4", "replay.enabled=true", "optim.max_steps=6",
            "optim.lr=1e-3", "eval.max_examples=4"]
    _check_kill_and_resume(args, tmp_path, ["step@3", "checkpoint:manifest.json@2"])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "hardneg", "rgrpo"])
def test_retriever_stages_survive_a_kill_during_a_checkpoint_write(stage, tiny_data, tmp_path):
    args = ["train", "retriever", "--stage", stage, "--", f"data_dir={tiny_data}", "max_seq_length=24",
            "batch_size=2", "global_negatives=2", "hard_negatives=1", "mine_depth=5", "group_size=3",
            "rebuild_every=2", "reward.judge=rules", "reward.w_x=0", "optim.max_steps=6", "run.progress=false"]
    _check_kill_and_resume(args, tmp_path, ["checkpoint:trainer_state.pt@2"])
