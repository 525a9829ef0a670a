"""Evaluate a relevance model, or the rule engine alone, on a dataset split.

- :func:`evaluate_model`: grade probabilities from one prefill per pair (the serving
  scorer, shared query prefix), turned into grades three ways side by side: argmax,
  cumulative-probability tiering with the model's beta, and per-grade thresholds.
  A cot-first model is decoded instead, its grade read after the reasoning. With
  ``decode=True`` the completion is also generated greedily and parsed, adding to the
  first row the measures of its reasoning against the rule engine's verdicts for each
  pair (:mod:`searchrl.relevance.scoring.reasoning`: x_parse_rate, x_step_agreement and
  per step, x_self_consistency, x_discriminative_hallucination_rate) and the older, looser
  x_format_error_rate, x_rule_adherence (the written grade lies in the set the written
  verdicts allow) and x_hallucination_rate (its complement among readable completions).
- :func:`tune_tiering`: fits beta (and the per-grade thresholds, for comparison) on
  a split and stores them in the model's scorer config.
- :func:`rule_agreement`: the rule engine's grade vs the human grade, per split —
  the quality of the teacher's own verdicts, measured.
- :func:`evaluate_examples`: the quick in-training evaluation of the trainers (macro-F1,
  accuracy, Good-F1 on an example list), from the grade probabilities or, for a cot-first
  model, from greedy decoding (:func:`decode_completions`, the one decode loop).

A trained model directory carries ``relevance_config.json`` (scorer_config.py), so
evaluation builds exactly the training prompts.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from searchrl.data.schema import SPLITS, Dataset, pair_products
from searchrl.metrics.measures import classification_metrics, good_auc
from searchrl.relevance.format.parser import is_consistent, parse_completion
from searchrl.relevance.model.load import grade_probs
from searchrl.relevance.model.scorer_config import update_scorer_config
from searchrl.relevance.model.tokenizer import encode_prompt, render_prompt
from searchrl.relevance.rules.engine import RuleEngine, pair_slugs
from searchrl.relevance.rules.kb import completion_grammar
from searchrl.relevance.scoring.reasoning import reasoning_measures
from searchrl.relevance.scoring.tiering import (
    argmax_grades,
    beta_curve,
    threshold_grades,
    tiered_grades,
    tune_beta,
    tune_grade_thresholds,
)
from searchrl.rl.rollout import sample_groups


def rule_agreement(ds: Dataset, engine: RuleEngine | None = None, splits=SPLITS) -> list[dict]:
    """One metrics row per split: the rule engine's grade against the human grade."""
    engine = engine or RuleEngine.from_yaml()
    rows = []
    for split in splits:
        pairs = ds.split(split).pairs()
        if pairs.empty:
            continue
        pred = [engine.judge(q, p).grade for q, p in zip(pairs["text"], pair_products(pairs))]
        rows.append({"system": f"rules ({split})", **classification_metrics(pairs["grade"].tolist(), pred),
                     **good_auc(pairs["grade"].tolist(), pred, pairs["query_id"].tolist())})
    return rows


def decode_completions(model, tokenizer, prompts: list[str], max_new_tokens: int = 160,
                       batch_size: int = 16, progress: bool = True, min_new_tokens: int = 0,
                       grammar=None, linked: list[dict] | None = None) -> list[str]:
    """Greedy completions of rendered prompts (text after the prompt, special grade tokens kept): the rollout
    sampler at temperature 0 (one prefill per prompt, KV-cached steps), the one decode loop of searchrl;
    ``grammar`` (format.grammar.CompletionGrammar) keeps them to the completion grammar, and ``linked`` (one
    per prompt: rules.engine.pair_slugs) to each pair's own type-step candidates."""
    out = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="decode", leave=False, disable=not progress):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
        bound = grammar.bind(linked[start:start + batch_size]) if grammar is not None and linked else grammar
        out += sample_groups(model, tokenizer, encoded, 1, max_new_tokens, temperature=0.0,
                             min_new_tokens=min_new_tokens, grammar=bound).texts(tokenizer)
    return out


def predict_grades(model, tokenizer, prompts: list[str], prompt_cfg, batch_size: int = 16,
                   max_new_tokens: int = 160, linked: list[dict] | None = None) -> np.ndarray:
    """Grades 1..4 of rendered prompts: argmax of the grade probabilities (label_first), or the last grade
    token greedy decoding under the model's completion grammar writes (cot_first; 1 when it writes none), its
    type steps bound to each pair's ``linked`` candidates where given (rules.engine.pair_slugs)."""
    if prompt_cfg.order == "label_first":
        return grade_probs(model, tokenizer, prompts, batch_size).argmax(1) + 1
    texts = decode_completions(model, tokenizer, prompts, max_new_tokens, batch_size, progress=False,
                               grammar=completion_grammar(tokenizer, prompt_cfg), linked=linked)
    return np.array([int(found[-1]) if (found := re.findall(r"<L([1-4])>", t)) else 1 for t in texts])


def evaluate_examples(model, tokenizer, examples: list[dict], cfg, prompt_cfg, chat_template: bool) -> dict:
    """{"<split>_macro_f1", "<split>_accuracy", "<split>_good_f1"} on examples ({"prompt", "grade"}), and for a
    label-first model whose examples carry query ids, "<split>_good_auc": the mean per-query AUC of P(Good)
    (what eval.best_metric selects on by default); ``cfg`` is the trainer's config.EvalConfig."""
    prompts = [render_prompt(tokenizer, ex["prompt"], chat_template) for ex in examples]
    gold = [int(ex["grade"]) for ex in examples]
    out = {}
    if prompt_cfg.order == "label_first":
        probs = grade_probs(model, tokenizer, prompts, cfg.batch_size)  # [N, 4]
        pred = probs.argmax(1) + 1
        qids = [ex.get("query_id") for ex in examples]
        if None not in qids and "x_good_auc_per_query" in (auc := good_auc(gold, probs[:, 2:].sum(1), qids)):
            out[f"{cfg.split}_good_auc"] = auc["x_good_auc_per_query"]
    else:
        paired = all("query" in ex and "product" in ex for ex in examples)  # train.examples' dicts carry the pair
        linked = pair_slugs(prompt_cfg, [ex["query"] for ex in examples], [ex["product"] for ex in examples]) \
            if paired else None
        pred = predict_grades(model, tokenizer, prompts, prompt_cfg, cfg.batch_size, cfg.max_new_tokens, linked)
    m = classification_metrics(gold, pred.tolist())
    return {**{f"{cfg.split}_{k}": m[k] for k in ("macro_f1", "accuracy", "good_f1")}, **out}


def split_probs(scorer, ds: Dataset, split: str) -> tuple[np.ndarray, list[int], list[str]]:
    """([N, 4] grade probabilities, gold grades, prompts) for the split's pairs, grouped by query for prefix sharing."""
    pairs = ds.split(split).pairs()
    if pairs.empty:
        raise ValueError(f"split {split!r} has no judged pairs")
    products = pair_products(pairs)
    groups = pairs.groupby("query_id", sort=False).indices  # query id -> positional row indices
    rows = list(groups.values())
    requests = [(pairs["text"].iloc[idx[0]], [products[i] for i in idx]) for idx in rows]
    probs = np.zeros((len(pairs), 4))
    for idx, p in zip(rows, scorer.grade_probs(requests)):
        probs[idx] = p
    prompts = [scorer.prompt(q, p) for q, p in zip(pairs["text"], products)]
    return probs, pairs["grade"].astype(int).tolist(), prompts


def decoded_measures(parsed: list, gold: list[int], rule_verdicts: list[dict]) -> dict:
    """The x_ measures of parsed decoded completions (one per pair; ``gold``: the human grades, ``rule_verdicts``:
    the rule engine's step verdicts): the reasoning measures (reasoning.py) and the looser older ones --
    x_format_error_rate (no grade token or not five valid verdicts), x_rule_adherence (share of the readable
    ones whose grade the verdicts allow; 0.0 when none is readable), x_hallucination_rate (its complement; 0.0
    when none is readable) and x_decoded_accuracy (the written grade equals the human grade)."""
    ok = [p for p in parsed if p.grade is not None and len(p.verdicts) == 5]
    consistent = [is_consistent(p.grade, p.verdicts) for p in ok]
    out = {"x_format_error_rate": 1 - len(ok) / max(len(parsed), 1),
           "x_rule_adherence": float(np.mean(consistent)) if ok else 0.0}
    out["x_hallucination_rate"] = 1 - out["x_rule_adherence"] if ok else 0.0
    out["x_decoded_accuracy"] = float(np.mean([p.grade == g for p, g in zip(parsed, gold)]))
    return {**out, **reasoning_measures(parsed, rule_verdicts)}


def evaluate_model(model_dir: str | Path, ds: Dataset, split: str = "test", decode: bool = False,
                   batch_size: int = 16, max_new_tokens: int = 160, system: str | None = None,
                   rules: str | Path | None = None) -> list[dict]:
    """Metrics rows for ``model_dir`` on ``split``: argmax, tiered (beta) and per-grade thresholds; decoded, the
    first row also carries :func:`decoded_measures`, against the rule engine of ``rules`` (None: the packaged
    rules.yaml)."""
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    scorer = RelevanceScorer.load(model_dir, batch_size=batch_size)
    cfg, name = scorer.config, system or Path(model_dir).name
    probs, gold, prompts = split_probs(scorer, ds, split)
    cot_first = cfg.prompt.order == "cot_first"
    parsed = []
    if decode or cot_first:  # a cot-first model's grade exists only after its reasoning: decode it
        pairs = ds.split(split).pairs()
        texts = decode_completions(scorer.model, scorer.tokenizer, prompts, max_new_tokens, batch_size,
                                   grammar=completion_grammar(scorer.tokenizer, cfg.prompt, rules),
                                   linked=pair_slugs(cfg.prompt, pairs["text"], pair_products(pairs), rules))
        parsed = [parse_completion(t, cfg.prompt.order) for t in texts]
    if cot_first:  # no readable grade counts as L1 (the most common grade), i.e. as a miss for the rest
        rows = [{"system": name, **classification_metrics(gold, [p.grade or 1 for p in parsed])}]
    else:
        thresholds = cfg.grade_thresholds or [0.5, 0.5, 0.5]
        tuned = "" if cfg.grade_thresholds else ", untuned"
        rows = [{"system": name, **classification_metrics(gold, argmax_grades(probs).tolist())},
                {"system": f"{name} tiered (beta={cfg.beta:g})",
                 **classification_metrics(gold, tiered_grades(probs, cfg.beta).tolist())},
                {"system": f"{name} thresholds ({'/'.join(f'{t:g}' for t in thresholds)}{tuned})",
                 **classification_metrics(gold, threshold_grades(probs, thresholds).tolist())}]
        # split_probs keeps the pairs' order, so the split's query ids line up with probs
        rows[0].update(good_auc(gold, probs[:, 2:].sum(1), ds.split(split).pairs()["query_id"].tolist()))
    if parsed:
        engine, pairs = RuleEngine.from_yaml(rules), ds.split(split).pairs()
        rule_verdicts = [engine.judge(q, p).verdicts for q, p in zip(pairs["text"], pair_products(pairs))]
        rows[0].update(decoded_measures(parsed, gold, rule_verdicts))
    return rows


def tune_tiering(model_dir: str | Path, ds: Dataset, split: str = "valid", batch_size: int = 32) -> dict:
    """Fit beta and the per-grade thresholds for macro-F1 on ``split``; store both in the scorer config."""
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    scorer = RelevanceScorer.load(model_dir, batch_size=batch_size)
    if scorer.config.prompt.order == "cot_first":
        raise ValueError(f"{model_dir}: a cot-first model's grade is decoded, not read from probabilities; "
                         "tiering does not apply")
    probs, gold, _ = split_probs(scorer, ds, split)
    betas, curve = beta_curve(probs, gold)
    beta, f1_tiered = tune_beta(probs, gold)
    thresholds, f1_thresholds = tune_grade_thresholds(probs, gold)
    update_scorer_config(model_dir, beta=beta, grade_thresholds=thresholds)
    argmax_f1 = classification_metrics(gold, argmax_grades(probs).tolist())["macro_f1"]
    return {"split": split, "n": len(gold), "beta": beta, "macro_f1_tiered": f1_tiered,
            "grade_thresholds": thresholds, "macro_f1_thresholds": f1_thresholds, "macro_f1_argmax": argmax_f1,
            "curve": {"betas": [float(b) for b in betas], "macro_f1": curve}}
