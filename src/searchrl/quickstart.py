"""The README's main job on embedded defaults: Chorus end to end.

Today: prepare Chorus (sha256-verified, from the mirror or upstream), then print and
save the relevance and retrieval baseline tables for the Chorus test queries as
``relevance.json`` and ``retrieval.json`` under the run directory. Later stages add
their rows to the same two tables.
"""

from __future__ import annotations

import time
from pathlib import Path

from .data.prepare import prepare, stats_table
from .data.schema import load_dataset
from .eval.baselines import relevance_baselines, retrieval_baselines
from .eval.metrics import RELEVANCE_COLUMNS, print_table, write_metrics_json

RETRIEVAL_COLUMNS = ["hitrate@10", "ndcg@10", "mrr@10", "hitrate@100", "ndcg@100", "n_queries"]


def run_quickstart(out: str | Path = "runs/quickstart", mirror: str | None = None, split: str = "test") -> dict:
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
    rel = relevance_baselines(ds, split)
    print_table(rel, RELEVANCE_COLUMNS, title=f"Relevance, Chorus {split} ({rel[0]['n']} pairs)")
    write_metrics_json(out / "relevance.json", "relevance", "chorus", split, rel)

    print("\n[quickstart] retrieval baselines (whole catalogue)")
    ret = retrieval_baselines(ds, split, ks=(10, 100))
    print_table(ret, RETRIEVAL_COLUMNS, title=f"Retrieval, Chorus {split} ({ret[0]['n_queries']} queries with a Good item)")
    write_metrics_json(out / "retrieval.json", "retrieval", "chorus", split, ret)
    print(f"\n[quickstart] wrote {out / 'relevance.json'} and {out / 'retrieval.json'} in {time.time() - t0:.0f}s")
    return {"relevance": rel, "retrieval": ret}
