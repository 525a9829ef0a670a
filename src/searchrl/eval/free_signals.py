"""Is a trained relevance model below the signals a team gets for free on its own data?

:func:`free_signal_failures` compares one system's metrics row with the baseline rows of the same
table (the pipeline's evaluate stage, ``eval relevance --cv``), measure by measure:

- pooled AUC of P(Good) (``x_good_auc``, all pairs ranked together) and per-query AUC of P(Good)
  (``x_good_auc_per_query``) against zero-shot MiniLM cosine (``minilm-cosine``) and normalised BM25
  (``bm25-thresholds``, whose score is the BM25 ratio it cuts into grades);
- macro-F1 against BM25 thresholds (``bm25-thresholds``);
- accuracy against the majority class (``majority``).

A check fails when the model's value is strictly below the signal's; a check whose row or value is
missing on either side is not made. Each failure is one dict, e.g. ``{"measure": "pooled AUC of
P(Good)", "system": "grpo", "model": 0.596, "signal": "minilm-cosine", "signal_value": 0.665}``.

Simplifies: point estimates only; a model inside the signal's interval but below its mean fails.
"""

from __future__ import annotations

import math

# (measure, row key, the signals it is compared with)
FREE_SIGNAL_CHECKS = (
    ("pooled AUC of P(Good)", "x_good_auc", ("minilm-cosine", "bm25-thresholds")),
    ("per-query AUC of P(Good)", "x_good_auc_per_query", ("minilm-cosine", "bm25-thresholds")),
    ("macro-F1", "macro_f1", ("bm25-thresholds",)),
    ("accuracy", "accuracy", ("majority",)),
)


def _value(row: dict | None, key: str) -> float | None:
    v = (row or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def free_signal_failures(rows: list[dict], system: str) -> list[dict]:
    """The checks (module docstring) that the row of ``system`` fails against the other rows; [] when it
    passes them all or has no row."""
    by_name = {r.get("system"): r for r in rows}
    model = by_name.get(system)
    failed = []
    for measure, key, signals in FREE_SIGNAL_CHECKS:
        mine = _value(model, key)
        for signal in signals:
            theirs = _value(by_name.get(signal), key)
            if mine is not None and theirs is not None and mine < theirs:
                failed.append({"measure": measure, "system": system, "model": mine, "signal": signal,
                               "signal_value": theirs})
    return failed


def warning_line(failure: dict) -> str:
    """One line for a person: "warning: grpo is below minilm-cosine on pooled AUC of P(Good): 0.596 < 0.665"."""
    return (f"warning: {failure.get('system', 'the model')} is below {failure['signal']} on {failure['measure']}: "
            f"{failure['model']:.3f} < {failure['signal_value']:.3f}")
