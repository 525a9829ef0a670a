"""The retriever's commands: ``train retriever``, ``eval retrieval``, ``search``, ``baseline retrieval``.
"""

from __future__ import annotations

import os

from searchrl.config import load_config
from searchrl.data.schema import load_dataset
from searchrl.eval.baselines import retrieval_baselines
from searchrl.metrics.measures import print_table, write_metrics_json
from searchrl.relevance.scoring.scorer import RelevanceScorer
from searchrl.retrieval.chain import catalogue_subset, run_retriever_stages
from searchrl.retrieval.config import RetrieverConfig
from searchrl.retrieval.evaluate import Retriever, evaluate_retrieval
from searchrl.retrieval.hybrid import search
from searchrl.retrieval.index import IndexConfig


def cmd_baseline_retrieval(a) -> None:
    ds = load_dataset(a.data)
    ks = tuple(int(k) for k in a.k.split(","))
    rows = retrieval_baselines(ds, a.split, ks, encoder=a.encoder)
    print_table(rows, title=f"retrieval baselines: {ds.card.get('name', a.data)} {a.split}")
    if a.json:
        write_metrics_json(a.json, "retrieval", ds.card.get("name", str(a.data)), a.split, rows)


def cmd_train_retriever(a) -> None:
    if a.stage == "all":
        return _retriever_stages(a)
    cfg = load_config(RetrieverConfig, a.config, a.set + ([f"stage={a.stage}"] if a.stage else []))
    if cfg.stage == "rgrpo":
        from searchrl.retrieval.rgrpo import train_rgrpo
        step, final = train_rgrpo(cfg)
    else:
        from searchrl.retrieval.train_sft import train_contrastive
        step, final = train_contrastive(cfg)
    if final is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"retriever {cfg.stage}: saved {final} after {step} steps (metrics in {cfg.run.output_dir}/metrics.jsonl)")


def _retriever_stages(a) -> None:
    cfg = load_config(RetrieverConfig, a.config, a.set)
    out = a.out or cfg.run.output_dir
    ds = load_dataset(cfg.data_dir)
    rows = run_retriever_stages(cfg, ds, out, a.split, a.relevance_model, ablations=a.ablations)
    print_table(rows, title=f"retriever stages on {a.split}, {cfg.max_products or 'all'} products")
    write_metrics_json(os.path.join(out, "retrieval.json"), "retrieval", ds.card.get("name", cfg.data_dir), a.split, rows)


def _relevance_scorer(model_dir):
    if not model_dir:
        return None
    return RelevanceScorer.load(model_dir)


def cmd_eval_retrieval(a) -> None:
    ds = catalogue_subset(load_dataset(a.data), a.max_products)  # 0 = the whole catalogue
    retriever = Retriever(a.retriever, ds.products, IndexConfig(kind=a.index) if a.index else None)
    ks = tuple(int(k) for k in a.k.split(","))
    row = evaluate_retrieval(retriever, ds, a.split, ks, _relevance_scorer(a.relevance_model), a.goodrate_k,
                             system=a.name or os.path.normpath(a.retriever))
    print_table([row], title=f"retrieval: {a.retriever} on {a.split}")
    if a.json:
        write_metrics_json(a.json, "retrieval", ds.card.get("name", str(a.data)), a.split, [row])


def cmd_search(a) -> None:
    for r in search(a.retriever, a.query, a.k, a.data, _relevance_scorer(a.relevance_model), progress=False,
                    route=a.route):
        graded = f"  P(Good)={r['p_good']:.3f} L{r['grade']}" if "p_good" in r else ""
        print(f"{r['rank']:>3}. {r['score']:.4f}  {r['product_id']}  {r['title']} [{r['brand']}]{graded}"
              f"  ({'+'.join(r['routes'])})")
