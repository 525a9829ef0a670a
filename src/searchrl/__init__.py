"""searchrl: reinforcement learning for e-commerce search -- a relevance LLM and a dense retriever.

The Python API, in one snippet (paths are those ``bash scripts/quickstart.sh`` writes)::

    from searchrl import RelevanceScorer, Retriever, load_dataset

    scorer = RelevanceScorer.load("runs/quickstart/export/model")
    print(scorer.score("laptop bag", [{"title": "Targus 15.6 inch laptop backpack"}]))
    products = load_dataset("runs/quickstart/data").products
    retriever = Retriever("runs/quickstart/retriever/ret_rgrpo/final", products)
    print(retriever.search(["laptop bag"], k=5))

Names load on first use, so ``import searchrl`` stays cheap (torch and transformers load with the
first model).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "RelevanceScorer": "searchrl.relevance.scoring.scorer",  # grade (query, product) pairs: probabilities, tier
    "Retriever": "searchrl.retrieval.evaluate",  # a trained encoder + FAISS index over a catalogue
    "HybridRetriever": "searchrl.retrieval.hybrid",  # BM25 and the dense route fused
    "load_dataset": "searchrl.data.schema",  # a prepared dataset directory: products, queries, judgments
    "run_pipeline": "searchrl.pipeline",  # every stage in one call (searchrl pipeline)
    "load_pipeline_config": "searchrl.pipeline",  # a packaged (quickstart, full, llm) or YAML pipeline config
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'searchrl' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
