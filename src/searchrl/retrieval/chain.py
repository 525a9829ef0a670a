"""The retriever's three stages end to end, as the quickstart runs them: sft, then hardneg and rgrpo from it.

:func:`run_retriever_stages` takes one base :class:`RetrieverConfig` (normally
``configs/retriever_quickstart.yaml``) and runs

1. ``sft`` from the configured encoder (all-MiniLM-L6-v2);
2. ``hardneg`` from the SFT encoder (mining with it: the pipeline R-GRPO replaces);
3. ``rgrpo`` from the SFT encoder, rewarded by the relevance model (P(Good)) + quality + exclusivity;

and, with ``ablations``, three more rgrpo runs with one reward term (relevance, quality,
exclusivity) switched off each; then evaluates BM25, the zero-shot encoder and the trained
encoders on one split, over the same catalogue the stages trained on (``max_products``: every
judged product plus a seeded random fill, so the table is cheap enough for the quickstart; 0 =
the whole catalogue), and after them each dense model fused with BM25
(``hybrid(bm25+NAME)``: retrieval.hybrid, default fusion), whose added_recall@K says what the
dense route adds to BM25's top K. Each row carries the stage's wall time (``x_train_seconds``:
mining included for hardneg; a hybrid row its dense model's). A stage whose ``final/`` exists
with the same config is reused, so a re-run only evaluates.

Simplifies: one seed; the evaluation catalogue is the training subset (documented in the README).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from searchrl.data.schema import Dataset
from searchrl.lexical.bm25 import BM25Index
from searchrl.retrieval.config import RetrieverConfig
from searchrl.retrieval.evaluate import Retriever, evaluate_retrieval
from searchrl.retrieval.hybrid import HybridRetriever
from searchrl.retrieval.rgrpo import train_rgrpo
from searchrl.retrieval.shared import subset_products
from searchrl.retrieval.train_sft import train_contrastive
from searchrl.stage_records import fingerprint, read_record, reusable, write_record


def catalogue_subset(ds: Dataset, max_products: int, seed: int = 0) -> Dataset:
    """``ds`` with the products the stages train on (the same seeded subset as stage.load_training_data)."""
    judged = set(ds.judgments["product_id"].astype(str))
    return dataclasses.replace(ds, products=subset_products(ds.products, judged, max_products, seed))


def run_stage(cfg: RetrieverConfig) -> tuple[Path, float]:
    """(final dir, seconds): trains the stage unless its record says done with the same fingerprint (the stage
    records the pipeline keeps too: searchrl.stage_records)."""
    out = Path(cfg.run.output_dir)
    fp = fingerprint({"config": _what_it_trains(json.loads(json.dumps(dataclasses.asdict(cfg)))),
                      "inputs": _inputs(cfg)})
    done = reusable(out, fp)
    if done is not None and (out / "final").is_dir():
        print(f"[retriever] reusing {out / 'final'} (same config and inputs)")
        return out / "final", done["seconds"]
    write_record(out, stage=cfg.stage, status="running", fingerprint=fp)
    t0 = time.perf_counter()
    _, final = train_rgrpo(cfg) if cfg.stage == "rgrpo" else train_contrastive(cfg)
    seconds = time.perf_counter() - t0
    write_record(out, stage=cfg.stage, status="done", fingerprint=fp, seconds=seconds)
    return final, seconds


def _what_it_trains(config: dict) -> dict:
    """A stage config without the fields that do not change the weights (whether to resume, progress bars)."""
    return {**config, "run": {k: v for k, v in config.get("run", {}).items() if k not in ("resume", "progress")}}


def _inputs(cfg: RetrieverConfig) -> dict:
    """What the stage reads besides its config: the start encoder's and the judge's stage fingerprints (a stage
    trained again changes them), and the dataset's card."""
    card = Path(cfg.data_dir) / "dataset.json" if cfg.data_dir else None
    def stage_of(model_dir: str):  # a final/ (or export/model) directory: its stage's record
        exists = bool(model_dir) and Path(model_dir).exists()
        return read_record(Path(model_dir).parent).get("fingerprint") if exists else None
    return {"encoder": stage_of(cfg.encoder), "judge": stage_of(cfg.reward.relevance_model),
            "dataset": hashlib.sha256(card.read_bytes()).hexdigest() if card and card.exists() else None}


def stage_config(cfg: RetrieverConfig, out: Path, **changes) -> RetrieverConfig:
    """cfg with other fields and its output directory under ``out``."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(out)), **changes)


ABLATIONS = {"relevance": "w_rel", "quality": "w_q", "exclusivity": "w_x"}  # row name -> the weight set to 0


def run_retriever_stages(base: RetrieverConfig, ds: Dataset, out: str | Path, split: str = "test",
                         relevance_model: str | None = None, ks=(10, 100), ablations: bool = False,
                         goodrate_model: str | None = None) -> list[dict]:
    """Train sft, hardneg, rgrpo under ``out`` (ret_sft/, ret_hardneg/, ret_rgrpo/, ret_rgrpo_no_*/) and return
    the table rows (module docstring). ``goodrate_model`` grades goodrate@10 (default: ``relevance_model``; give
    another model to grade with a judge other than the reward's)."""
    out = Path(out)
    reward = dataclasses.replace(base.reward, relevance_model=relevance_model or "")
    if reward.needs_model and not relevance_model:  # no model to judge with: the relevance term is off
        reward = dataclasses.replace(reward, w_rel=0.0)
    sft = stage_config(base, out / "ret_sft", stage="sft", reward=reward)
    sft_dir, t_sft = run_stage(sft)
    hardneg_dir, t_hn = run_stage(stage_config(sft, out / "ret_hardneg", stage="hardneg", encoder=str(sft_dir)))
    rgrpo = stage_config(sft, out / "ret_rgrpo", stage="rgrpo", encoder=str(sft_dir))
    rgrpo_dir, t_rg = run_stage(rgrpo)
    trained = [("sft", sft_dir, t_sft), ("sft+hardneg", hardneg_dir, t_sft + t_hn), ("sft+rgrpo", rgrpo_dir, t_sft + t_rg)]
    for term, weight in ABLATIONS.items() if ablations else ():
        if getattr(reward, weight) == 0:
            continue  # already off (e.g. relevance without a relevance model)
        cfg = stage_config(rgrpo, out / f"ret_rgrpo_no_{term}", reward=dataclasses.replace(reward, **{weight: 0.0}))
        path, seconds = run_stage(cfg)
        trained.append((f"sft+rgrpo without {term}", path, t_sft + seconds))
    sub = catalogue_subset(ds, base.max_products, base.run.seed)
    scorer = None
    if goodrate_model or relevance_model:
        from searchrl.relevance.scoring.scorer import RelevanceScorer
        scorer = RelevanceScorer.load(goodrate_model or relevance_model)
    bm25 = BM25Index(sub.products)
    rows = [evaluate_retrieval(bm25, sub, split, ks, scorer, bm25=bm25, system="bm25")]
    hybrids = []  # after every dense row, so the dense rows keep their places
    for name, path, seconds in [("minilm-zero-shot", None, 0.0), *trained]:
        retriever = Retriever(path, sub.products, batch_size=base.encode_batch_size, progress=base.run.progress,
                              max_seq_length=base.max_seq_length)
        rows.append({**evaluate_retrieval(retriever, sub, split, ks, scorer, bm25=bm25, system=name),
                     "x_train_seconds": seconds})
        hybrid = HybridRetriever(retriever, sub, bm25=bm25)
        hybrids.append({**evaluate_retrieval(hybrid, sub, split, ks, scorer, bm25=bm25, system=f"hybrid(bm25+{name})"),
                        "x_train_seconds": seconds})
    return rows + hybrids
