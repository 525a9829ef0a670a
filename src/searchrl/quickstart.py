"""The README's main job on embedded defaults: Chorus end to end.

1. prepare Chorus (sha256-verified, from the mirror or upstream);
2. relevance baselines fitted on train (majority, BM25 thresholds, lexical logistic
   regression) and the rule engine alone;
3. label-first SFT of the default relevance model on Chorus train
   (``searchrl/configs/sft_chorus.yaml``), its tiering threshold beta tuned on valid,
   evaluated on test beside the baselines (argmax, tiered and per-grade thresholds);
4. the dense retriever (``searchrl/configs/retriever_quickstart.yaml``, retrieval/pipeline.py):
   encoder SFT from all-MiniLM-L6-v2, then hardneg and Retrieval-GRPO (rewarded by the SFT
   relevance model) from it, evaluated beside BM25 and zero-shot MiniLM on a 3,000-product
   catalogue (every judged product plus a seeded fill; the whole 19,406 would take ~3 minutes
   per encoding pass on 2 cores: scripts/retriever_chorus.sh runs that table).

The two tables are printed and saved as ``relevance.json`` and ``retrieval.json``
under the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .config import load_config
from .data.prepare import prepare, stats_table
from .data.schema import load_dataset
from .eval.baselines import relevance_baselines
from .eval.metrics import RELEVANCE_COLUMNS, print_table, write_metrics_json
from .relevance.evaluate import evaluate_model, rule_agreement, tune_tiering
from .relevance.sft import SFTConfig, run_sft
from .retrieval.bm25 import BM25Index
from .retrieval.config import RetrieverConfig
from .retrieval.pipeline import run_retriever_stages

SFT_CONFIG = Path(__file__).parent / "configs" / "sft_chorus.yaml"
RETRIEVER_CONFIG = Path(__file__).parent / "configs" / "retriever_quickstart.yaml"
RETRIEVAL_COLUMNS = ["hitrate@10", "ndcg@10", "mrr@10", "hitrate@100", "goodrate@10", "bm25_overlap@10",
                     "quality@10", "x_train_seconds"]


def run_quickstart(out: str | Path = "runs/quickstart", mirror: str | None = None, split: str = "test",
                   sft_overrides: list[str] | None = None, retriever_overrides: list[str] | None = None) -> dict:
    out = Path(out)
    t0 = time.time()
    data_dir = out / "data" / "chorus"
    if (data_dir / "dataset.json").exists():
        ds = load_dataset(data_dir)
        print(f"[quickstart] reusing {data_dir}")
    else:
        print("[quickstart] preparing chorus")
        ds = prepare("chorus", data_dir, mirror)
    print(stats_table(ds), "\n")

    print("[quickstart] relevance baselines (fit on train)")
    bm25 = BM25Index(ds.products)
    rel = relevance_baselines(ds, split, bm25)
    rel.append({**rule_agreement(ds, splits=(split,))[0], "system": "rules"})
    print_table(rel, RELEVANCE_COLUMNS, title=f"Relevance baselines, Chorus {split} ({rel[0]['n']} pairs)")

    print("\n[quickstart] label-first SFT of the default relevance model on Chorus train")
    t_sft = time.time()
    cfg = load_config(SFTConfig, SFT_CONFIG, [f"data_dir={data_dir}", f"run.output_dir={out / 'sft'}",
                                              *(sft_overrides or [])])
    final = out / "sft" / "final"
    stored = final / "sft_config.json"
    if stored.exists() and json.loads(stored.read_text()) == json.loads(json.dumps(dataclasses.asdict(cfg))):
        print(f"[quickstart] reusing {final} (same config)")
    else:
        final = run_sft(cfg).final_dir  # run.resume=true in the config: a killed run continues from its checkpoint
    tiering = tune_tiering(final, ds, "valid")  # beta (and per-grade thresholds) for macro-F1 on valid
    print(f"[quickstart] tiering tuned on valid: beta={tiering['beta']:g} (macro-F1 {tiering['macro_f1_tiered']:.4f} "
          f"vs argmax {tiering['macro_f1_argmax']:.4f})")
    rel.extend(evaluate_model(final, ds, split, system="sft-label-first"))
    print(f"[quickstart] SFT trained and evaluated in {time.time() - t_sft:.0f}s")
    print_table(rel, RELEVANCE_COLUMNS, title=f"Relevance, Chorus {split} ({rel[0]['n']} pairs)")
    write_metrics_json(out / "relevance.json", "relevance", "chorus", split, rel)

    print("\n[quickstart] dense retriever: sft, then hardneg and Retrieval-GRPO from it")
    t_ret = time.time()
    rcfg = load_config(RetrieverConfig, RETRIEVER_CONFIG, [f"data_dir={data_dir}", *(retriever_overrides or [])])
    ret = run_retriever_stages(rcfg, ds, out, split, relevance_model=str(final))
    print(f"[quickstart] retriever stages trained and evaluated in {time.time() - t_ret:.0f}s")
    print_table(ret, RETRIEVAL_COLUMNS, title=f"Retrieval, Chorus {split}, {rcfg.max_products or 'all'} products "
                f"({ret[0]['n_queries']} queries with a Good item)")
    write_metrics_json(out / "retrieval.json", "retrieval", "chorus", split, ret)
    print(f"\n[quickstart] wrote {out / 'relevance.json'} and {out / 'retrieval.json'} in {time.time() - t0:.0f}s")
    return {"relevance": rel, "retrieval": ret}
