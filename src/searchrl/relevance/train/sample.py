"""Stage 2a: pass@N sampling from the SFT model, and the preference pairs DPO trains on.

For every judged (query, product) pair of a split, N completions are sampled from the model with temperature and
top-p (rl.rollout.sample_groups: each prompt is encoded once and its KV cache shared by the N samples). A sample's
grade is what parser.parse_completion reads back; the sample is right when that equals the human grade. Reported:
pass@k for k = 1..N with the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021) averaged over prompts,
the share of prompts whose samples are all right / mixed / all wrong, and the samples' format-error rate.

Pairs, as in TaoSR1 (DESIGN.md, Stage 2): a mixed prompt gives chosen = a right sample whose own steps imply its
grade, rejected = a wrong one; a prompt with no such right sample gives chosen = the rule teacher's completion for
the gold grade, rejected = a wrong sample; an all-right prompt gives no pair. Rows are in TRL's preference format
(prompt, chosen, rejected) plus grade, ids and source ("sample" | "teacher").

Prompts are rebuilt exactly as the model was trained (the prompt settings and chat-template flag of its
relevance_config.json); the stored prompt is the rendered string and a completion carries no EOS (the DPO encoder
appends it), so prompt + completion + EOS is the SFT training format.

Simplifies: the teacher is the rule teacher (no LLM teacher); a sample cut off by max_new_tokens is kept as it is
(the DPO encoder ends it with EOS); samples are stored as decoded text, so with a tokenizer whose decode does not
round-trip (MiniLM's uncased WordPiece lowercases) the stored text is what the tokenizer reads back, not the exact
sampled ids. Within a role, well-formed candidates are preferred (see build_pairs), then one is drawn with the seed.
"""

from __future__ import annotations

import json
import random
from math import comb
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from searchrl.data.schema import DataError
from searchrl.errors import ConfigError, InputError
from searchrl.metrics.stats import query_bootstrap
from searchrl.relevance.format.parser import grade_implied_by_verdicts, parse_completion
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.scorer_config import load_scorer_config
from searchrl.relevance.model.tokenizer import encode_prompt, render_prompt
from searchrl.relevance.rules.engine import RuleEngine, link_examples
from searchrl.relevance.rules.kb import completion_grammar
from searchrl.relevance.rules.teacher import RuleTeacher
from searchrl.relevance.train.examples import build_examples
from searchrl.rl.rollout import sample_groups
from searchrl.training import resolve_device


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with c right samples out of n: 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"need 0 < k <= n and 0 <= c <= n, got n={n} c={c} k={k}")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def _pick(candidates: list[int], rank, rng: random.Random) -> int:
    # the best-ranked candidates first, then a seeded draw among them
    best = max(rank(i) for i in candidates)
    return rng.choice([i for i in candidates if rank(i) == best])


def build_pairs(samples: list[str], gold: int, teacher_completion: str, rng: random.Random,
                order: str = "label_first") -> dict | None:
    """{"chosen", "rejected", "source"} for one prompt's samples, or None when every sample is right.

    chosen: a right sample whose own steps, where it wrote any, imply its grade (parser's
    grade_implied_by_verdicts), preferring one without format errors; when there is none, the teacher's
    completion (source "teacher"). A right grade under steps that imply another is not chosen: DPO would
    teach its reasoning too, a grade its own reasoning contradicts (discriminative hallucination). rejected: a
    wrong sample, preferring one whose (wrong) grade can be read, then one without format errors: such a pair
    is about the grade, not about broken text.
    """
    parsed = [parse_completion(s, order) for s in samples]
    right = [i for i, p in enumerate(parsed)
             if p.grade == gold and (not p.verdicts or grade_implied_by_verdicts(p.verdicts) == p.grade)]
    wrong = [i for i, p in enumerate(parsed) if p.grade != gold]
    if not wrong:
        return None
    rejected = samples[_pick(wrong, lambda i: (parsed[i].grade is not None, parsed[i].ok), rng)]
    if right:
        return {"chosen": samples[_pick(right, lambda i: parsed[i].ok, rng)], "rejected": rejected,
                "source": "sample"}
    return {"chosen": teacher_completion, "rejected": rejected, "source": "teacher"}


def sample_preferences(model_dir: str | Path, ds, n: int, split: str = "train", temperature: float = 1.0,
                       top_p: float = 1.0, max_new_tokens: int = 256, prompts_per_batch: int = 8, seed: int = 0,
                       max_prompts: int = 0, rules: str | None = None, device: str = "auto",
                       progress: bool = True) -> tuple[list[dict], dict]:
    """(preference rows, pass@k table) for the model in model_dir on ds's split; see the module docstring.

    max_prompts > 0 samples a seeded subset of the split's pairs; rules is the rule YAML of the teacher
    (None = the packaged one).
    """
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    scorer = load_scorer_config(model_dir)
    order = scorer.prompt.order
    model, tok = load_relevance_model(str(model_dir))
    model.to(resolve_device(device))
    pairs_df = ds.split(split).pairs()
    if pairs_df.empty:
        raise InputError(f"split {split!r} has no judged pairs")
    if 0 < max_prompts < len(pairs_df):
        pairs_df = pairs_df.iloc[np.sort(np.random.default_rng(seed).permutation(len(pairs_df))[:max_prompts])]
    teacher = RuleTeacher(RuleEngine.from_yaml(rules), scorer.prompt, "condition")  # "condition" never drops
    examples, _ = build_examples(pairs_df, teacher, scorer.prompt)
    link_examples(scorer.prompt, examples, rules)
    prompts = [render_prompt(tok, ex["prompt"], scorer.chat_template) for ex in examples]

    generator = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    grammar = completion_grammar(tok, scorer.prompt, rules)  # type steps from the same rules
    rows, n_right, query_ids, n_format_errors = [], [], [], 0
    bar = tqdm(total=len(prompts), disable=not progress, desc=f"sample x{n}")
    for start in range(0, len(prompts), prompts_per_batch):
        batch = prompts[start:start + prompts_per_batch]
        linked = [ex.get("linked_slugs") for ex in examples[start:start + len(batch)]]
        rollout = sample_groups(model, tok, [encode_prompt(tok, p) for p in batch], n, max_new_tokens,
                                temperature, top_p, generator, grammar=grammar and grammar.bind(linked))
        texts = rollout.texts(tok)  # [len(batch) * n], the n samples of a prompt in consecutive rows
        for j, (prompt, ex) in enumerate(zip(batch, examples[start:start + len(batch)])):
            samples = texts[j * n:(j + 1) * n]
            parsed = [parse_completion(s, order) for s in samples]
            n_right.append(sum(p.grade == ex["grade"] for p in parsed))
            query_ids.append(str(ex["query_id"]))
            n_format_errors += sum(not p.ok for p in parsed)
            pair = build_pairs(samples, ex["grade"], ex["completion"], rng, order)
            if pair is not None:
                rows.append({"prompt": prompt, "chosen": pair["chosen"], "rejected": pair["rejected"],
                             "grade": int(ex["grade"]), "query_id": ex["query_id"],
                             "product_id": ex["product_id"], "source": pair["source"]})
        bar.update(len(batch))
    bar.close()

    table = {"split": split, "temperature": temperature, "top_p": top_p, **summarize(n_right, n, query_ids),
             "format_error_rate": n_format_errors / (len(n_right) * n), "pairs": len(rows),
             "pairs_from_samples": sum(r["source"] == "sample" for r in rows),
             "pairs_from_teacher": sum(r["source"] == "teacher" for r in rows)}
    return rows, table


def summarize(n_right: list[int], n: int, query_ids: list[str] | None = None, n_boot: int = 1000) -> dict:
    """prompts, n, pass@1..n (averaged over prompts) and the shares of all-right / mixed / all-wrong prompts;
    with ``query_ids`` (each prompt's query) also the right samples per prompt and query-bootstrap 95% intervals
    ("ci") of each pass@k and of pass@n - pass@1, what sampling n adds to one sample."""
    c = np.asarray(n_right)  # [P] right samples per prompt
    per_prompt = {k: np.array([pass_at_k(n, int(ci), k) for ci in c]) for k in range(1, n + 1)}  # k -> [P]
    out = {"prompts": len(c), "n": n, **{f"pass@{k}": float(v.mean()) if len(v) else 0.0 for k, v in per_prompt.items()},
           "all_right": float(np.mean(c == n)), "mixed": float(np.mean((c > 0) & (c < n))),
           "all_wrong": float(np.mean(c == 0))}
    if query_ids is None or len(set(query_ids)) < 2:
        return out

    def interval(values):
        iv = query_bootstrap(metric=lambda rows: float(values[rows].mean()), groups=query_ids, n_boot=n_boot)
        return [iv.lo, iv.hi]
    out["ci"] = {**{f"pass@{k}": interval(v) for k, v in per_prompt.items()},
                 f"pass@{n} - pass@1": interval(per_prompt[n] - per_prompt[1])}
    return {**out, "right_per_prompt": c.tolist(), "query_ids": list(query_ids)}


def write_pairs(path: str | Path, rows: list[dict]) -> Path:
    """JSON lines, one preference row each (TRL's prompt / chosen / rejected plus our fields)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def read_preference_pairs(path: str | Path) -> list[dict]:
    """Preference rows of a JSONL file; a bad line stops with ``file:line N: message``."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(path, f"line {n}", None, f"malformed JSON ({e.msg})") from None
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(r, dict) or not isinstance(r.get(k), str)]
        if missing:
            raise DataError(path, f"line {n}", missing[0], f"preference row lacks string field(s) {missing}")
        rows.append(r)
    return rows


def format_table(table: dict) -> str:
    lines = [f"pass@N on {table['split']}: {table['prompts']} prompts x {table['n']} samples "
             f"(temperature {table['temperature']:g}, top-p {table['top_p']:g})"]
    ci = table.get("ci", {})
    lines += [f"  pass@{k:<3} {table[f'pass@{k}']:.4f}" + (" [{:.3f}, {:.3f}]".format(*ci[f"pass@{k}"]) if ci else "")
              for k in range(1, table["n"] + 1)]
    lines.append(f"prompts all right {table['all_right']:.1%} | mixed {table['mixed']:.1%} | "
                 f"all wrong {table['all_wrong']:.1%}; sample format errors {table['format_error_rate']:.1%}")
    lines.append(f"pairs: {table['pairs']} ({table['pairs_from_samples']} from samples, "
                 f"{table['pairs_from_teacher']} with the teacher's completion as chosen)")
    return "\n".join(lines)
