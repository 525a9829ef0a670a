"""The `searchrl train sft` path end to end on a tiny dataset, single process and under torchrun."""

import json
import os
import subprocess
import sys

import torch
from conftest import tiny_sft_sets
from safetensors.torch import load_file

from searchrl.cli import main
from searchrl.metrics.measures import read_metrics_json
from searchrl.relevance.model.load import load_relevance_model

TINY_SET = tiny_sft_sets() + ["model=tiny-qwen2", "run.device=cpu", "run.progress=false", "optim.lr=3e-3", "max_length=256",
            "prompt.instruction=Grade it.", "prompt.max_note_chars=20", "optim.warmup_ratio=0"]


def test_train_sft_then_eval_relevance(tiny_data, tmp_path, capsys):
    out = tmp_path / "sft"
    extra = [f"data_dir={tiny_data}", f"run.output_dir={out}", "optim.max_steps=3", "batch_size=4", "trim_vocab=true"]
    assert main(["train", "sft"] + [x for kv in TINY_SET + extra for x in ("--set", kv)]) == 0
    final = out / "final"
    assert (final / "model.safetensors").exists() and (final / "relevance_config.json").exists()
    _, tok = load_relevance_model(str(final))  # the trimmed vocabulary is the saved model's
    assert len(tok) < 3000 and tok.tokenize("laptop bag") == ["laptop", "bag"]
    report = json.loads((final / "teacher_report.json").read_text())
    assert report["total"] == report["agreed"] + report["conditioned"] + report["dropped"] > 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    capsys.readouterr()
    rc = main(["eval", "relevance", "--model", str(final), "--data", str(tiny_data), "--split", "test",
               "--decode", "--json", str(tmp_path / "m.json")])
    assert rc == 0
    row = read_metrics_json(tmp_path / "m.json")["rows"][0]  # argmax; tiered and threshold rows follow
    assert 0 <= row["macro_f1"] <= 1 and row["n"] == 8
    assert 0 <= row["x_format_error_rate"] <= 1 and "x_rule_adherence" in row


def test_torchrun_two_processes_equal_one_process_with_accumulation(tiny_data, tmp_path):
    """2 ranks x batch 2 == 1 process x batch 2 x grad_accum 2: the same data, the same normalisation."""
    common = TINY_SET + [f"data_dir={tiny_data}", "optim.max_steps=3", "batch_size=2", "trim_vocab=true"]

    def sets(extra):
        return [x for kv in common + extra for x in ("--set", kv)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "searchrl.cli", "train", "sft"] + sets([f"run.output_dir={tmp_path / 'ddp'}"]),
                         env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "searchrl.cli", "train", "sft"]
                            + sets([f"run.output_dir={tmp_path / 'one'}", "grad_accum=2"]),
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    a = load_file(tmp_path / "ddp" / "final" / "model.safetensors")
    b = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    la = [json.loads(l)["loss"] for l in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["loss"] for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert len(la) == len(lb) == 3 and all(abs(x - y) < 1e-4 for x, y in zip(la, lb))


def test_resume_after_killing_a_real_training_process(tiny_data, tmp_path):
    """SIGKILL a training process after its second checkpoint; --set resume=true reaches the same weights."""
    import signal
    import time
    common = TINY_SET + [f"data_dir={tiny_data}", "optim.max_steps=6", "batch_size=2", "run.save_every=1"]

    def cmd(out, extra=()):
        return [sys.executable, "-m", "searchrl.cli", "train", "sft"] + [
            x for kv in common + [f"run.output_dir={out}", *extra] for x in ("--set", kv)]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(cmd(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoint-2" / "trainer_state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended or stalled before checkpoint-2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists()  # it really died mid-run
    resumed = subprocess.run(cmd(tmp_path / "killed", ["run.resume=true"]), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    steps = [json.loads(l)["step"] for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # no step logged twice
