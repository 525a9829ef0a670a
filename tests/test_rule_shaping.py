"""experiments/rule_shaping.py: the adherence table from parsed completions, and its smallest setting (what CI
runs)."""

import json

import numpy as np
import pandas as pd
import pytest

from experiments import rule_shaping as shaping
from searchrl.relevance.format.parser import parse_completion
from searchrl.relevance.format.prompt import PromptConfig, build_completion


def completion(grade, category, attribute):
    verdicts = {"query": "camera_bag", "item": "digital_camera", "category": category, "attribute": attribute}
    return build_completion(grade, verdicts, cfg=PromptConfig(max_note_chars=0))


# the rule engine's reading of every pair in the table test: an exact match, L4
RULES = {"query": "camera_bag", "item": "digital_camera", "category": "match", "attribute": "match", "verdict": "L4"}


def test_per_query_means_leave_undefined_pairs_out():
    v = np.array([1.0, np.nan, 0.0, np.nan, np.nan])
    q = np.array(["a", "a", "a", "b", "b"])
    assert shaping.per_query(v, q, ["a", "b"]).tolist()[0] == 0.5
    assert np.isnan(shaping.per_query(v, q, ["a", "b"])[1])


def test_the_table_reads_adherence_from_each_systems_own_verdicts(tmp_path):
    n_q, per_q = 8, 4
    pairs = pd.DataFrame({"query_id": [f"q{i // per_q}" for i in range(n_q * per_q)],
                          "grade": [4, 1, 3, 2] * n_q})
    # L4 with category "mismatch" breaks the rule table (it caps the grade at L2); L4 with match/match follows it
    follows, breaks = completion(4, "match", "match"), completion(4, "mismatch", "match")
    from searchrl.relevance.model.scorer_config import ScorerConfig, save_scorer_config
    model = tmp_path / "never_loaded"  # its scorer config alone (written before the caches): no model is loaded
    model.mkdir()
    save_scorer_config(model, ScorerConfig())
    texts = {"sft": [breaks] * len(pairs), "grpo_outcome": [follows, breaks] * (len(pairs) // 2),
             "grpo_shaping": [follows] * (len(pairs) - 4) + ["<L4>\nquery: - => intent"] * 4}
    for name, t in texts.items():
        d = tmp_path / ("sft" if name == "sft" else "seed0")
        d.mkdir(exist_ok=True)
        rows = [{**shaping.parsed_row(x, RULES), "slugs": "linked"} for x in t]
        (d / f"{name}.test_completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = type("A", (), {"seeds": [0], "n_boot": 200, "max_new_tokens": 64})
    models = {(s, 0): model for s in texts}  # the caches exist and are newer
    result = shaping.measure(args, models, pairs, tmp_path)
    rows = {r["system"]: r for r in result["rows"]}
    assert rows["sft"]["adherence"][0] == 0.0 and rows["grpo_shaping"]["adherence"][0] == 1.0
    assert rows["grpo_outcome"]["adherence"][0] == pytest.approx(0.5)
    assert rows["grpo_shaping"]["format_error"][0] == pytest.approx(4 / 32, abs=0.02)  # the truncated four
    assert rows["grpo_outcome"]["accuracy"][0] == pytest.approx(0.25)  # every decoded grade is L4; gold 1 in 4
    # "breaks" differs from the rules in its category step only (4 of 5 agree), and its steps imply L1, not its L4
    assert rows["sft"]["step_agreement"][0] == pytest.approx(0.8) and rows["sft"]["self_consistency"][0] == 0.0
    assert rows["grpo_shaping"]["step_agreement"][0] == 1.0 and rows["grpo_shaping"]["self_consistency"][0] == 1.0
    assert rows["grpo_outcome"]["step_agreement"][0] == pytest.approx(0.9)
    claims = {c["contrast"]: c for c in result["claims"]}
    assert claims["grpo_shaping - grpo_outcome"]["verdict"] == "higher"
    assert claims["grpo_outcome - sft"]["adherence"][0] == pytest.approx(0.5)
    reason = shaping.reasons(result)[0]  # the step agreement each GRPO run moved from SFT, in the claims page's note
    assert "by +0.100 [+0.100, +0.100] under the outcome reward and +0.200 [+0.200, +0.200] under shaping" in reason
    assert "gates on adherence" in reason  # shaping - outcome adherence is "higher" here
    assert "| grpo_shaping - sft |" in shaping.markdown(result, 60.0)
    with pytest.raises(SystemExit, match="16 test pairs"):  # a cache written for other pairs is refused, not misread
        shaping.measure(args, models, pairs.head(16), tmp_path)


@pytest.mark.slow
def test_the_smoke_setting_trains_both_rewards_from_one_sft_and_decodes_test(chorus_dir, tmp_path):
    out = tmp_path / "s"
    args = ["--data", str(chorus_dir), "--smoke", "--seeds", "0", "--out", str(out), "--json", str(tmp_path / "s.json")]
    result = shaping.main(args)
    assert [r["system"] for r in result["rows"]] == ["sft", "grpo_outcome", "grpo_shaping"]
    assert result["pairs"] == 24 and result["queries"] == 8
    for name, kind in (("grpo_outcome", "grade"), ("grpo_shaping", "rule_aware")):
        cfg = (out / "seed0" / name / "grpo" / "grpo_config.yaml").read_text()
        assert f"kind: {kind}" in cfg and "model: " + str(out / "sft" / "final") in cfg
        rows = [json.loads(x) for x in (out / "seed0" / f"{name}.test_completions.jsonl").read_text().splitlines()]
        assert len(rows) == 24
        for r in rows:  # every cached verdict is the parser's reading of the cached text
            p = parse_completion(r["completion"])
            assert r["format_error"] == float(not (p.grade is not None and len(p.verdicts) == 5))
        assert {r["slugs"] for r in rows} == {"linked"}  # decoded as the pipeline decodes: each pair's own candidates
    assert "cot_fraction: 1.0" in (out / "sft" / "sft_config.yaml").read_text()
    again = shaping.main(args)  # a re-run reuses every stage and every decoded completion
    assert json.dumps(again["rows"]) == json.dumps(result["rows"])  # NaN (nothing parsed at this size) == NaN


def test_decoded_completions_older_than_their_model_or_under_other_slugs_are_decoded_again(tmp_path):
    """A rerun stage writes a new model under the same path: its cached completions are the old model's; and a
    decode under another prompt.slugs named other type-step candidates than this model's decode does."""
    import os
    from unittest import mock

    from searchrl.relevance.model.scorer_config import ScorerConfig, save_scorer_config
    rows = [{**shaping.parsed_row(completion(4, "match", "match"), RULES), "slugs": "linked"}] * 2
    pairs = pd.DataFrame({"query_id": ["q0", "q0"], "text": ["camera bag", "camera bag"], "grade": [4, 4]})
    cache, model = tmp_path / "sft.test_completions.jsonl", tmp_path / "final"
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model.mkdir()
    (model / "model.safetensors").write_text("weights")
    save_scorer_config(model, ScorerConfig())  # prompt.slugs: linked, the default
    for f in model.iterdir():
        os.utime(f, (1, 1))  # trained before the cache was written: reused
    assert shaping.decoded(model, pairs, cache, 64) == rows

    def decoded_again():
        with mock.patch("searchrl.relevance.scoring.scorer.RelevanceScorer.load", side_effect=RuntimeError("loaded")), \
                pytest.raises(RuntimeError, match="loaded"):
            shaping.decoded(model, pairs, cache, 64)
    cache.write_text("".join(json.dumps({**r, "slugs": "rules"}) + "\n" for r in rows))
    decoded_again()  # decoded under another slug source: its type steps are not what this model's decode names
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(cache, (0, 0))  # the model is newer: decoded again
    decoded_again()


def test_each_test_pair_is_decoded_under_its_own_linked_type_candidates(tmp_path):
    """The experiment's decode binds the grammar to each pair's linked ids (rules.engine.pair_slugs), as GRPO's
    rollouts and `eval relevance --decode` do: its step agreement is measured on the completions the model serves."""
    from types import SimpleNamespace
    from unittest import mock

    from searchrl.relevance.model.scorer_config import ScorerConfig, save_scorer_config
    from searchrl.relevance.rules.engine import pair_slugs
    model = tmp_path / "final"
    model.mkdir()
    save_scorer_config(model, ScorerConfig())
    pairs = pd.DataFrame({"query_id": ["q0", "q1"], "text": ["camera bag", "iphone case"], "grade": [4, 1],
                          "title": ["Lowepro camera bag", "Apple iPhone 15"]})
    scorer = SimpleNamespace(config=ScorerConfig(), tokenizer=None, model=None, prompt=lambda q, p: q)
    texts = [completion(4, "match", "match")] * 2
    with mock.patch("searchrl.relevance.scoring.scorer.RelevanceScorer.load", return_value=scorer), \
            mock.patch("searchrl.relevance.rules.kb.completion_grammar", return_value=None), \
            mock.patch("searchrl.relevance.scoring.evaluate.decode_completions", return_value=texts) as decode:
        rows = shaping.decoded(model, pairs, tmp_path / "c.jsonl", 64)
    products = shaping.pair_products(pairs)
    assert decode.call_args.kwargs["linked"] == pair_slugs(ScorerConfig().prompt, pairs["text"], products)
    assert [r["slugs"] for r in rows] == ["linked", "linked"]
