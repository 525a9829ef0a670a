"""The relevance scorer: (query, products) -> grade probabilities, argmax and tiered grade, P(Good).

:class:`RelevanceScorer` is the library API behind ``searchrl score``, ``searchrl
eval relevance`` and the HTTP service. It builds each pair's prompt exactly as in
training (the model directory's scorer config), reads the four grade probabilities
from one prefill per pair (the query's prefix shared, see prefill.py) and decodes no
chain of thought. Per pair it reports the probabilities, the argmax grade, the tiered
grade (cumulative-probability tiering with the config's beta), P(Good) = P(L3) + P(L4)
and the expected grade.

:func:`score_file` scores a JSONL/CSV/TSV/Parquet file of pairs (``query``, ``title``
and optional ``product_id``, ``brand``, ``category``, ``description``, ``attributes``)
and writes the same formats; bad rows stop the run with their file and line, or are
skipped and counted (``on_error="skip"``).

Simplifies: pairs are grouped by identical query text; the model runs on one device.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from searchrl.data.readers import columns_of, read_rows, require_columns
from searchrl.data.schema import PRODUCT_FIELDS, ErrorPolicy
from searchrl.errors import ConfigError, shown
from searchrl.relevance.format.prompt import build_prompt
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.scorer_config import ScorerConfig, check_safetensors, scorer_config_of
from searchrl.relevance.model.tokenizer import render_prompt
from searchrl.relevance.scoring.prefill import shared_prefix_grade_probs
from searchrl.relevance.scoring.tiering import tiered_grades

OUTPUT_COLUMNS = ["query", "product_id", "p_l1", "p_l2", "p_l3", "p_l4", "grade", "tier", "p_good", "expected_grade"]


class RelevanceScorer:
    """Scores (query, product) pairs with a relevance model; see the module docstring."""

    def __init__(self, model, tokenizer, config: ScorerConfig, batch_size: int = 32, shared_prefix: bool | None = None):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        if shared_prefix is None:  # a segmented prompt shares only the query (a few tokens): measured slower than
            shared_prefix = config.prompt.layout != "segments"  # plain prefill (benchmarks/bench_scoring.py)
        self.batch_size, self.shared_prefix = batch_size, shared_prefix
        self.model.eval()

    @classmethod
    def load(cls, model_dir: str | Path, device: str = "cpu", batch_size: int = 32,
             shared_prefix: bool | None = None) -> "RelevanceScorer":
        """A scorer for a trained or exported model directory (safetensors weights + relevance_config.json), or,
        zero-shot with the default scorer config, a GGUF file or packaged GGUF name (pretrained.resolve_model)."""
        if Path(model_dir).is_dir():
            check_safetensors(model_dir)
        config = scorer_config_of(model_dir)
        model, tok = load_relevance_model(str(model_dir))
        return cls(model.to(device), tok, config, batch_size, shared_prefix)

    def prompt(self, query: str, product: dict) -> str:
        return render_prompt(self.tokenizer, build_prompt(query, product, self.config.prompt),
                             self.config.chat_template)

    def grade_probs(self, requests: list[tuple[str, list[dict]]], progress=None) -> list[np.ndarray]:
        """One [len(products), 4] array of P(<L1>..<L4>) per (query, products) request."""
        groups = [[self.prompt(q, p) for p in products] for q, products in requests]
        if self.shared_prefix:
            return shared_prefix_grade_probs(self.model, self.tokenizer, groups, self.batch_size, progress)
        # plain batched prefill: every prompt whole (the baseline of benchmarks/bench_scoring.py)
        from searchrl.relevance.model.load import grade_probs
        flat = grade_probs(self.model, self.tokenizer, [p for g in groups for p in g], self.batch_size)
        if progress is not None:
            progress(len(flat))
        bounds = np.cumsum([0] + [len(g) for g in groups])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def results(self, probs: np.ndarray) -> list[dict]:
        """Per row of [N, 4] probabilities: the fields the scorer reports."""
        probs = np.asarray(probs, dtype=np.float64)
        if not len(probs):
            return []
        tiers = tiered_grades(probs, self.config.beta)
        expected = probs @ np.arange(1, 5)
        return [{"probabilities": {f"L{g + 1}": float(row[g]) for g in range(4)}, "grade": int(row.argmax()) + 1,
                 "tier": int(t), "p_good": float(row[2] + row[3]), "expected_grade": float(e)}
                for row, t, e in zip(probs, tiers, expected)]

    def score(self, query: str, products: list[dict]) -> list[dict]:
        """Results for one query's candidate products, in order."""
        return self.results(self.grade_probs([(query, products)])[0])

    def score_many(self, requests: list[tuple[str, list[dict]]]) -> list[list[dict]]:
        """Results for several (query, products) requests, scored in shared forward passes."""
        return [self.results(p) for p in self.grade_probs(requests)]


# ---------------------------------------------------------------- files

def _product(row: dict, where: str, path, policy: ErrorPolicy) -> tuple[str, dict] | None:
    query = row.get("query")
    title = row.get("title")
    for name, value in (("query", query), ("title", title)):
        if not isinstance(value, str) or not value.strip():
            problem = "missing" if value is None or value == "" else f"expected text, got {shown(value)}"
            policy.bad(path, where, name, problem, f"{name}: missing or not text")
            return None
    product = {"title": title}
    for name in PRODUCT_FIELDS[1:]:
        value = row.get(name)
        if value is None or (isinstance(value, float) and value != value):
            continue
        if name == "attributes" and isinstance(value, str) and value.strip():
            try:
                value = json.loads(value)
            except (ValueError, RecursionError) as e:  # also an integer past 4300 digits, or deep nesting
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply" if isinstance(
                    e, RecursionError) else " ".join(str(e).split())[:120]
                policy.bad(path, where, name, f"not a JSON object ({msg})", "attributes: malformed JSON")
                return None
        if name == "attributes" and not isinstance(value, (dict, str)):
            policy.bad(path, where, name, f"expected a JSON object, got {type(value).__name__}",
                       "attributes: not an object")
            return None
        product[name] = value
    pid = row.get("product_id", row.get("id"))
    product["product_id"] = "" if pid is None else str(pid)
    return query, product


def read_scoring_requests(path: str | Path, on_error: str = "raise") -> tuple[list[tuple[str, list[dict]]], ErrorPolicy]:
    """Pairs of ``path`` grouped by query (in order of first appearance), and the error policy's counts."""
    policy = ErrorPolicy(on_error)
    by_query: dict[str, list[dict]] = {}
    # a missing column is one error at the header, not one per row
    require_columns(path, columns_of(path), ["query", "title"])
    for where, row in read_rows(path, policy):
        pair = _product(row, where, path, policy)
        if pair is not None:
            by_query.setdefault(pair[0], []).append(pair[1])
    return list(by_query.items()), policy


def write_rows(path: str | Path, rows: list[dict]) -> None:
    import pandas as pd
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
    name = path.name.lower()
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    elif name.endswith(".csv") or name.endswith(".tsv"):
        df.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    elif name.endswith(".jsonl"):
        df.to_json(path, orient="records", lines=True)
    else:
        raise ConfigError(f"{path}: unknown output format (expected .jsonl, .csv, .tsv or .parquet)")


def flat_rows(query: str, products: list[dict], results: list[dict]) -> list[dict]:
    return [{"query": query, "product_id": p.get("product_id", ""),
             **{f"p_l{g}": r["probabilities"][f"L{g}"] for g in range(1, 5)},
             **{k: r[k] for k in ("grade", "tier", "p_good", "expected_grade")}}
            for p, r in zip(products, results)]


def score_file(model_dir: str | Path, input_path: str | Path, output_path: str | Path, on_error: str = "raise",
               batch_size: int = 32, progress: bool = True) -> dict:
    """Score every pair of ``input_path`` into ``output_path``; returns counts and throughput."""
    from tqdm.auto import tqdm
    requests, policy = read_scoring_requests(input_path, on_error)
    scorer = RelevanceScorer.load(model_dir, batch_size=batch_size)
    n = sum(len(p) for _, p in requests)
    bar = tqdm(total=n, desc="score", unit="pair", disable=not progress)
    t0 = time.perf_counter()
    probs = scorer.grade_probs(requests, progress=bar.update)
    seconds = time.perf_counter() - t0
    bar.close()
    rows = [r for (q, prods), pr in zip(requests, probs) for r in flat_rows(q, prods, scorer.results(pr))]
    write_rows(output_path, rows)
    return {"pairs": n, "queries": len(requests), "skipped": policy.total_skipped, "skipped_by_reason": policy.skipped,
            "seconds": seconds, "pairs_per_s": n / max(seconds, 1e-9), "threads": torch.get_num_threads()}
