"""experiments/reasoning_cv.py's measures of a finished run: the type steps where the linked candidates leave the
model a choice, and d, the first-token grade's disagreement with the rules -- each over the folds asked for."""

import json

from experiments.reasoning_cv import choice_agreement, grade_disagreement
from searchrl.data.schema import load_dataset, pair_products, write_dataset
from searchrl.relevance.format.prompt import build_completion
from searchrl.relevance.rules.engine import RuleEngine


def _fold(run, fold: int, ds, wrong_item: bool, held_to_offset: int) -> list[dict]:
    """A fold directory whose completions write the rules' steps (the item's type replaced by "unknown" where
    ``wrong_item`` and the pair links a choice), each held to the rules' grade moved by ``held_to_offset``."""
    seed_dir = run / f"fold{fold}" / "seed0"
    write_dataset(ds, seed_dir / "data")
    engine, rows = RuleEngine.from_yaml(), []
    pairs = ds.split("test").pairs()
    for q, p in zip(pairs["text"], pair_products(pairs)):
        j, linked = engine.judge(q, p), engine.linked_slugs(q, p)
        verdicts = dict(j.verdicts)
        if wrong_item and len(linked["item"]) > 1:
            verdicts["item"] = "unknown"
        rows.append({"completion": build_completion(j.grade, verdicts), "held_to": min(4, j.grade + held_to_offset),
                     "rule_grade": j.grade, "choice": {s: len(linked[s]) > 1 for s in ("query", "item")}})
    with (seed_dir / "test_completions.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return rows


def test_choice_agreement_and_d_count_only_the_folds_asked_for(tiny_data, tmp_path):
    ds = load_dataset(tiny_data)
    right = _fold(tmp_path, 0, ds, wrong_item=False, held_to_offset=0)
    wrong = _fold(tmp_path, 1, ds, wrong_item=True, held_to_offset=1)
    n_item_choice = sum(r["choice"]["item"] for r in right)
    assert 0 < n_item_choice < len(right)  # the tiny data has pairs of both kinds
    one = choice_agreement(tmp_path, [0])
    assert one["item"] == (n_item_choice / len(right), 1.0)
    assert one["query"][0] == sum(r["choice"]["query"] for r in right) / len(right)
    both = choice_agreement(tmp_path, [0, 1])
    assert both["item"] == (n_item_choice / len(right), 0.5)  # fold 1 names unknown wherever it had a choice
    assert grade_disagreement(tmp_path, [0]) == 0.0
    moved = sum(r["held_to"] != r["rule_grade"] for r in wrong)
    assert grade_disagreement(tmp_path, [0, 1]) == moved / (2 * len(wrong)) > 0
    assert grade_disagreement(tmp_path) == grade_disagreement(tmp_path, [0, 1])
