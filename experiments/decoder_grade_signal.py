"""How much a small decoder knows about relevance before SFT is asked to find it.

    python -m experiments.decoder_grade_signal --data runs/quickstart/data [--model smollm2-135m] [--train 900]
        [--trained runs/llm/sft/final] [--page-dir docs/results/llm]

``pipeline --config llm`` trains SmolLM2-135M-Instruct's grade with LoRA on 512 examples, and its P(Good) ranks a
query's products at chance. This measures the signal the decoder carries at all, on the held-out pairs (valid and
test splits, 54 Chorus queries):

- ``zero-shot yes/no``: the instruct model asked whether the product is what the query looks for, answering Yes or
  No; the score is the logit of Yes minus that of No at its answer's first token;
- ``probe``: logistic regressions on its frozen last-layer state at that position, fit on a seeded subset of the
  train split (``--train`` pairs), at three strengths;

the same two for a randomly initialised tiny decoder (the tests' build: a control for what any text features
give), beside BM25, zero-shot MiniLM cosine and (``--trained``) a trained relevance model's P(Good) on the same
pairs: per-query and pooled AUC of the Good score, with query-bootstrap intervals.

Simplifies: one prompt (the question last, after title, brand and category); the probe's best strength is read
off the held-out pairs themselves, so its best row is an upper bound on what a linear readout of these states
gives. Wall time: 13 minutes on 2 threads.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from searchrl.data.schema import GOOD_MIN_GRADE, load_dataset, pair_products
from searchrl.eval.baselines import relevance_baseline_predictions
from searchrl.eval.results_page import ResultsPage
from searchrl.lexical.bm25 import BM25Index
from searchrl.metrics.measures import per_query_auc
from searchrl.metrics.stats import format_interval, query_bootstrap

QUESTION = "Is this product what the query is looking for? Answer Yes or No."
STRENGTHS = (0.01, 0.1, 1.0)  # inverse L2 strength C of the probe
HELD_OUT = ("valid", "test")


def yes_no_prompt(tokenizer, query: str, product: dict) -> str:
    """The question after the query and the product's title, brand and category, in the chat template when the
    tokenizer has one."""
    lines = [f"Query: {query}", f"Title: {product.get('title', '')}"]
    lines += [f"{k.title()}: {product[k]}" for k in ("brand", "category") if product.get(k)]
    text = "\n".join(lines) + f"\n\n{QUESTION}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text + "\nAnswer:"


@torch.no_grad()
def answer_scores(model, tokenizer, prompts: list[str], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """([N] logit(Yes) - logit(No), [N, H] last-layer state) at each prompt's last position; prompts are batched
    with left padding, so the last position is every row's own."""
    yes, no = (tokenizer.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    tokenizer.padding_side = "left"
    preference, states = [], []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        out = model(**batch, output_hidden_states=True)
        logits = out.logits[:, -1]  # [B, V]
        preference.append((logits[:, yes] - logits[:, no]).float().numpy())
        states.append(out.hidden_states[-1][:, -1].float().numpy())  # [B, H]
    return np.concatenate(preference), np.concatenate(states)


def pairs_of(ds, split: str, n: int | None = None, seed: int = 0):
    pairs = ds.split(split).pairs()
    return pairs.sample(n=n, random_state=seed).reset_index(drop=True) if n and n < len(pairs) else pairs


def auc_cells(score: np.ndarray, pairs) -> list[str]:
    """Per-query and pooled AUC of ``score`` for Good, with query-bootstrap intervals."""
    gold, qids = pairs["grade"].to_numpy(), pairs["query_id"].astype(str).to_numpy()
    per_query = per_query_auc(gold, score, qids)
    good = gold >= GOOD_MIN_GRADE
    pooled = query_bootstrap(metric=lambda rows: roc_auc_score(good[rows], score[rows]), groups=qids)
    return [format_interval(query_bootstrap(np.array(list(per_query.values())))), format_interval(pooled)]


def model_rows(label: str, model, tokenizer, held, train, started: float) -> list[list[str]]:
    """The zero-shot yes/no row and one probe row per strength for one model (the probe fit on ``train``)."""
    scores = {}
    for name, pairs in (("held", held), ("train", train)):
        prompts = [yes_no_prompt(tokenizer, q, p) for q, p in zip(pairs["text"], pair_products(pairs))]
        scores[name] = answer_scores(model, tokenizer, prompts)  # ([N], [N, H])
        print(f"{label}, {name}: {len(prompts)} pairs scored ({time.time() - started:.0f}s)", flush=True)
    scaler = StandardScaler().fit(scores["train"][1])
    rows = [[f"{label} zero-shot yes/no", *auc_cells(scores["held"][0], held)]]
    for c in STRENGTHS:
        probe = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(scores["train"][1]),
                                                          train["grade"].to_numpy() >= GOOD_MIN_GRADE)
        rows.append([f"{label} probe, C={c}", *auc_cells(probe.decision_function(
            scaler.transform(scores["held"][1])), held)])
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="smollm2-135m", help="a packaged GGUF name, a GGUF file or an HF directory")
    ap.add_argument("--train", type=int, default=900, help="train pairs the probe is fit on (a seeded subset)")
    ap.add_argument("--trained", default="", help="a trained relevance model directory scored beside them (P(Good))")
    ap.add_argument("--page-dir", default="docs/results/llm", help="where the page goes; '' = print only")
    args = ap.parse_args(argv)
    if args.train < 10:
        ap.error(f"--train must be at least 10 (pairs to fit the probe on), got {args.train}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from searchrl.relevance.model.builds import TINY
    from searchrl.relevance.model.load import load_relevance_model
    from searchrl.relevance.model.pretrained import resolve_model
    started, path = time.time(), resolve_model(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    ds = load_dataset(args.data)
    held = pd.concat([ds.split(s).pairs() for s in HELD_OUT], ignore_index=True)
    train = pairs_of(ds, "train", args.train)
    rows = model_rows(args.model, model, tok, held, train, started)
    control, control_tok = load_relevance_model(TINY)  # random weights, seeded: what untrained features give
    rows += model_rows("random-init tiny decoder (control)", control.eval(), control_tok, held, train, started)
    bm25 = BM25Index(ds.products)  # one index for both splits
    scores: dict[str, list] = {}
    for split in HELD_OUT:  # the baselines fit on train and score one split at a time, in its pairs' order
        base = relevance_baseline_predictions(ds, split, bm25=bm25)
        for system in ("bm25-thresholds", "minilm-cosine"):
            scores.setdefault(system, []).append(base[system]["score"])
        if args.trained:
            from searchrl.relevance.scoring.evaluate import split_probs
            from searchrl.relevance.scoring.scorer import RelevanceScorer
            probs = split_probs(RelevanceScorer.load(args.trained), ds, split)[0]  # [N, 4]
            scores.setdefault(args.trained, []).append(probs[:, 2:].sum(1))
    rows += [[system, *auc_cells(np.concatenate(scores[system]), held)]
             for system in ("bm25-thresholds", "minilm-cosine", *([args.trained] if args.trained else []))]
    page = ResultsPage("grade_signal", "What a small decoder knows about relevance before training",
                       "python -m experiments.decoder_grade_signal --data " + args.data +
                       (f" --model {args.model}" if args.model != "smollm2-135m" else "") +
                       (f" --trained {args.trained}" if args.trained else ""), started=started)
    page.text(f"The held-out pairs: the valid and test splits ({held['query_id'].nunique()} queries, {len(held)} "
              f"pairs). The probe is fit on {len(train)} train pairs. Brackets are query-bootstrap 95% intervals. "
              f"The zero-shot prompt ends: \"{QUESTION}\"; its score is logit(Yes) - logit(No).")
    page.table(["system", "per-query AUC of the Good score", "pooled AUC"], rows)
    print(page.render())
    if args.page_dir:
        print(f"wrote {page.write(args.page_dir)}")


if __name__ == "__main__":
    main()
