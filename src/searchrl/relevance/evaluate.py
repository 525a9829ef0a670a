"""Evaluate a relevance model, or the rule engine alone, on a dataset split.

- :func:`evaluate_model`: grade probabilities from one prefill per pair (argmax;
  a cot-first model is decoded instead, its grade read after the reasoning);
  with ``decode=True`` the completion is also generated greedily and parsed, adding
  the format-error rate and rule adherence (the written grade is consistent with the
  written step verdicts) and the discriminative-hallucination rate (its complement
  among parseable completions).
- :func:`rule_agreement`: the rule engine's grade vs the human grade, per split —
  the quality of the teacher's own verdicts, measured.

A trained model directory carries ``relevance_config.json`` (the prompt settings it
was trained with), so evaluation builds exactly the training prompts.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.schema import SPLITS, Dataset
from ..eval.metrics import classification_metrics
from .model import encode_prompt, grade_probs, left_pad, load_relevance_model, render_prompt
from .parser import is_consistent, parse_completion
from .prompt import PromptConfig, build_prompt
from .rules import RuleEngine

CONFIG_FILE = "relevance_config.json"


def save_relevance_config(model_dir: str | Path, prompt: PromptConfig, chat_template: bool = True) -> None:
    Path(model_dir, CONFIG_FILE).write_text(json.dumps(
        {"prompt": dataclasses.asdict(prompt), "chat_template": chat_template}, indent=2) + "\n")


def load_relevance_config(model_dir: str | Path) -> tuple[PromptConfig, bool]:
    path = Path(model_dir, CONFIG_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; {model_dir} is not a searchrl relevance model "
                                "(train one with `searchrl train sft`)")
    cfg = json.loads(path.read_text())
    return PromptConfig(**cfg["prompt"]), bool(cfg.get("chat_template", True))


def pair_products(pairs) -> list[dict]:
    cols = ["title", "brand", "description", "category", "attributes"]
    return [{c: r.get(c) for c in cols} for r in pairs[cols].to_dict("records")]


def rule_agreement(ds: Dataset, engine: RuleEngine | None = None, splits=SPLITS) -> list[dict]:
    """One metrics row per split: the rule engine's grade against the human grade."""
    engine = engine or RuleEngine.from_yaml()
    rows = []
    for split in splits:
        pairs = ds.split(split).pairs()
        if pairs.empty:
            continue
        pred = [engine.judge(q, p).grade for q, p in zip(pairs["text"], pair_products(pairs))]
        rows.append({"system": f"rules ({split})", **classification_metrics(pairs["grade"].tolist(), pred)})
    return rows


@torch.no_grad()
def decode_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = 160,
                       batch_size: int = 16) -> list[str]:
    """Greedy completions (text after the prompt, special grade tokens kept)."""
    model.eval()
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="decode", leave=False):
        ids, mask, _ = left_pad([encode_prompt(tokenizer, p) for p in prompts[start:start + batch_size]],
                                tokenizer.pad_token_id)  # [B, T]
        gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        for row in gen[:, ids.shape[1]:]:  # [new]
            out.append(tokenizer.decode(row, skip_special_tokens=False)
                       .replace(tokenizer.pad_token, "").replace(tokenizer.eos_token, "").strip())
    return out


def evaluate_model(model_dir: str | Path, ds: Dataset, split: str = "test", decode: bool = False,
                   batch_size: int = 16, max_new_tokens: int = 160, system: str | None = None) -> dict:
    """A metrics row for ``model_dir`` on ``split`` (argmax of the grade probabilities)."""
    prompt_cfg, chat = load_relevance_config(model_dir)
    model, tok = load_relevance_model(str(model_dir))
    pairs = ds.split(split).pairs()
    prompts = [render_prompt(tok, build_prompt(q, p, prompt_cfg), chat)
               for q, p in zip(pairs["text"], pair_products(pairs))]
    gold = pairs["grade"].tolist()
    cot_first = prompt_cfg.order == "cot_first"
    parsed = []
    if decode or cot_first:  # a cot-first model's grade exists only after its reasoning: decode it
        texts = decode_completions(model, tok, prompts, max_new_tokens, batch_size)
        parsed = [parse_completion(t, prompt_cfg.order) for t in texts]
    if cot_first:  # no readable grade counts as L1 (the most common grade), i.e. as a miss for the rest
        pred = [p.grade or 1 for p in parsed]
    else:
        pred = (grade_probs(model, tok, prompts, batch_size).argmax(1) + 1).tolist()  # [N]
    row = {"system": system or Path(model_dir).name, **classification_metrics(gold, pred)}
    if parsed:
        ok = [p for p in parsed if p.grade is not None and len(p.verdicts) == 5]
        consistent = [is_consistent(p.grade, p.verdicts) for p in ok]
        row["x_format_error_rate"] = 1 - len(ok) / max(len(parsed), 1)
        row["x_rule_adherence"] = float(np.mean(consistent)) if ok else 0.0
        row["x_hallucination_rate"] = 1 - row["x_rule_adherence"] if ok else 0.0
        row["x_decoded_accuracy"] = float(np.mean([p.grade == g for p, g in zip(parsed, gold)]))
    return row
