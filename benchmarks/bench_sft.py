"""SFT step of the default relevance model: the frozen prompt encoded without autograd vs the full forward.

The default relevance model (SFTConfig(): minilm-prefix with all six blocks and the embeddings frozen) has no
trainable parameter on a prompt position, so a training forward encodes each row's prompt once under
``torch.no_grad`` and runs only the completion tokens, reading the prompts' cached keys and values, under
autograd, the rows of one completion token (a grade alone) apart from the longer ones
(PrefixLMForCausalLM._forward_frozen_prompt; tests/test_prefix_lm.py checks that logits and gradients equal the
full forward's). Both are timed here in one run on the same batches: the SFT stage's own micro-batches
of Chorus's train split (the rule teacher's completions, a quarter with the chain of thought, 16 candidates of a
query per chunk, the trimmed vocabulary), each step a forward, the within-query rank loss, a backward and an
AdamW step as train_sft takes them.

- ``full_step_s`` / ``frozen_prompt_step_s``: median wall time of the timed steps (after one warm-up) with the
  split switched off / on; ``frozen_prompt_speedup``: their ratio;
- ``mean_prompt_tokens`` / ``mean_completion_tokens``: what one row holds.

Usage: ``python benchmarks/bench_sft.py [--quick] [--data DIR] [--threads 2] [--json PATH]``; ``--quick`` times 3
steps of each instead of 8 (the same figures, noisier).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from bench_scoring import chorus_dir  # this directory: the script's own

from searchrl.data.schema import load_dataset
from searchrl.relevance.format.prompt import build_prompt
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.lora import freeze_lower_layers
from searchrl.relevance.model.tokenizer import grade_token_ids, trim_minilm_tokenizer
from searchrl.relevance.rules.engine import RuleEngine
from searchrl.relevance.rules.teacher import RuleTeacher
from searchrl.relevance.train.examples import IGNORE, build_examples, collate
from searchrl.relevance.train.sft import SFTConfig, _batch_stream, _encode_train, completion_loss, rank_loss


def model_and_batches(data: str, n: int) -> tuple[object, list[dict], list[int]]:
    """(the default model to train, frozen as SFT freezes it; the first ``n`` micro-batches of its SFT stage on
    Chorus's train split; the grade token ids), over the trimmed vocabulary as run_sft builds it."""
    cfg = SFTConfig()
    ds = load_dataset(data)
    train, _ = build_examples(ds.split("train").pairs(), RuleTeacher(RuleEngine.from_yaml(None), cfg.prompt), cfg.prompt)
    catalogue = [build_prompt("", p, cfg.prompt) for p in ds.products.to_dict("records")]
    tok_dir = Path(tempfile.mkdtemp(prefix="bench_sft_tok_"))
    trim_minilm_tokenizer([*catalogue, *(ex["prompt"] + ex["completion"] for ex in train)], tok_dir)
    model, tok = load_relevance_model(cfg.model, tokenizer_path=str(tok_dir), prefix=cfg.prefix, seed=0)
    freeze_lower_layers(model, cfg.freeze_layers)
    encoded = _encode_train(cfg, tok, train, SimpleNamespace(print=print))
    stream = _batch_stream(cfg, train, encoded)
    return model.train(), [collate(stream(m), tok.pad_token_id) for m in range(n)], grade_token_ids(tok)


def timed_steps(model, batches: list[dict], gids: list[int], frozen_prompt: bool) -> list[float]:
    """Wall time of one SFT step per batch (the first a warm-up, dropped), the split on or off."""
    model.prompt_is_frozen = (lambda: True) if frozen_prompt else (lambda: False)  # the instance's switch
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for b in batches:
        t0 = time.perf_counter()
        loss_sum, n, glogits = completion_loss(model, b, gids)
        (loss_sum / n + rank_loss(glogits, b["grade"], b["group"])).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times[1:]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 timed steps each instead of 8")
    ap.add_argument("--data", help="prepared Chorus directory (default: prepared from the mirror)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write {'figures': {...}} here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    steps = 3 if a.quick else 8
    model, batches, gids = model_and_batches(chorus_dir(a.data), steps + 1)
    full = timed_steps(model, batches, gids, frozen_prompt=False)
    split = timed_steps(model, batches, gids, frozen_prompt=True)
    labels = torch.cat([b["labels"].flatten() for b in batches])
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    completion = int((labels != IGNORE).sum()) + sum(len(b["labels"]) for b in batches)  # + each grade token's input
    rows = sum(len(b["labels"]) for b in batches)
    f = {"threads": a.threads, "steps": steps, "batch_rows": len(batches[0]["labels"]),
         "mean_prompt_tokens": round((tokens - completion) / rows, 1),
         "mean_completion_tokens": round(completion / rows, 1),
         "full_step_s": round(statistics.median(full), 3), "frozen_prompt_step_s": round(statistics.median(split), 3)}
    f["frozen_prompt_speedup"] = round(f["full_step_s"] / f["frozen_prompt_step_s"], 2)
    print("| figure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in f.items()))
    if a.json:
        Path(a.json).write_text(json.dumps({"figures": f}, indent=2) + "\n")
    return f


if __name__ == "__main__":
    main()
