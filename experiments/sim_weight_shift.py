"""Would a similarity weight tuned on the valid fold lift a CV run's within-query ranking? (A negative result.)

    python -m experiments.sim_weight_shift --cv-dir runs/default_model_cv/default [--folds 0,1,2,3,4]

For each fold's SFT model (``fold{f}/seed0/sft/final`` with its ``data``, as `searchrl eval relevance --cv`
writes them), the Good log-odds of every valid and test pair and the model's own readout cosine are scored. The
cosine is read exactly: adding 1 to the L3 and L4 similarity weights adds 1 x cosine to the Good log-odds. Then a
shift delta of those two weights is chosen on the valid fold, once for per-query AUC over a grid and once by a
logistic fit, tiering's beta re-tuned, and the test fold scored. The shift folds back into the model exactly
(``sim_w[2:] += delta``): it would be a deployable post-training step, like tiering's beta. Measured on Chorus:
the chosen delta swings between folds and neither choice beats delta = 0.

Simplifies: one seed (seed0) per fold; no interval (the folds' deltas are the spread). Wall time: 22 min on one
thread, 2 cores shared with four runs (two scoring passes over each fold's valid and test pairs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from searchrl.data.schema import load_dataset
from searchrl.metrics.measures import classification_metrics, per_query_auc
from searchrl.relevance.scoring.evaluate import split_probs, tune_beta
from searchrl.relevance.scoring.scorer import RelevanceScorer
from searchrl.relevance.scoring.tiering import tiered_grades


def good_log_odds(p: np.ndarray) -> np.ndarray:
    return np.log(p[:, 2:].sum(1)) - np.log(p[:, :2].sum(1))


def fold_scores(fold_dir: str) -> dict:
    missing = [x for x in (f"{fold_dir}/data/dataset.json", f"{fold_dir}/sft/final/relevance_config.json")
               if not Path(x).exists()]
    if missing:
        raise SystemExit(f"error: {missing[0]}: no such file (is --cv-dir a finished `eval relevance --cv` run?)")
    ds, scorer = load_dataset(f"{fold_dir}/data"), RelevanceScorer.load(f"{fold_dir}/sft/final")
    out = {}
    for split in ("valid", "test"):
        p0, gold, _ = split_probs(scorer, ds, split)
        with torch.no_grad():
            scorer.model.sim_w[2:] += 1.0
        p1, _, _ = split_probs(scorer, ds, split)
        with torch.no_grad():
            scorer.model.sim_w[2:] -= 1.0
        out[split] = {"probs": p0, "sim": good_log_odds(p1) - good_log_odds(p0), "gold": np.array(gold),
                      "qid": ds.split(split).pairs()["query_id"].astype(str).to_numpy()}
    return out


def shifted(p: np.ndarray, sim: np.ndarray, delta: float) -> np.ndarray:
    w = p.copy()
    w[:, 2:] *= np.exp(delta * sim)[:, None]
    return w / w.sum(1, keepdims=True)


def mean_auc(s: dict, delta: float) -> float:
    return float(np.mean(list(per_query_auc(s["gold"], good_log_odds(shifted(s["probs"], s["sim"], delta)),
                                            s["qid"]).values())))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cv-dir", required=True)
    ap.add_argument("--folds", default="0,1,2,3,4")
    a = ap.parse_args(argv)
    folds = [fold_scores(f"{a.cv_dir}/fold{f}/seed0") for f in map(int, a.folds.split(","))]
    grid = np.linspace(0, 30, 61)
    result = {}
    for how in ("none", "valid AUC grid", "valid logistic fit"):
        deltas, aucs, gold, pred = [], [], [], []
        for s in folds:
            v, t = s["valid"], s["test"]
            if how == "none":
                delta = 0.0
            elif how == "valid AUC grid":
                delta = float(grid[np.argmax([mean_auc(v, d) for d in grid])])
            else:
                fit = LogisticRegression(C=1e4, max_iter=2000).fit(
                    np.c_[good_log_odds(v["probs"]), v["sim"]], v["gold"] >= 3)
                delta = float(fit.coef_[0, 1] / fit.coef_[0, 0])
            beta, _ = tune_beta(shifted(v["probs"], v["sim"], delta), list(v["gold"]))
            deltas.append(delta)
            aucs += list(per_query_auc(t["gold"], good_log_odds(shifted(t["probs"], t["sim"], delta)),
                                       t["qid"]).values())
            gold += list(t["gold"])
            pred += list(tiered_grades(shifted(t["probs"], t["sim"], delta), beta))
        m = classification_metrics(gold, pred)
        result[how] = {"deltas": deltas, "auc": float(np.mean(aucs)), "good_f1": m["good_f1"],
                       "macro_f1": m["macro_f1"]}
        print(f"{how}: delta per fold {np.round(deltas, 1).tolist()}, per-query AUC {np.mean(aucs):.3f}, "
              f"Good-F1 {m['good_f1']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    return result


if __name__ == "__main__":
    main()
