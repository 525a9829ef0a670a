"""A synthetic but internally consistent run report input, for eyeballing the page and for tests.

:func:`example_report` builds every section of the contract in :mod:`searchrl.eval.report`:
grade probabilities are drawn per pair around the gold grade (less noise for the "better"
systems), and the relevance rows, confusion matrix, reliability input and tiering curve are
computed from them with the project's own metric and tiering functions, so the numbers on
the page agree with each other. The final system's reasoning measures come from made-up
counts of decoded completions through the project's own rates, and the first system carries
one failed free-signal check (its own per-query AUC against a made-up cosine value). Learning
curves and retrieval numbers are smooth made-up functions. One query and one chain of thought
hold HTML special characters on purpose.

Simplifies: nothing here was trained; the numbers only look like a run's.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.metrics import f1_score

from searchrl.metrics.measures import classification_metrics, good_auc
from searchrl.relevance.scoring.reasoning import reasoning_rates
from searchrl.relevance.scoring.tiering import BETA_GRID, argmax_grades, tiered_grades, tune_beta

TRICKY_QUERY = 'usb-c cable <2m> & "fast" charging'
TRICKY_COT = ('The query asks for a cable shorter than 2 m: <length> < 2m & "fast".\n'
              '<script>alert("not code")</script> is text here.\nVerdict: <L4>')
# the final system's decoded completions, counted as reasoning.reasoning_counts counts them
REASONING_COUNTS = {"completions": 256, "parsed": 246, "self_consistent": 229,
                    "step_agree": {"query": 201, "item": 214, "category": 226, "attribute": 188, "verdict": 171}}


def _probs(rng: np.random.Generator, gold: np.ndarray, noise: float) -> np.ndarray:
    """[N, 4] grade probabilities that peak near the gold grade; more noise = a worse model."""
    logits = rng.normal(0, noise, (len(gold), 4))
    logits[np.arange(len(gold)), gold - 1] += 2.0
    logits[np.arange(len(gold)), np.clip(gold, 2, 3) - 1] += 0.6  # models hedge towards the middle grades
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _curve(steps, start, end, rate, rng, jitter) -> list[float]:
    return [float(end + (start - end) * np.exp(-rate * s) + rng.normal(0, jitter)) for s in steps]


def _relevance(rng: np.random.Generator, gold: np.ndarray, qids: np.ndarray):
    """Relevance rows of three systems (noisier = worse) and the last one's probabilities, tiering and P(Good)."""
    rows, chosen = [], None
    for system, noise in (("sft", 1.6), ("sft+dpo", 1.3), ("grpo", 1.0)):
        probs = _probs(rng, gold, noise)
        pred = argmax_grades(probs)
        m = classification_metrics(gold, pred)
        p_good = probs[:, 2:].sum(1)
        row = {"system": system, **m, "x_good_auc_per_query": good_auc(gold, p_good, qids)["x_good_auc_per_query"]}
        # A made-up bootstrap interval, so the page shows how intervals print.
        row["x_ci"] = {k: [round(row[k] - 0.03, 3), round(row[k] + 0.03, 3)] for k in ("macro_f1", "good_f1")}
        rows.append(row)
        chosen = (system, probs, p_good)
    system, probs, p_good = chosen
    # decoded: the reasoning measures, and the older looser ones (250 of 256 readable, 238 of them adherent)
    rows[-1].update(reasoning_rates(REASONING_COUNTS), x_format_error_rate=6 / 256, x_rule_adherence=238 / 250,
                    x_hallucination_rate=12 / 250)
    rows[0]["x_free_signal_failures"] = [{"measure": "per-query AUC of P(Good)", "system": rows[0]["system"],
                                          "model": rows[0]["x_good_auc_per_query"], "signal": "minilm-cosine",
                                          "signal_value": round(rows[0]["x_good_auc_per_query"] + 0.021, 3)}]
    beta, _ = tune_beta(probs, gold)
    betas = [float(b) for b in BETA_GRID]
    # the criterion tune_beta maximises (sklearn's macro-F1 over the four grades), at every grid point
    tier_f1 = [float(f1_score(gold, tiered_grades(probs, b), labels=[1, 2, 3, 4], average="macro", zero_division=0))
               for b in betas]
    tiering = {"system": system, "split": "valid", "betas": betas, "macro_f1": tier_f1, "chosen_beta": float(beta)}
    return rows, system, probs, p_good, tiering


def _curves(rng: np.random.Generator) -> dict:
    steps = list(range(0, 201, 5))
    return {
        "relevance_sft": [{"step": s, "loss": v, **({"valid_macro_f1": 0.30 + 0.12 * (1 - np.exp(-s / 60))}
                                                     if s % 50 == 0 else {})}
                          for s, v in zip(steps, _curve(steps, 2.1, 0.45, 0.03, rng, 0.03))],
        "dpo": [{"step": s, "loss": v, "accuracy": min(1.0, 0.5 + s / 400)}
                for s, v in zip(steps, _curve(steps, 0.69, 0.35, 0.02, rng, 0.02))],
        "grpo": [{"step": s, "loss": float(rng.normal(0, 0.05)), "reward_mean": r, "kl": 0.0004 * s,
                  "groups_filtered_frac": max(0.0, 0.4 - s / 600), "guided_groups": int(rng.integers(0, 4)),
                  **({"valid_macro_f1": 0.42 + 0.04 * s / 200} if s % 50 == 0 else {})}
                 for s, r in zip(steps, _curve(steps, 0.35, 0.7, 0.02, rng, 0.03))],
        "retriever_rgrpo": [{"step": s, "reward_mean": r, "kl": 0.0002 * s}
                            for s, r in zip(steps, _curve(steps, 0.2, 0.45, 0.015, rng, 0.02))],
    }


def _retrieval() -> dict:
    ks = [1, 5, 10, 20, 50, 100]
    systems = {"bm25": (0.30, 0.05), "minilm": (0.36, 0.045), "retriever_sft": (0.42, 0.04),
               "retriever_hardneg": (0.45, 0.04), "r-grpo": (0.47, 0.038)}
    hit = {s: {k: round(min(0.98, top * (1 + np.log(k)) / 3.2), 4) for k in ks} for s, (top, _) in systems.items()}
    ndcg = {s: {k: round(top * (0.75 + 0.25 * np.log10(k)), 4) for k in ks} for s, (top, _) in systems.items()}
    train_seconds = {"bm25": 1.2, "minilm": 0.0, "retriever_sft": 412.7, "retriever_hardneg": 655.1, "r-grpo": 1830.4}
    rows = [{"system": s, "hitrate@10": hit[s][10], "ndcg@10": ndcg[s][10], "mrr@10": round(top * 0.9, 4),
             "hitrate@100": hit[s][100], "ndcg@100": ndcg[s][100], "goodrate@10": round(0.4 + top, 4),
             "bm25_overlap@10": 1.0 if s == "bm25" else round(0.6 - top / 2, 4),
             "quality@10": round(0.5 + dq, 4), "x_train_seconds": train_seconds[s]}
            for s, (top, dq) in systems.items()]
    return {"split": "test", "rows": rows, "curves": {"ndcg": ndcg, "hitrate": hit}}


def _examples(gold, probs, p_good, qids, system: str) -> list[dict]:
    examples = []
    pred = argmax_grades(probs)
    for g in (4, 3, 2, 1):
        # per grade one pair the model got right and one it got wrong (when there is one)
        picks = [*np.flatnonzero((gold == g) & (pred == g))[:1], *np.flatnonzero((gold == g) & (pred != g))[:1]]
        for i in picks:
            examples.append({"query": f"query {qids[i]}", "title": f"product {i} (gold L{g})", "gold": int(g),
                             "pred": int(pred[i]), "p_good": round(float(p_good[i]), 3),
                             "cot": f"The product matches the query's category.\nVerdict: <L{pred[i]}>",
                             "system": system})
    examples[0].update(query=TRICKY_QUERY, title='Anker USB-C cable 1m <braided> & "fast"', cot=TRICKY_COT)
    return examples


STAGES = [
    {"name": "data", "status": "reused", "wall_seconds": 0.4},
    {"name": "baselines", "status": "ran", "wall_seconds": 12.8},
    {"name": "relevance_sft", "status": "ran", "wall_seconds": 1410.2,
     "config_diff": [{"key": "lr", "default": 2e-5, "value": 5e-5}, {"key": "epochs", "default": 3, "value": 1},
                     {"key": "lora.r", "default": None, "value": 16}]},
    {"name": "tiering", "status": "ran", "wall_seconds": 3.1},
    {"name": "passn_dpo", "status": "ran", "wall_seconds": 980.0,
     "config_diff": [{"key": "n_samples", "default": 8, "value": 4}]},
    {"name": "grpo", "status": "ran", "wall_seconds": 2630.5,
     "config_diff": [{"key": "guided_replay", "default": False, "value": True}]},
    {"name": "export", "status": "ran", "wall_seconds": 40.2},
    {"name": "retriever_sft", "status": "ran", "wall_seconds": 412.7},
    {"name": "retriever_hardneg", "status": "ran", "wall_seconds": 655.1},
    {"name": "retriever_rgrpo", "status": "failed", "wall_seconds": 1830.4,
     "message": "CUDA out of memory after step 200 <retried with batch 8 & failed>"},
    {"name": "teacher", "status": "skipped", "message": "no teacher endpoint configured"},
    {"name": "evaluation", "status": "ran", "wall_seconds": 95.3},
]

DATASET = {
    "name": "chorus",
    "counts": {"products": 7345, "queries": 342, "judgments": 3312},
    "grades_by_split": {"train": {"1": 812, "2": 301, "3": 498, "4": 597},
                        "valid": {"1": 180, "2": 70, "3": 110, "4": 192},
                        "test": {"1": 171, "2": 66, "3": 121, "4": 194}},
    "provenance": {"description": "Chorus search relevance judgments (German electronics shop).",
                   "licence": "CC BY-SA 4.0",
                   "files": [{"name": "1.json.zip", "url": "https://example.org/chorus/1.json.zip",
                              "sha256": "9f2c4e" + "0" * 52 + "a1b2c3"},
                             {"name": "products.json", "url": None, "sha256": None}]},
}


def example_report() -> dict:
    rng = np.random.default_rng(0)
    n_queries, per_query = 60, 10
    qids = np.repeat([f"q{i}" for i in range(n_queries)], per_query)
    gold = rng.choice([1, 2, 3, 4], size=len(qids), p=[0.35, 0.15, 0.2, 0.3])
    rows, system, probs, p_good, tiering = _relevance(rng, gold, qids)
    baseline = {"system": "bm25 score buckets", "accuracy": 0.412, "macro_f1": 0.318, "good_f1": 0.641,
                "f1_L1": 0.52, "f1_L2": 0.08, "f1_L3": 0.21, "f1_L4": 0.46}
    return {
        "run": {"name": "chorus-example", "date": "2026-11-02 14:05 UTC",
                "command": "searchrl pipeline --dataset chorus --out runs/chorus-example"},
        "dataset": copy.deepcopy(DATASET),
        "stages": copy.deepcopy(STAGES),
        "relevance": {"split": "test", "rows": [baseline, *rows],
                      "human_ceiling": {"label": "human raters (Chorus)", "macro_f1": [0.43, 0.47],
                                        "good_f1": [0.85, 0.88],
                                        "note": "Human ceiling: agreement of an independent set of raters "
                                                "with the gold labels."},
                      "confusion_system": system,
                      "calibration": {"system": system, "p_good": [float(p) for p in p_good],
                                      "gold": [int(g) for g in gold]}},
        "tiering": tiering,
        "curves": _curves(rng),
        "retrieval": _retrieval(),
        "examples": _examples(gold, probs, p_good, qids, system),
    }
