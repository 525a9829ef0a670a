"""SFT on the random tiny Qwen2: completion-only labels, a falling loss, exact resume, logs and checkpoints."""

import json

import pytest
import torch
from conftest import sft_config_for_tests

from searchrl.checkpoint import checkpoints
from searchrl.config import load_config
from searchrl.relevance.format.prompt import PromptConfig, build_completion, build_prompt
from searchrl.relevance.model.builds import TINY
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.lora import LoraSettings
from searchrl.relevance.train.examples import IGNORE, collate, encode_example
from searchrl.relevance.train.sft import SFTConfig, train_sft
from searchrl.training import epoch_order

VERDICTS = {  # simple step verdicts per grade (the rule teacher is not needed to test the trainer)
    4: {"query": "cable", "item": "cable", "category": "match", "attribute": "match"},
    3: {"query": "cable", "item": "cable", "category": "match", "attribute": "unclear"},
    2: {"query": "cable", "item": "adapter", "category": "related", "attribute": "mismatch"},
    1: {"query": "cable", "item": "laptop", "category": "mismatch", "attribute": "unclear"},
}
ITEMS = {4: "usb c cable 1m", 3: "usb cable", 2: "usb c adapter", 1: "gaming laptop 15 inch"}


def make_examples(n: int, order: str = "label_first") -> list[dict]:
    cfg = PromptConfig(instruction="Grade the product.", order=order)
    out = []
    for i in range(n):
        grade = 4 - i % 4
        prompt = build_prompt(f"usb c cable {i % 3}", {"title": ITEMS[grade], "brand": "anker"}, cfg)
        out.append({"prompt": prompt, "completion": build_completion(grade, VERDICTS[grade], cfg=cfg),
                    "grade": grade})
    return out


def small_cfg(tmp_path, order="label_first", optim=None, run=None, eval=None, **kw) -> SFTConfig:
    return sft_config_for_tests({
        "prompt": PromptConfig(order=order), "model": TINY, "batch_size": 4, "max_length": 256, **kw,
        "optim": {"lr": 3e-3, "warmup_ratio": 0.1, **(optim or {})}, "eval": eval or {},
        "run": {"output_dir": str(tmp_path), "device": "cpu", "progress": False, "seed": 0, **(run or {})}})


def test_labels_mask_prompt_and_padding():
    _, tok = load_relevance_model(TINY)
    ex = make_examples(2)
    enc = [encode_example(tok, e["prompt"], e["completion"], 256) for e in ex]
    n_prompt = len(tok(ex[0]["prompt"], add_special_tokens=False)["input_ids"])
    labels = enc[0]["labels"]
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert all(l != IGNORE for l in labels[n_prompt:])
    assert labels[n_prompt:] == enc[0]["input_ids"][n_prompt:]
    assert tok.convert_ids_to_tokens(labels[n_prompt]) == "<L4>"  # label-first: the grade is the first target
    assert labels[-1] == tok.eos_token_id
    enc[1]["input_ids"] = enc[1]["input_ids"][:-3]  # make the rows differ in length
    enc[1]["labels"] = enc[1]["labels"][:-3]
    batch = collate(enc, tok.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    assert (batch["labels"][1, -3:] == IGNORE).all() and (batch["input_ids"][1, -3:] == tok.pad_token_id).all()
    assert encode_example(tok, ex[0]["prompt"], ex[0]["completion"], 10) is None  # too long: dropped


def test_epoch_order_is_a_function_of_seed_and_epoch():
    assert (epoch_order(0, 1, 10) == epoch_order(0, 1, 10)).all()
    assert not (epoch_order(0, 1, 10) == epoch_order(0, 2, 10)).all()
    assert sorted(epoch_order(3, 0, 10)) == list(range(10))


def test_loss_falls_and_logs(tmp_path):
    train, valid = make_examples(8), make_examples(8)
    cfg = small_cfg(tmp_path, batch_size=8, optim={"max_steps": 30}, eval={"every": 15},
                    run={"save_every": 15, "save_total_limit": 1})
    res = train_sft(cfg, train, valid)
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 30 and [r["step"] for r in rows] == list(range(1, 31))
    assert losses[-1] < 0.6 * losses[0], losses
    assert sum(losses[-5:]) < sum(losses[:5]) and losses.index(min(losses)) > 20
    assert all(r["tokens_per_s"] > 0 and r["lr"] >= 0 for r in rows)
    evals = [r for r in rows if "valid_macro_f1" in r]
    assert [r["step"] for r in evals] == [15, 30]
    assert evals[-1]["valid_accuracy"] == res.last_eval["valid_accuracy"]
    assert 0.0 <= res.last_eval["valid_macro_f1"] <= 1.0 and 0.0 <= res.last_eval["valid_accuracy"] <= 1.0
    # checkpoints in HF format (oldest pruned), final model loadable
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-30"]
    ck = tmp_path / "checkpoint-30"
    assert (ck / "model.safetensors").exists() and (ck / "trainer_state.pt").exists()
    model, tok = load_relevance_model(str(res.final_dir))
    for (k, a), b in zip(model.state_dict().items(), res.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_best_metric_puts_the_best_evals_weights_in_final(tmp_path):
    train, valid = make_examples(8), [{**ex, "query_id": f"q{i % 2}"} for i, ex in enumerate(make_examples(16))]
    cfg = small_cfg(tmp_path, batch_size=8, optim={"max_steps": 12, "lr": 1e-2}, eval={"every": 2,
                    "best_metric": "valid_good_auc"})
    res = train_sft(cfg, train, valid)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "valid_good_auc" in x]
    aucs = [r["valid_good_auc"] for r in rows]
    assert len(aucs) == 6 and len(set(aucs)) > 1  # the eval's per-query AUC moved during training
    best = json.loads((res.final_dir / "best.json").read_text())
    assert best["step"] == rows[aucs.index(max(aucs))]["step"] < 12 and res.last_eval == best["eval"]
    from searchrl.relevance.scoring.evaluate import evaluate_examples
    model, tok = load_relevance_model(str(res.final_dir))
    again = evaluate_examples(model, tok, valid, cfg.eval, cfg.prompt, cfg.chat_template)
    assert again["valid_good_auc"] == pytest.approx(max(aucs), abs=1e-6)  # final/ is that eval's model


def test_resume_reproduces_uninterrupted_run(tmp_path):
    train = make_examples(12)  # 3 micro-batches per epoch: steps cross epoch boundaries mid-accumulation
    kw = dict(grad_accum=2, optim={"max_steps": 8, "schedule": "cosine", "weight_decay": 0.01})
    full = train_sft(small_cfg(tmp_path / "full", **kw), train)
    part = train_sft(small_cfg(tmp_path / "part", run={"stop_at_step": 3}, **kw), train)
    assert part.step == 3 and part.final_dir is None
    assert [p.name for p in checkpoints(tmp_path / "part")] == ["checkpoint-3"]
    torch.manual_seed(999)  # disturb the global RNG: resume must restore it
    resumed = train_sft(small_cfg(tmp_path / "part", **kw), train, resume=True)
    assert resumed.step == 8
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    steps = [json.loads(l)["step"] for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_lora_sft_trains_and_resumes(tmp_path):
    train = make_examples(8)
    kw = dict(optim={"max_steps": 4}, lora=LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"]))
    full = train_sft(small_cfg(tmp_path / "full", **kw), train)
    train_sft(small_cfg(tmp_path / "part", run={"stop_at_step": 2}, **kw), train)
    resumed = train_sft(small_cfg(tmp_path / "part", **kw), train, resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # final/ holds the merged model; the grade-token rows moved away from their initial values
    init, _ = load_relevance_model(TINY)
    merged, tok = load_relevance_model(str(full.final_dir))
    gid = tok.convert_tokens_to_ids("<L4>")
    emb0, emb1 = init.get_input_embeddings().weight, merged.get_input_embeddings().weight
    assert not torch.allclose(emb0[gid], emb1[gid])
    assert torch.equal(emb0[gid - 10], emb1[gid - 10])  # ordinary rows stay frozen


def test_cot_first_eval_and_order_check(tmp_path):
    with pytest.raises(ValueError, match="order"):
        train_sft(small_cfg(tmp_path / "bad", optim={"max_steps": 1}, order="cot_first"), make_examples(4))
    cfg = small_cfg(tmp_path / "cot", optim={"max_steps": 2}, order="cot_first", eval={"max_new_tokens": 8})
    res = train_sft(cfg, make_examples(4, "cot_first"), make_examples(4, "cot_first"))
    assert set(res.last_eval) == {"valid_macro_f1", "valid_accuracy", "valid_good_f1"}


def test_config_from_overrides():
    cfg = load_config(SFTConfig, None, ["lora.r=8", "optim.lr=2e-5", "optim.schedule=linear"])
    assert cfg.lora == LoraSettings(r=8) and cfg.optim.lr == 2e-5 and cfg.optim.schedule == "linear"
    with pytest.raises(ValueError):
        SFTConfig(prompt=PromptConfig(order="think_first"))


def test_length_grouped_batches_cover_the_epoch_with_less_padding():
    import numpy as np

    from searchrl.training import BatchStream
    lengths = np.random.default_rng(0).integers(20, 200, size=203).tolist()
    plain, grouped = BatchStream(list(range(203)), 8, 0), BatchStream(list(range(203)), 8, 0, lengths, window=5)
    assert grouped.per_epoch == plain.per_epoch == 26
    for stream in (plain, grouped):  # each epoch is a permutation of the data; epochs differ
        assert sorted(i for m in range(26) for i in stream(m)) == list(range(203))
        assert [stream(m) for m in range(26)] != [stream(26 + m) for m in range(26)]

    def padded(stream):
        return sum(max(lengths[i] for i in stream(m)) * len(stream(m)) for m in range(26))
    assert padded(grouped) < 0.8 * padded(plain)
    again = BatchStream(list(range(203)), 8, 0, lengths, window=5)
    assert [again(m) for m in (30, 3)] == [grouped(30), grouped(3)]  # a function of (seed, m): exact resume


def test_trim_vocab_and_synthetic_settings_are_checked():
    assert SFTConfig(model="minilm-qwen2", trim_vocab=True, prompt=PromptConfig()).trim_vocab
    with pytest.raises(ValueError, match="trim_vocab"):
        SFTConfig(model="/some/hf/model", trim_vocab=True)
    with pytest.raises(ValueError, match="trim_vocab"):
        SFTConfig(model="tiny-qwen2", tokenizer="/some/tokenizer", trim_vocab=True)
    with pytest.raises(ValueError, match="synthetic_queries"):
        SFTConfig(synthetic_queries=-1)
    with pytest.raises(ValueError, match="synthetic_per_query"):
        SFTConfig(synthetic_per_query=0)


def test_hint_fraction_trains_that_share_of_prompts_with_guided_replays_hint(tmp_path, monkeypatch):
    """hint_fraction puts guided replay's hint (hint_text, where hinted_prompt puts it) into a seeded share of the
    training prompts, the rest unchanged; the completions stay the gold ones."""
    import searchrl.relevance.train.sft as sft
    from searchrl.relevance.train.guided_replay import hint_text, hinted_prompt
    seen = []
    real = sft.encode_example
    monkeypatch.setattr(sft, "encode_example", lambda tok, prompt, completion, *a, **k:
                        seen.append((prompt, completion)) or real(tok, prompt, completion, *a, **k))
    examples = make_examples(40)
    train_sft(small_cfg(tmp_path, batch_size=8, hint_fraction=0.5, optim={"max_steps": 1}), examples, None)
    hinted = [hinted_prompt(ex["prompt"], hint_text(ex)) for ex in examples]
    got = [(prompt == h, prompt == ex["prompt"], completion == ex["completion"])
           for (prompt, completion), ex, h in zip(seen, examples, hinted)]
    assert len(got) == 40 and all((a or b) and c for a, b, c in got)  # hinted or plain, the gold completion
    assert 10 <= sum(a for a, _, _ in got) <= 30  # about half carry the hint
    assert all(f"correct grade is L{ex['grade']}" in p for (p, _), ex in zip(seen, examples) if "Hint:" in p)
    seen.clear()
    train_sft(small_cfg(tmp_path / "none", batch_size=8, optim={"max_steps": 1}), examples, None)
    assert [p for p, _ in seen] == [ex["prompt"] for ex in examples]  # the default trains no hint
    for bad in (-0.1, 1.0):
        with pytest.raises(Exception, match="hint_fraction"):
            small_cfg(tmp_path, hint_fraction=bad)


def test_cot_only_examples_train_their_chain_of_thought_and_never_the_grade(tmp_path):
    """synthetic_cot_only: a CoT-only example keeps its chain of thought whatever cot_fraction says, its grade
    token is read but is no target, and it is in no ranking pair; the human examples are as before."""
    from searchrl.relevance.train.sft import _batch_stream, _encode_train, rank_loss
    from searchrl.training import RunLoop
    _, tok = load_relevance_model(TINY)
    human, synthetic = make_examples(8), [ex | {"cot_only": True} for ex in make_examples(8)]
    cfg = small_cfg(tmp_path, cot_fraction=0.0, query_chunk=4, rank_loss_weight=1.0)
    loop = RunLoop("sft", cfg.run, cfg)
    encoded = _encode_train(cfg, tok, human + synthetic, loop)
    grade_ids = set(tok.convert_tokens_to_ids([f"<L{g}>" for g in range(1, 5)]))
    for e in encoded[:8]:  # human, cot_fraction 0: the grade token is the only target
        targets = [t for t in e["labels"] if t != IGNORE]
        assert len(targets) == 1 and targets[0] in grade_ids
    for e, ex in zip(encoded[8:], synthetic):  # CoT-only: every CoT token a target, the grade token none
        targets = [t for t in e["labels"] if t != IGNORE]
        assert len(targets) > 10 and not grade_ids & set(targets) and targets[-1] == tok.eos_token_id
        assert grade_ids & set(e["input_ids"])  # the CoT still follows its grade token
    stream = _batch_stream(cfg, human + synthetic, encoded)
    rows = [r for m in range(stream.per_epoch) for r in stream(m)]
    groups = {r["group"] for r in rows if not grade_ids & {t for t in r["labels"] if t != IGNORE}}
    assert len(groups) == 8 and all(g < 0 for g in groups)  # each CoT-only example a group of its own
    batch = collate([r for r in rows if r["group"] < 0], tok.pad_token_id)
    logits = torch.randn(len(batch["grade"]), 4)
    assert float(rank_loss(logits, batch["grade"], batch["group"])) == 0.0  # grades differ, yet no pair


def test_a_cot_first_eval_decodes_each_pair_under_its_own_linked_type_candidates(tiny_model_dir):
    """The trainer's eval of a CoT-first model reads its grade off a decode: the type steps keep to the ids the
    pair's text links (rules.engine.pair_slugs), as every other decode does, never the whole vocabulary."""
    from unittest import mock

    from searchrl.config import EvalConfig
    from searchrl.relevance.rules.engine import pair_slugs
    from searchrl.relevance.scoring import evaluate
    model, tok = load_relevance_model(str(tiny_model_dir))
    cfg = PromptConfig(instruction="Grade the product.", order="cot_first")
    pairs = [("usb c cable", {"title": "anker usb c cable 1m"}), ("laptop bag", {"title": "targus laptop sleeve 15"})]
    examples = [{"prompt": build_prompt(q, p, cfg), "grade": 4, "query": q, "product": p} for q, p in pairs]
    with mock.patch.object(evaluate, "decode_completions", return_value=["<L4>", "<L2>"]) as decode:
        out = evaluate.evaluate_examples(model, tok, examples, EvalConfig(split="valid"), cfg, False)
    assert decode.call_args.kwargs["linked"] == pair_slugs(cfg, [q for q, _ in pairs], [p for _, p in pairs])
    assert out["valid_accuracy"] == 0.5  # the decoded grades are the ones read
    with mock.patch.object(evaluate, "decode_completions", return_value=["<L4>"] * 2) as decode:
        evaluate.evaluate_examples(model, tok, [{k: ex[k] for k in ("prompt", "grade")} for ex in examples],
                                   EvalConfig(split="valid"), cfg, False)
    assert decode.call_args.kwargs["linked"] is None  # prompts alone: no pair to link, the whole vocabulary
