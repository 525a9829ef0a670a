"""The retriever's stages on Chorus test, and what each R-GRPO reward term does: removed in turn, and exclusivity
at weight 1.

    python -m experiments.retriever_reward_terms [--data runs/quickstart/data] [--relevance-model DIR]
        [--max-products 3000] [--steps 24] [--out runs/retriever_reward_terms] [--json PATH] [--md PATH]

Through the retriever's own chain (searchrl.retrieval.chain.run_retriever_stages, as the pipeline's retriever
stage runs it, with ``ablations``): BM25, zero-shot MiniLM, SFT, SFT + hardneg, SFT + R-GRPO, and R-GRPO with
each reward term (relevance, quality, exclusivity) switched off in turn, rewarded and graded (goodrate@10) by the
quickstart's SFT relevance model, on the quickstart's 3,000-product catalogue with 24 steps a stage
(retriever_quickstart.yaml). Then the exclusivity check: R-GRPO with exclusivity weight 1 against the table's
run without exclusivity (weight 0), everything else equal; the BM25 overlap of the top 10 should drop.

Simplifies: one seed, no intervals (experiments/rgrpo_judge_quality.py gives the paired intervals over seeds);
the evaluation catalogue is the training subset. Wall time: 42 min for the table and ~8 for the exclusivity run,
on 2 cores shared with another job.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from experiments.common import run_main, trainer_config, write_report
from searchrl.data.schema import load_dataset
from searchrl.metrics.measures import format_table
from searchrl.retrieval.chain import catalogue_subset, run_retriever_stages, run_stage, stage_config
from searchrl.retrieval.config import RetrieverConfig
from searchrl.retrieval.evaluate import Retriever, evaluate_retrieval

COLUMNS = ["ndcg@10", "hitrate@10", "mrr@10", "hitrate@100", "goodrate@10", "bm25_overlap@10", "quality@10",
           "x_train_seconds"]


def exclusivity_row(cfg: RetrieverConfig, ds, out: Path, relevance_model: str) -> dict:
    """R-GRPO from the table's SFT encoder with the exclusivity weight at 1, evaluated as the table's rows."""
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    reward = dataclasses.replace(cfg.reward, relevance_model=relevance_model, w_x=1.0)
    final, _ = run_stage(stage_config(cfg, out / "ret_rgrpo_exclusivity_1", stage="rgrpo",
                                      encoder=str(out / "ret_sft" / "final"), reward=reward))
    sub = catalogue_subset(ds, cfg.max_products)
    return evaluate_retrieval(Retriever(final, sub.products), sub, "test", (10, 100),
                              RelevanceScorer.load(relevance_model), system="sft+rgrpo exclusivity weight 1")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="runs/quickstart/data")
    ap.add_argument("--relevance-model", default="runs/quickstart/sft/final",
                    help="the relevance model that rewards R-GRPO and grades goodrate@10")
    ap.add_argument("--max-products", type=int, default=3000, help="catalogue size (0 = the whole catalogue)")
    ap.add_argument("--steps", type=int, default=24, help="steps a stage")
    ap.add_argument("--out", default="runs/retriever_reward_terms")
    ap.add_argument("--json")
    ap.add_argument("--md")
    a = ap.parse_args(argv)
    out = Path(a.out)
    cfg = trainer_config(RetrieverConfig, "retriever_quickstart", [
        f"data_dir={a.data}", f"max_products={a.max_products}", f"optim.max_steps={a.steps}", "rebuild_every=8",
        "run.save_every=8"])
    ds = load_dataset(a.data)
    rows = run_retriever_stages(cfg, ds, out, "test", a.relevance_model, ablations=True)
    rows.append(exclusivity_row(cfg, ds, out, a.relevance_model))
    md = format_table(rows, COLUMNS, title=f"Retriever stages on Chorus test, {a.max_products or 'all'} products, "
                                           f"{a.steps} steps a stage")
    return write_report({"rows": rows}, md, a.json, a.md)


if __name__ == "__main__":
    run_main(main)
