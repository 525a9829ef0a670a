"""pass@N sampling: the pass@k estimator, pair selection, round-tripping completions, the `sample` CLI."""

import json
import random

import pytest
import torch

from searchrl.cli import main
from searchrl.data.schema import load_dataset
from searchrl.relevance.format.parser import parse_completion
from searchrl.relevance.format.prompt import PromptConfig, build_completion
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.tokenizer import encode_prompt
from searchrl.relevance.rules.engine import RuleEngine
from searchrl.relevance.rules.teacher import RuleTeacher
from searchrl.relevance.train.examples import encode_example
from searchrl.relevance.train.sample import build_pairs, pass_at_k, sample_preferences, summarize
from searchrl.rl.rollout import Rollout

VERDICTS = {
    4: {"query": "cable", "item": "cable", "category": "match", "attribute": "match"},
    3: {"query": "cable", "item": "cable", "category": "match", "attribute": "partial"},
    2: {"query": "cable", "item": "adapter", "category": "related", "attribute": "match"},
    1: {"query": "cable", "item": "laptop", "category": "mismatch", "attribute": "unclear"},
}


def completion(grade: int) -> str:
    return build_completion(grade, VERDICTS[grade])


def test_pass_at_k_matches_hand_computation():
    # n=5 samples, c=2 right: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@3 = 1 - C(3,3)/C(5,3) = 0.9
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert pass_at_k(5, 2, 4) == 1.0 and pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 5, 1) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
    # two prompts of 3 samples: c = 0 and c = 1 -> pass@1 = (0 + 1/3) / 2, pass@2 = (0 + 2/3) / 2, pass@3 = 1/2
    t = summarize([0, 1, 3], 3)
    assert t["pass@1"] == pytest.approx((0 + 1 / 3 + 1) / 3)
    assert t["pass@2"] == pytest.approx((0 + 2 / 3 + 1) / 3)
    assert t["pass@3"] == pytest.approx(2 / 3)
    assert (t["all_right"], t["mixed"], t["all_wrong"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert "ci" not in t  # no query ids: no intervals


def test_pass_at_k_intervals_resample_queries_and_cover_the_estimate():
    # 6 queries of 2 prompts, 4 samples each: half the queries always right, half never or once in four
    right, qids = [4, 4, 0, 1] * 3, [f"q{i // 2}" for i in range(12)]
    t = summarize(right, 4, qids, n_boot=300)
    assert t["right_per_prompt"] == right and t["query_ids"] == qids
    for k in range(1, 5):
        lo, hi = t["ci"][f"pass@{k}"]
        assert lo <= t[f"pass@{k}"] <= hi and lo < hi
    lo, hi = t["ci"]["pass@4 - pass@1"]  # per prompt: 0.75 where right once in four, else 0
    assert 0 <= lo <= t["pass@4"] - t["pass@1"] <= hi and hi > 0
    same = summarize([4] * 12, 4, qids, n_boot=100)  # every prompt alike: nothing to resample
    assert same["ci"]["pass@1"] == [1.0, 1.0] and same["ci"]["pass@4 - pass@1"] == [0.0, 0.0]


def test_build_pairs_prefers_well_formed_right_over_readable_wrong():
    right_ok, right_broken = completion(3), "<L3>\nnot a step line"
    wrong_ok, wrong_broken, garbage = completion(2), "<L1> noise", "noise without a grade"
    samples = [garbage, right_broken, wrong_broken, right_ok, wrong_ok]
    for seed in range(5):  # the preferences hold whatever the draw
        pair = build_pairs(samples, 3, "TEACHER", random.Random(seed))
        assert pair == {"chosen": right_ok, "rejected": wrong_ok, "source": "sample"}
    # all wrong: the teacher's completion is chosen, a readable wrong grade is rejected before garbage
    pair = build_pairs([garbage, wrong_broken, garbage], 3, "TEACHER", random.Random(0))
    assert pair == {"chosen": "TEACHER", "rejected": wrong_broken, "source": "teacher"}
    assert build_pairs([garbage], 3, "TEACHER", random.Random(0))["rejected"] == garbage
    assert build_pairs([right_ok, right_broken], 3, "TEACHER", random.Random(0)) is None  # all right: no pair
    # a right grade under steps that imply another grade is never chosen: the teacher's completion is
    right_contradicted = build_completion(3, VERDICTS[1])  # <L3>, then category mismatch: its steps imply L1
    for seed in range(5):
        assert build_pairs([right_contradicted, wrong_ok], 3, "TEACHER", random.Random(seed)) == \
            {"chosen": "TEACHER", "rejected": wrong_ok, "source": "teacher"}
        assert build_pairs([right_contradicted, right_ok, wrong_ok], 3, "T", random.Random(seed))["chosen"] == right_ok
    # ties are drawn with the seeded RNG: reproducible, and every candidate can be drawn
    other_ok = build_completion(3, {**VERDICTS[3], "item": "usb_cable"})
    picks = [build_pairs([right_ok, other_ok, wrong_ok], 3, "T", random.Random(s))["chosen"] for s in range(20)]
    assert picks == [build_pairs([right_ok, other_ok, wrong_ok], 3, "T", random.Random(s))["chosen"]
                     for s in range(20)]
    assert set(picks) == {right_ok, other_ok}
    # cot-first completions are parsed in their own order
    cot = PromptConfig(order="cot_first")
    pair = build_pairs([build_completion(2, VERDICTS[2], cfg=cot), build_completion(3, VERDICTS[3], cfg=cot)], 3,
                       "T", random.Random(0), order="cot_first")
    assert pair["source"] == "sample" and parse_completion(pair["chosen"], "cot_first").grade == 3


def test_sampled_completion_round_trips_to_the_training_encoding(tiny_model_dir):
    """A completion decoded from sampled ids (EOS, padding dropped) re-encodes to the very ids SFT trains on."""
    _, tok = load_relevance_model(str(tiny_model_dir))
    product = {"title": "Dell XPS 13 laptop 16 GB", "brand": "Dell", "category": "Notebook"}
    target = RuleTeacher(RuleEngine.from_yaml()).write("dell laptop", product, 3).completion
    prompt = "Query: dell laptop\nAnswer:\n"
    ids = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    row = torch.tensor([ids + [tok.pad_token_id] * 3])  # [1, T]
    mask = torch.tensor([[1] * len(ids) + [0] * 3])  # [1, T]
    p = torch.tensor([encode_prompt(tok, prompt)])
    text = Rollout(p, torch.ones_like(p), row, mask, 1).texts(tok)[0]
    assert text.startswith("<L3>") and tok.eos_token not in text and tok.pad_token not in text
    assert parse_completion(text).ok and parse_completion(text).grade == 3
    assert encode_example(tok, prompt, text, 1024) == encode_example(tok, prompt, target, 1024)


class FakeRollout:
    def __init__(self, n_prompts: int, samples: list[str]):
        self.rows = samples * n_prompts

    def texts(self, tokenizer):
        return self.rows


def test_sample_preferences_table_and_pairs_on_controlled_samples(tiny_model_dir, tiny_data, monkeypatch):
    """Every prompt gets the samples [<L4> ok, <L1> ok, garbage]: gold 4 / 1 prompts are mixed, the rest all wrong."""
    samples = [completion(4), completion(1), "garbage"]
    monkeypatch.setattr("searchrl.relevance.train.sample.sample_groups",
                        lambda model, tok, prompts, g, *a, **kw: FakeRollout(len(prompts), samples[:g]))
    rows, table = sample_preferences(tiny_model_dir, load_dataset(tiny_data), 3, prompts_per_batch=5, progress=False)
    gold = load_dataset(tiny_data).split("train").pairs()["grade"].astype(int).tolist()
    c = [int(g in (1, 4)) for g in gold]
    assert table["prompts"] == len(gold) and table["n"] == 3
    assert table["pass@1"] == pytest.approx(sum(c) / 3 / len(c))
    assert table["pass@2"] == pytest.approx(sum(c) * 2 / 3 / len(c))
    assert table["pass@3"] == pytest.approx(table["mixed"]) and table["mixed"] == pytest.approx(sum(c) / len(c))
    assert table["all_right"] == 0 and table["all_wrong"] == pytest.approx(1 - sum(c) / len(c))
    assert table["format_error_rate"] == pytest.approx(1 / 3)
    assert len(rows) == len(gold) and table["pairs_from_samples"] == sum(c)
    for r, g in zip(rows, gold):
        assert r["grade"] == g
        if g in (1, 4):  # the right sample over the other readable one, never over garbage
            assert r["source"] == "sample" and r["chosen"] == completion(g) and r["rejected"] == completion(5 - g)
        else:  # the teacher's completion for the gold grade over a readable wrong sample
            assert r["source"] == "teacher" and parse_completion(r["chosen"]).grade == g
            assert parse_completion(r["chosen"]).ok and r["rejected"] in samples[:2]


def test_sample_cli_writes_trl_pairs_and_table(tiny_model_dir, tiny_data, tmp_path, capsys):
    out, table_path = tmp_path / "pairs.jsonl", tmp_path / "table.json"
    rc = main(["sample", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--n", "3", "--max-new-tokens",
               "24", "--max-prompts", "6", "--seed", "1", "--out", str(out), "--json", str(table_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "pass@3" in printed and "pairs:" in printed
    table = json.loads(table_path.read_text())
    assert table["prompts"] == 6 and 0 <= table["pass@1"] <= table["pass@2"] <= table["pass@3"] <= 1
    assert table["all_right"] + table["mixed"] + table["all_wrong"] == pytest.approx(1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == table["pairs"] == 6 - round(6 * table["all_right"])
    for r in rows:
        assert {"prompt", "chosen", "rejected", "grade", "query_id", "product_id", "source"} <= set(r)
        assert all(isinstance(r[k], str) for k in ("prompt", "chosen", "rejected")) and r["chosen"]
        assert r["prompt"].endswith("Answer:\n") and "Query: " in r["prompt"]  # the rendered training prompt
        assert parse_completion(r["chosen"]).grade == r["grade"] != parse_completion(r["rejected"]).grade
        assert not r["chosen"].endswith("[SEP]") and not r["rejected"].endswith("[SEP]")  # EOS is not stored
    # the same seed samples the same pairs
    assert main(["sample", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--n", "3", "--max-new-tokens",
                 "24", "--max-prompts", "6", "--seed", "1", "--out", str(tmp_path / "again.jsonl")]) == 0
    assert (tmp_path / "again.jsonl").read_text() == out.read_text()


def test_pass_at_n_samples_name_only_the_ids_each_pairs_text_links(tiny_model_dir, tiny_data, monkeypatch):
    """prompt.slugs: linked (the default): a random model's samples, at temperature 1, name in their type steps
    only the candidates the knowledge base links to their own pair -- each prompt bound to its own."""
    from searchrl.data.schema import pair_products
    from searchrl.relevance.train import sample as sample_module
    texts = []
    real = sample_module.sample_groups

    def recording(*args, **kwargs):
        ro = real(*args, **kwargs)
        texts.extend(ro.texts(args[1]))
        return ro
    monkeypatch.setattr(sample_module, "sample_groups", recording)
    ds = load_dataset(tiny_data)
    sample_preferences(tiny_model_dir, ds, 3, max_new_tokens=200, prompts_per_batch=4, progress=False)
    pairs = ds.split("train").pairs()
    engine = RuleEngine.from_yaml()
    linked = [engine.linked_slugs(q, p) for q, p in zip(pairs["text"], pair_products(pairs))]
    parsed = [parse_completion(t) for t in texts]
    assert len(parsed) == 3 * len(linked) and sum("item" in p.verdicts for p in parsed) > len(parsed) / 2
    for k, p in enumerate(parsed):  # (a random model's free-text notes may leave a line unreadable)
        for step in set(p.verdicts) & {"query", "item"}:
            assert p.verdicts[step] in linked[k // 3][step]
    assert len({p.verdicts.get("item") for p in parsed} - {None}) > 1  # rows are not all held to one vocabulary


def test_read_preference_pairs_names_the_bad_line(tmp_path):
    from searchrl.relevance.train.sample import read_preference_pairs
    good = '{"prompt": "p", "chosen": "<L4>", "rejected": "<L1>"}'
    path = tmp_path / "pairs.jsonl"
    path.write_text(f"{good}\n\n{{broken\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:line 3: malformed JSON"):
        read_preference_pairs(path)
    path.write_text(f'{good}\n{{"prompt": "p", "chosen": "<L4>"}}\n')
    with pytest.raises(ValueError, match=r"pairs.jsonl:line 2: .*\['rejected'\]"):
        read_preference_pairs(path)
    path.write_text(f"{good}\n\n{good}\n")
    assert len(read_preference_pairs(path)) == 2
