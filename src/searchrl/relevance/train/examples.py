"""Relevance examples: judged pairs -> {prompt, completion, grade, ...} dicts, and those as token tensors.

The one builder every relevance trainer and evaluator uses:

- :func:`build_examples`: a teacher writes the completion of each judged pair (the human
  grade wins; see teacher.py); one {"prompt", "completion", "grade", "query", "product",
  "query_id", "product_id"} per kept pair, plus the teacher's report. The prompt is the
  plain-text prompt; trainers render it through a chat template (model.render_prompt).
- :func:`split_examples`: every pair of a dataset split with the rule teacher conditioned on
  the gold grade (drops nothing): eval examples, GRPO prompts (the completion rides along as
  the reference that rule-aware rewards compare step verdicts against), pass@N prompts.
- :func:`subset`: a seeded subset (the same rule everywhere: max_train/max_eval limits).
- :func:`encode_example` / :func:`collate`: prompt + completion + EOS as ids with the prompt
  masked out of the labels (IGNORE), and right-padded [B, T] batches.

Simplifies: examples longer than max_length are dropped by the caller (encode_example says
None), never truncated: cutting a prompt loses the product, cutting a cot-first completion
loses the label.
"""

from __future__ import annotations

import numpy as np
import torch

from searchrl.data.schema import Dataset, pair_products
from searchrl.relevance.format.prompt import GRADE_TOKENS, PromptConfig, build_prompt
from searchrl.relevance.model.tokenizer import encode_prompt
from searchrl.relevance.rules.teacher import RuleTeacher, Teacher, TeacherReport

IGNORE = -100  # label of positions that carry no loss (prompt, padding)


def build_examples(pairs_df, teacher: Teacher, prompt_cfg: PromptConfig | None = None
                   ) -> tuple[list[dict], TeacherReport]:
    """(examples, report) for the judged pairs of ``pairs_df`` (Dataset.pairs(): text, grade, product fields,
    query_id, product_id); see the module docstring."""
    cfg = prompt_cfg or PromptConfig()
    missing = [c for c in ("text", "grade") if c not in pairs_df.columns]
    if missing:
        raise ValueError(f"pairs_df lacks column(s) {missing}")
    rows = pairs_df.to_dict("records")
    items = [(str(row["text"]), product, int(row["grade"])) for row, product in zip(rows, pair_products(pairs_df))]
    if hasattr(teacher, "write_many"):  # the LLM teacher runs its requests concurrently
        outputs = teacher.write_many(items)
    else:
        outputs = [teacher.write(*item) for item in items]
    examples, report = [], TeacherReport()
    for row, (query, product, gold), out in zip(rows, items, outputs):
        if out is None:
            report.add(gold, "dropped")
            continue
        report.add(gold, "agreed" if out.agreed else "conditioned")
        examples.append({"prompt": build_prompt(query, product, cfg), "completion": out.completion, "grade": gold,
                         "query": query, "product": product, "query_id": row.get("query_id"),
                         "product_id": row.get("product_id")})
    return examples, report


def split_examples(ds: Dataset, split: str, prompt_cfg: PromptConfig, rules: str = "", engine=None) -> list[dict]:
    """One example per judged pair of ``split`` (none dropped), completions by the rule teacher."""
    if engine is None:
        from searchrl.relevance.rules.engine import RuleEngine
        engine = RuleEngine.from_yaml(rules or None)
    examples, _ = build_examples(ds.split(split).pairs(), RuleTeacher(engine, prompt_cfg, "condition"), prompt_cfg)
    return examples


def subset(examples: list, limit: int, seed: int) -> list:
    """All of ``examples`` (limit 0 or >= len), or a seeded subset of ``limit`` in their original order."""
    if not limit or limit >= len(examples):
        return list(examples)
    keep = np.sort(np.random.default_rng([seed, 7]).permutation(len(examples))[:limit])
    return [examples[i] for i in keep]


def check_order(examples: list[dict], order: str) -> None:
    # a label_first model trained on cot_first completions would score garbage at serving time
    for ex in examples:
        c = ex["completion"].strip()
        ok = c.startswith(GRADE_TOKENS) if order == "label_first" else c.endswith(GRADE_TOKENS)
        if not ok:
            raise ValueError(f"completion does not fit order={order!r}: {c[:80]!r}")


def encode_example(tokenizer, prompt: str, completion: str, max_length: int, eos: bool = True) -> dict | None:
    """{"input_ids", "labels"} (lists): prompt labels are IGNORE, completion + EOS are their own ids.

    Prompt and completion are encoded apart, so the boundary is exact (the completion
    starts with a special grade token or a step name, never mid-word). None if too long.
    ``eos=False`` leaves the EOS out (a grade-only example: the sequence simply ends, so the
    model is never taught to stop right after the grade).
    """
    p = encode_prompt(tokenizer, prompt)
    c = tokenizer(completion, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
    if len(p) + len(c) > max_length:
        return None
    return {"input_ids": p + c, "labels": [IGNORE] * len(p) + c}


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-padded input_ids, attention_mask and labels, each [B, T]; per-row integers the examples carry
    (``group``, ``grade``: what a rank loss pairs) as [B] tensors."""
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # [B, T]
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    extra = {k: torch.tensor([b[k] for b in batch]) for k in ("group", "grade") if all(k in b for b in batch)}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, **extra}
