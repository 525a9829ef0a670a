"""DPO on the random tiny Qwen2 as the 'SFT model': it learns the preferences, the reference stays frozen,
stop + resume equals an uninterrupted run, `searchrl train dpo` writes a loadable final/ model, and under LoRA
the reference is the policy with its adapters disabled (no second copy)."""

import hashlib
import json
import math

import pytest
import torch
from conftest import LORA, assert_only_adapters_moved
from safetensors.torch import load_file

from searchrl.cli import main
from searchrl.config import config_from_dict
from searchrl.relevance.format.prompt import build_completion
from searchrl.relevance.model.load import load_relevance_model, load_trainable
from searchrl.relevance.model.lora import LoraSettings, frozen_reference
from searchrl.relevance.model.tokenizer import grade_token_ids
from searchrl.relevance.train.dpo import DPOConfig, encode_pair, pair_logps, train_dpo
from searchrl.relevance.train.examples import IGNORE, collate
from searchrl.relevance.train.sample import write_pairs

VERDICTS = {
    4: {"query": "cable", "item": "cable", "category": "match", "attribute": "match"},
    3: {"query": "cable", "item": "cable", "category": "match", "attribute": "partial"},
    2: {"query": "cable", "item": "adapter", "category": "related", "attribute": "match"},
    1: {"query": "cable", "item": "laptop", "category": "mismatch", "attribute": "unclear"},
}
ITEMS = {4: "usb c cable 1m", 3: "usb cable", 2: "usb c adapter", 1: "gaming laptop"}


def make_pairs(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        gold = 4 - i % 4
        wrong = 1 if gold > 2 else 4
        rows.append({"prompt": f"Query: usb c cable {i}\nTitle: {ITEMS[gold]}\nAnswer:\n",
                     "chosen": build_completion(gold, VERDICTS[gold]),
                     "rejected": build_completion(wrong, VERDICTS[wrong]), "grade": gold, "source": "sample"})
    return rows


def small_cfg(tmp_path, model_dir, pairs, optim=None, run=None, **kw) -> DPOConfig:
    path = write_pairs(tmp_path / "pairs.jsonl", pairs)
    return config_from_dict(DPOConfig, {
        "model": str(model_dir), "pairs": str(path), "batch_size": 4, "max_length": 256, **kw,
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0, **(optim or {})},
        "run": {"output_dir": str(tmp_path / "out"), "device": "cpu", "progress": False, "seed": 0, **(run or {})}})


def log_ratio_margins(policy, reference, tok, pairs) -> torch.Tensor:
    """[B] (policy - reference) log-ratio of chosen minus that of rejected, per pair."""
    enc = [encode_pair(tok, p, 256) for p in pairs]
    batch = collate([e["chosen"] for e in enc] + [e["rejected"] for e in enc], tok.pad_token_id)
    with torch.no_grad():
        ratio = pair_logps(policy, batch) - pair_logps(reference, batch)  # [2B]
    return ratio[:len(pairs)] - ratio[len(pairs):]


def test_encode_pair_masks_the_prompt_and_ends_with_eos(tiny_model_dir):
    _, tok = load_relevance_model(str(tiny_model_dir))
    pair = make_pairs(1)[0]
    enc = encode_pair(tok, pair, 256)
    n_prompt = len(tok(pair["prompt"], add_special_tokens=False)["input_ids"])
    for side in ("chosen", "rejected"):
        labels = enc[side]["labels"]
        assert labels[:n_prompt] == [IGNORE] * n_prompt and IGNORE not in labels[n_prompt:]
        assert labels[-1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(enc["chosen"]["labels"][n_prompt]) == "<L4>"
    assert tok.convert_ids_to_tokens(enc["rejected"]["labels"][n_prompt]) == "<L1>"
    assert encode_pair(tok, pair, n_prompt + 5) is None  # a side over max_length drops the pair


def test_dpo_learns_the_preferences_and_the_reference_stays_frozen(tiny_model_dir, tmp_path):
    weights = tiny_model_dir / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    pairs = make_pairs(4)
    res = train_dpo(small_cfg(tmp_path, tiny_model_dir, pairs,
                              optim={"max_steps": 16, "lr": 5e-4, "schedule": "constant_with_warmup"}))
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 17))
    # step 1 scores the untouched policy: it equals the reference, so the margin is 0 and the loss log 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and rows[0]["reward_margin"] == pytest.approx(0)
    margins, losses = [r["reward_margin"] for r in rows], [r["loss"] for r in rows]
    assert sum(margins[-4:]) / 4 > sum(margins[:4]) / 4 + 0.05 and margins[-1] == max(margins), margins
    assert losses[-1] < math.log(2) - 0.05 and losses[-1] == min(losses), losses
    assert rows[-1]["reward_accuracy"] == 1.0 and all(r["tokens_per_s"] > 0 for r in rows)
    # measured afresh: the policy now prefers every chosen completion more than the reference does
    assert (log_ratio_margins(res.model, res.reference, res.tokenizer, pairs) > 0).all()
    # the reference: frozen, in eval mode, identical to the SFT model on disk, which DPO never wrote to
    assert not res.reference.training and not any(p.requires_grad for p in res.reference.parameters())
    sft, _ = load_relevance_model(str(tiny_model_dir))
    for (k, a), b in zip(sft.state_dict().items(), res.reference.state_dict().values()):
        assert torch.equal(a, b), k
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest
    moved = [k for k, v in res.model.state_dict().items() if not torch.equal(v, sft.state_dict()[k])]
    assert moved  # while the policy did move


def test_stop_and_resume_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    pairs = make_pairs(3)  # batch 1, accumulation 2: 3 micro-batches per epoch, so steps straddle epochs
    kw = dict(batch_size=1, grad_accum=2, optim={"max_steps": 4, "schedule": "cosine", "warmup_ratio": 0.25,
                                                 "weight_decay": 0.01})
    full = train_dpo(small_cfg(tmp_path / "full", tiny_model_dir, pairs, **kw))
    part = train_dpo(small_cfg(tmp_path / "part", tiny_model_dir, pairs, run={"stop_at_step": 2}, **kw))
    assert part.step == 2 and part.final_dir is None
    assert (tmp_path / "part" / "out" / "checkpoint-2" / "trainer_state.pt").exists()
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    resumed = train_dpo(small_cfg(tmp_path / "part", tiny_model_dir, pairs, run={"resume": True}, **kw))
    assert resumed.step == 4
    a = load_file(full.final_dir / "model.safetensors")
    b = load_file(resumed.final_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "out" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # no step logged twice


def test_sample_then_train_dpo_cli(tiny_model_dir, tiny_data, tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    assert main(["sample", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--n", "2",
                 "--max-new-tokens", "12", "--max-prompts", "4", "--out", str(pairs)]) == 0
    config = tmp_path / "dpo.yaml"
    config.write_text(f"model: {tiny_model_dir}\npairs: {pairs}\ndata_dir: {tiny_data}\n"
                      f"run: {{device: cpu, progress: false}}\noptim: {{lr: 1.0e-4}}\nbatch_size: 2\n")
    out = tmp_path / "dpo"
    assert main(["train", "dpo", "--config", str(config), "--set", f"run.output_dir={out}", "--set",
                 "optim.max_steps=2", "--set", "eval.every=1", "--set", "max_length=512"]) == 0
    assert "dpo: saved" in capsys.readouterr().out
    final = out / "final"
    assert (final / "model.safetensors").exists() and json.loads((final / "dpo_config.json").read_text())["beta"] == 0.1
    assert (final / "relevance_config.json").read_text() == (tiny_model_dir / "relevance_config.json").read_text()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["valid_macro_f1"] <= 1 for r in rows)
    model, _ = load_relevance_model(str(final))  # loads like any relevance model
    assert model.config.vocab_size > 0
    assert main(["train", "dpo", "--set", "beta=0", "--set", f"pairs={pairs}"]) == 2  # bad config: an error, no run


# ---------------------------------------------------------------- LoRA: the reference is the adapters-off policy

def pairs_batch(tok, pairs):
    enc = [encode_pair(tok, p, 256) for p in pairs]
    return collate([e["chosen"] for e in enc] + [e["rejected"] for e in enc], tok.pad_token_id)


@pytest.mark.parametrize("tied", [True, False])
def test_lora_reference_is_the_starting_model_however_far_the_adapters_moved(tiny_model_dir, tmp_path, tied):
    """peft's disable_adapter reverts the LoRA deltas and the trainable grade-token rows (tied LM head), or the
    trained copy of an untied LM head (modules_to_save): the reference log-probs are a separately loaded starting
    model's, not the policy's."""
    model_dir = tiny_model_dir
    if not tied:  # the same weights with the LM head a separate matrix
        model, tok = load_relevance_model(str(tiny_model_dir))
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        model_dir = tmp_path / "untied"
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
    policy, tok = load_trainable(str(model_dir), torch.float32, LoraSettings(**LORA), None)
    start, _ = load_relevance_model(str(model_dir))
    head = start.get_output_embeddings().weight
    assert (head is start.get_input_embeddings().weight) == tied
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert any("trainable_tokens" in n for n in names) and any("lm_head.modules_to_save" in n for n in names) != tied
    batch = pairs_batch(tok, make_pairs(4))
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:  # as training would move them: LoRA matrices and grade-token rows
                p.add_(torch.randn_like(p) * 0.5)
        policy.train()
        with frozen_reference(policy, None) as ref:
            assert ref is policy and not ref.training  # the policy itself, in eval mode: no second copy
            ref_logps = pair_logps(ref, batch)  # [2B]
        assert policy.training  # the training mode it found is restored
        torch.testing.assert_close(ref_logps, pair_logps(start.eval(), batch), atol=1e-5, rtol=1e-5)
        moved = pair_logps(policy.eval(), batch)
    assert (moved - ref_logps).abs().max() > 0.1  # the policy itself is elsewhere


def test_lora_dpo_trains_adapters_only_merges_final_and_resumes_exactly(tiny_model_dir, tmp_path):
    pairs = make_pairs(4)
    kw = dict(lora=LORA, batch_size=2, optim={"max_steps": 4, "lr": 1e-2, "schedule": "cosine", "warmup_ratio": 0.0})
    full = train_dpo(small_cfg(tmp_path / "full", tiny_model_dir, pairs, **kw))
    assert full.reference is None  # no second copy under LoRA
    rows = [json.loads(line) for line in (tmp_path / "full" / "out" / "metrics.jsonl").read_text().splitlines()]
    # step 1: the adapters start at zero, so policy == adapters-off reference and the loss is log 2
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and rows[-1]["loss"] < math.log(2)
    start, tok = load_relevance_model(str(tiny_model_dir))
    # final/: merged full weights (no adapter tensors), a relevance model that scores like the returned policy
    weights = load_file(full.final_dir / "model.safetensors")
    assert not any("lora" in k or "trainable_tokens" in k or "base_layer" in k for k in weights)
    merged, _ = load_relevance_model(str(full.final_dir))
    batch = pairs_batch(tok, pairs)
    with torch.no_grad():
        final_logps = pair_logps(merged.eval(), batch)
        torch.testing.assert_close(final_logps, pair_logps(full.model.eval(), batch), atol=1e-5, rtol=1e-5)
        assert (final_logps - pair_logps(start.eval(), batch)).abs().max() > 1e-3
    # stopped at step 2: base weights untouched, adapters and grade rows moved, the reference still the start
    part = train_dpo(small_cfg(tmp_path / "part", tiny_model_dir, pairs, run={"stop_at_step": 2}, **kw))
    assert part.final_dir is None and part.reference is None
    assert_only_adapters_moved(part.model, start, grade_token_ids(tok))
    with torch.no_grad(), frozen_reference(part.model, None) as ref:
        torch.testing.assert_close(pair_logps(ref, batch), pair_logps(start, batch), atol=1e-5, rtol=1e-5)
    ckpt = tmp_path / "part" / "out" / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").exists() and not (ckpt / "model.safetensors").exists()
    resumed = train_dpo(small_cfg(tmp_path / "part", tiny_model_dir, pairs, run={"resume": True}, **kw))
    assert resumed.step == 4
    b = load_file(resumed.final_dir / "model.safetensors")
    assert weights.keys() == b.keys()
    for k in weights:
        assert torch.allclose(weights[k], b[k], atol=1e-6), k
