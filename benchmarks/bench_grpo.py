"""GRPO throughput and memory: searchrl's trainer vs TRL's GRPOTrainer on the same work.

Same model (the quickstart architecture, minilm-qwen2 4 x 256, random weights saved
once and loaded by both), the same Chorus prompts (default prompt: ~340 tokens), the
same G, completion length (a random model never samples EOS, so every completion is
``--completion-len`` tokens long), prompts per step, learning rate, beta = 0, one
update per rollout batch, "dapo" loss, the same reward (grade correctness + format).
Each trainer runs in its own process so that its peak resident memory (ru_maxrss) is
its own. The first step of each is a warm-up and is not timed.

Figures: ``ours_samples_per_s`` / ``trl_samples_per_s`` (completions per second of
rollout + update), ``vs_trl_ratio`` (target >= 2), peak memory of each in MiB and
``memory_vs_trl_ratio``. Where the difference comes from: searchrl encodes each
prompt once and decodes its G continuations on the shared KV cache (rl/rollout.py);
TRL repeats every prompt G times before ``generate``.

Usage: ``python benchmarks/bench_grpo.py [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_scoring import chorus_requests, report  # noqa: E402  (the scoring benchmark's prompts and table)


def build(model_dir: Path, data: str | None, n_prompts: int) -> list[dict]:
    """Save the model once; the prompts (built with the default prompt config) as {prompt, grade}."""
    from searchrl.relevance.format.prompt import PromptConfig, build_prompt
    from searchrl.relevance.model.builds import MINILM_QWEN2
    from searchrl.relevance.model.load import load_relevance_model
    from searchrl.relevance.model.scorer_config import ScorerConfig, save_scorer_config
    model, tok = load_relevance_model(MINILM_QWEN2)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    save_scorer_config(model_dir, ScorerConfig(prompt=PromptConfig(), chat_template=False))
    requests, pairs = chorus_requests(data, 40)
    pairs = pairs.head(n_prompts)
    from searchrl.data.schema import pair_products
    return [{"prompt": build_prompt(q, p, PromptConfig()), "grade": int(g)}
            for q, p, g in zip(pairs["text"], pair_products(pairs), pairs["grade"])]


def run_ours(model_dir: str, prompts: list[dict], a, out: str) -> list[float]:
    from searchrl.config import config_from_dict
    from searchrl.relevance.train.grpo import GRPOConfig, train_grpo
    cfg = config_from_dict(GRPOConfig, {
        "model": model_dir, "beta": 0.0, "num_iterations": 1, "loss_type": "dapo", "chat_template": False,
        "rollout": {"group_size": a.group_size, "prompts_per_step": a.prompts_per_step,
                    "max_new_tokens": a.completion_len, "temperature": 1.0, "dynamic_sampling": False,
                    "class_balance": False},
        "optim": {"lr": 1e-6, "max_steps": a.steps},
        "run": {"output_dir": out, "device": "cpu", "progress": False, "seed": 0}})
    train_grpo(cfg, prompts, eval_examples=[])
    rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    return [r["step_seconds"] for r in rows]


def run_trl(model_dir: str, prompts: list[dict], a, out: str) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from searchrl.relevance.model.tokenizer import load_tokenizer
    from searchrl.relevance.train.rewards import GradeReward
    tok = load_tokenizer(model_dir)
    grade_reward = GradeReward()

    def reward(prompts, completions, grade, **kwargs):  # TRL passes dataset columns as keyword arguments
        return grade_reward(completions, [{"grade": g} for g in grade]).rewards

    times, t0 = [], [0.0]

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            t0[0] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - t0[0])

    n = a.prompts_per_step * a.group_size
    args = GRPOConfig(output_dir=out, report_to="none", use_cpu=True, bf16=False, num_generations=a.group_size,
                      per_device_train_batch_size=n, max_completion_length=a.completion_len, temperature=1.0,
                      learning_rate=1e-6, beta=0.0, num_iterations=1, loss_type="dapo", max_steps=a.steps,
                      logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True, dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, processing_class=tok, callbacks=[StepTimer()],
                          train_dataset=Dataset.from_dict({"prompt": [p["prompt"] for p in prompts],
                                                           "grade": [p["grade"] for p in prompts]}))
    trainer.train()
    return times


def worker(a) -> None:
    torch.set_num_threads(a.threads)
    prompts = json.loads(Path(a.prompts).read_text())
    with tempfile.TemporaryDirectory() as out:
        times = (run_ours if a.worker == "ours" else run_trl)(a.model_dir, prompts, a, out)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"step_seconds": times, "peak_mib": peak_mib}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 steps of 2 prompts x G=4 x 16 tokens each; ends within about a minute")
    ap.add_argument("--json", help="write {'figures': {...}} here")
    ap.add_argument("--data", help="prepared Chorus directory (default: prepared from the mirror)")
    ap.add_argument("--steps", type=int, default=0, help="steps per trainer, the first untimed (default 6)")
    ap.add_argument("--group-size", type=int, default=0, help="G (default 8)")
    ap.add_argument("--prompts-per-step", type=int, default=0, help="prompts per step (default 4)")
    ap.add_argument("--completion-len", type=int, default=0, help="tokens per completion (default 32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    a = ap.parse_args()
    for name, full, quick in (("steps", 6, 2), ("group_size", 8, 4), ("prompts_per_step", 4, 2),
                              ("completion_len", 32, 16)):
        setattr(a, name, getattr(a, name) or (quick if a.quick else full))
    if a.worker:
        return worker(a)
    with tempfile.TemporaryDirectory() as d:
        model_dir, prompts_file = Path(d, "model"), Path(d, "prompts.json")
        prompts = build(model_dir, a.data, a.prompts_per_step * a.steps)
        prompts_file.write_text(json.dumps(prompts))
        res = {}
        for name in ("ours", "trl"):
            cmd = [sys.executable, __file__, "--worker", name, "--model-dir", str(model_dir), "--prompts",
                   str(prompts_file), "--steps", str(a.steps), "--group-size", str(a.group_size),
                   "--prompts-per-step", str(a.prompts_per_step), "--completion-len", str(a.completion_len),
                   "--threads", str(a.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if proc.returncode:
                raise SystemExit(f"{name} worker failed:\n{proc.stderr[-4000:]}")
            res[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    n = a.prompts_per_step * a.group_size
    f = {"group_size": a.group_size, "prompts_per_step": a.prompts_per_step, "completion_len": a.completion_len,
         "timed_steps": a.steps - 1, "threads": a.threads}
    for name in ("ours", "trl"):
        timed = res[name]["step_seconds"][1:]
        f[f"{name}_step_s"] = sum(timed) / len(timed)
        f[f"{name}_samples_per_s"] = n / f[f"{name}_step_s"]
        f[f"{name}_peak_mib"] = res[name]["peak_mib"]
    f["vs_trl_ratio"] = f["ours_samples_per_s"] / f["trl_samples_per_s"]
    f["memory_vs_trl_ratio"] = f["ours_peak_mib"] / f["trl_peak_mib"]
    report(f"GRPO rollout + update, {n} completions per step ({a.prompts_per_step} prompts x G={a.group_size}, "
           f"{a.completion_len} tokens), {a.threads} threads", f, a.json)

if __name__ == "__main__":
    main()
