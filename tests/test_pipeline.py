"""`searchrl pipeline` end to end on a judgments-only CSV with tiny models: every stage, the report, reuse,
a config change that reruns only what it touches, a kill in the middle of training, and a dataset too small
for some stages."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_sft

from searchrl.cli import main

SFT = tiny_sft({"prompt": {"instruction": "Grade it.", "max_note_chars": 20}, "max_length": 256, "batch_size": 4,
                "optim": {"lr": 3.0e-3, "max_steps": 4, "warmup_ratio": 0},
                "run": {"device": "cpu", "progress": False, "save_every": 2}, "eval": {"max_examples": 8}})
TINY = f"sft: {json.dumps(SFT)}\n" + """
sample: {n: 2, max_prompts: 8, max_new_tokens: 12, prompts_per_batch: 4}
dpo: {batch_size: 2, max_length: 512, optim: {max_steps: 2, lr: 1.0e-4}, run: {device: cpu, progress: false},
      eval: {max_examples: 4}}
grpo: {rollout: {group_size: 2, prompts_per_step: 2, max_new_tokens: 8, dynamic_sampling: false},
       optim: {max_steps: 2, lr: 1.0e-3}, eval: {max_examples: 4}, run: {device: cpu, progress: false}}
retriever: {max_seq_length: 24, batch_size: 2, global_negatives: 2, hard_negatives: 1, mine_depth: 5, group_size: 3,
            rebuild_every: 1, optim: {max_steps: 2}, run: {progress: false}}
evaluate: {bootstrap: 50, max_decode: 4}
report: {examples_per_grade: 1, max_new_tokens: 12}
"""
TITLES = {"p1": "Dell XPS 13 laptop 16 GB", "p2": "HP Pavilion 15 notebook silver", "p3": "Targus laptop bag 15.6 inch",
          "p4": "Logitech wireless mouse M185", "p5": "JBL Flip 5 bluetooth speaker", "p6": "Anker USB-C cable 1m",
          "p7": "Samsung 32GB microSD memory card", "p8": "HP 301 black ink cartridge"}


@pytest.fixture(scope="module")
def judgments_only(tmp_path_factory):
    """A team's CSV with only query, product id, title and label, imported as a user would."""
    from conftest import TINY_JUDGMENTS
    d = tmp_path_factory.mktemp("judgments_only")
    rows = ["query,sku,name,rel"] + [f"{q},{p},{TITLES[p]},{g}" for q, js in TINY_JUDGMENTS.items() for p, g in js.items()]
    (d / "pairs.csv").write_text("\n".join(rows) + "\n")
    assert main(["data", "import", "--judgments", str(d / "pairs.csv"), "--map", "judgments.query=query",
                 "--map", "judgments.product_id=sku", "--map", "products.product_id=sku", "--map", "products.title=name",
                 "--map", "judgments.label=rel", "--out", str(d / "ds")]) == 0
    (d / "tiny.yaml").write_text(TINY)
    return d


@pytest.mark.slow
def test_every_stage_runs_on_a_judgments_only_import_and_writes_the_report(judgments_only, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pipeline", "--config", str(judgments_only / "tiny.yaml"), "--data", str(judgments_only / "ds"),
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    for stage in ("data", "baselines", "sft", "tiering", "sample", "dpo", "grpo", "export", "retriever", "evaluate",
                  "report"):
        rec = json.loads((out / stage / "stage.json").read_text())
        assert rec["status"] in ("done", "skipped"), (stage, rec)
        assert f"{stage}: start" in printed
    assert "estimated rest" in printed and f"report: {out / 'report.html'}" in printed
    html = (out / "report.html").read_text()
    for section in ("dataset", "stages", "relevance", "tiering", "curves", "retrieval", "examples"):
        assert f'id="{section}"' in html
    shown = {s["name"]: s for s in json.loads((out / "report.json").read_text())["stages"]}
    assert shown["report"]["status"] == "running" and shown["report"]["message"] == "writing this report"
    assert shown["sft"]["status"] == "ran" and "interrupted" not in html
    rows = {r["system"]: r for r in json.loads((out / "evaluate" / "relevance.json").read_text())["rows"]}
    assert {"majority", "bm25-thresholds", "minilm-cosine", "rules", "sft", "grpo"} <= set(rows)
    assert len(rows["grpo"]["x_ci"]["macro_f1"]) == 2  # query-bootstrap interval
    systems = [r["system"] for r in json.loads((out / "retriever" / "retrieval.json").read_text())["rows"]]
    assert systems[:2] == ["bm25", "minilm-zero-shot"] and "sft+rgrpo" in systems

    # unchanged: everything reused; the plan says so
    assert main(args + ["--dry-run"]) == 0
    assert all(line.split()[2] == "reuse" for line in capsys.readouterr().out.splitlines()[1:])
    # a GRPO setting changed: GRPO and what reads from it rerun, SFT does not
    sft_before = json.loads((out / "sft" / "stage.json").read_text())
    assert main(args + ["--set", "grpo.optim.lr=5.0e-4", "--stages", "data,sft,grpo,export"]) == 0
    printed = capsys.readouterr().out
    assert "sft: reused" in printed and "grpo: start" in printed and "export: start" in printed
    assert json.loads((out / "sft" / "stage.json").read_text()) == sft_before


@pytest.mark.slow
def test_a_killed_pipeline_continues_from_the_checkpoint_to_the_same_metrics(judgments_only, tmp_path):
    """SIGKILL during the SFT stage after its second checkpoint; the re-run resumes SFT (not from scratch) and the
    evaluation equals an uninterrupted pipeline's."""
    cfg = judgments_only / "tiny.yaml"
    sets = ["--set", "sft.optim.max_steps=8", "--set", "sft.run.save_every=1", "--set", "evaluate.decode=false"]

    def cmd(out):
        return [sys.executable, "-m", "searchrl.cli", "pipeline", "--config", str(cfg), "--data",
                str(judgments_only / "ds"), "--out", str(out), "--stages", "data,sft,evaluate", *sets]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(cmd(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(cmd(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "sft" / "checkpoint-2" / "manifest.json").exists():
        assert proc.poll() is None and time.time() < deadline, "the pipeline ended or stalled before checkpoint-2"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((tmp_path / "killed" / "sft" / "stage.json").read_text())["status"] == "running"
    again = subprocess.run(cmd(tmp_path / "killed"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "sft: resuming" in again.stdout and "resumed from" in again.stdout + again.stderr

    def metrics(out):
        return {r["system"]: {k: v for k, v in r.items() if k != "x_ci"}
                for r in json.loads((out / "evaluate" / "relevance.json").read_text())["rows"]}
    assert metrics(tmp_path / "killed") == metrics(tmp_path / "full")


def test_stages_that_cannot_run_on_a_small_dataset_are_skipped_with_the_reason(judgments_only, tmp_path, capsys):
    """Every query in train: no test split for the baselines, no valid split for tiering -- skipped, named, no crash."""
    ds = tmp_path / "all_train"
    assert main(["data", "import", "--judgments", str(judgments_only / "pairs.csv"), "--map", "judgments.query=query",
                 "--map", "judgments.product_id=sku", "--map", "products.product_id=sku", "--map",
                 "products.title=name", "--map", "judgments.label=rel", "--fractions", "1,0,0", "--out", str(ds)]) == 0
    out = tmp_path / "run"
    assert main(["pipeline", "--config", str(judgments_only / "tiny.yaml"), "--data", str(ds), "--out", str(out),
                 "--stages", "data,baselines,tiering"]) == 0
    printed = capsys.readouterr().out
    assert "baselines: skipped: split 'test' has no judged pairs" in printed
    assert "tiering: skipped: no relevance model to tune" in printed
    assert main(["pipeline", "--config", str(judgments_only / "tiny.yaml"), "--data", str(ds), "--out", str(out),
                 "--stages", "nope"]) == 2
    assert "unknown" in capsys.readouterr().err


def test_the_report_shows_its_own_stage_running_and_another_running_record_as_interrupted(tmp_path):
    from searchrl.pipeline.collect import collect_report
    from searchrl.pipeline.config import PipelineConfig
    from searchrl.pipeline.context import Context
    for stage, status in (("sft", "done"), ("dpo", "running"), ("report", "running")):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "stage.json").write_text(json.dumps({"status": status, "seconds": 3.0}))
    ctx = Context(PipelineConfig(), tmp_path, plan=["report"])
    shown = {s["name"]: s for s in collect_report(ctx, rendering="report")["stages"]}
    assert shown["report"]["status"] == "running" and shown["report"]["message"] == "writing this report"
    assert shown["dpo"]["status"] == "failed" and "interrupted" in shown["dpo"]["message"]
    assert shown["sft"]["status"] == "reused"  # done by an earlier invocation, not in this plan
    assert {s["name"]: s for s in collect_report(ctx)["stages"]}["report"]["status"] == "failed"
