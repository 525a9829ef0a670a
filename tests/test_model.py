"""Relevance model loading and grade probabilities, on the random tiny Qwen2 over the MiniLM vocabulary."""

import numpy as np
import pytest
import torch

from searchrl.relevance.format.prompt import GRADE_TOKENS, PromptConfig, build_prompt
from searchrl.relevance.model.builds import TINY, tiny_qwen2
from searchrl.relevance.model.load import grade_probs, load_relevance_model
from searchrl.relevance.model.lora import LoraSettings
from searchrl.relevance.model.tokenizer import (
    add_grade_tokens,
    encode_prompt,
    grade_token_ids,
    minilm_tokenizer,
    render_prompt,
)

PROMPTS = [
    "query: usb c cable\ntitle: anker usb c to usb c cable 1m\nanswer:\n",
    "query: laptop\nanswer:\n",
    "query: red wireless mouse for macbook\ntitle: logitech m185 wireless mouse grey\nbrand: logitech\nanswer:\n",
    build_prompt("hdmi cable", {"title": "HDMI 2.1 cable 2m", "brand": "Ugreen"}, PromptConfig(instruction="Grade:")),
]


@pytest.fixture(scope="module")
def tiny():
    return load_relevance_model(TINY)


def test_minilm_tokenizer_is_usable_for_a_causal_lm():
    tok = minilm_tokenizer()
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert not getattr(tok, "chat_template", None)
    assert render_prompt(tok, PROMPTS[0]) == PROMPTS[0]  # no template: the plain prompt


def test_grade_tokens_added_once(tiny, tmp_path):
    model, tok = tiny
    ids = grade_token_ids(tok)
    assert len(set(ids)) == 4
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    # a grade token stays one token inside text
    assert tok.tokenize(f"{GRADE_TOKENS[2]}\nquery: x")[0] == GRADE_TOKENS[2]
    assert add_grade_tokens(tok) == 0
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model2, tok2 = load_relevance_model(str(tmp_path))
    assert len(tok2) == len(tok) and grade_token_ids(tok2) == ids
    assert type(tok2) is type(tok)  # not re-read as qwen2's BPE tokenizer because config.json says qwen2
    for p in PROMPTS:
        assert encode_prompt(tok2, p) == encode_prompt(tok, p)
    assert (tok2.eos_token_id, tok2.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert model2.get_input_embeddings().weight.shape == model.get_input_embeddings().weight.shape
    model3, tok3 = load_relevance_model(str(tmp_path))  # loading again adds nothing either
    assert len(tok3) == len(tok)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k


def test_tiny_qwen2_is_seeded_and_leaves_global_rng_alone():
    tok = minilm_tokenizer()
    add_grade_tokens(tok)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=0), tiny_qwen2(tok, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.config.vocab_size == len(tok)


def test_grade_probs_match_unpadded_forward(tiny):
    model, tok = tiny
    gids = grade_token_ids(tok)
    probs = grade_probs(model, tok, PROMPTS, batch_size=3)  # mixed lengths: rows get left padding
    assert probs.shape == (len(PROMPTS), 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    model.eval()
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            ids = torch.tensor([encode_prompt(tok, p)])  # [1, T], no padding
            logits = model(input_ids=ids).logits[0, -1, gids]  # [4]
            manual = torch.softmax(logits.double(), -1).numpy()
            np.testing.assert_allclose(probs[i], manual, atol=1e-5)
    # batch size does not change the result either
    np.testing.assert_allclose(grade_probs(model, tok, PROMPTS, batch_size=1), probs, atol=1e-5)


def test_lora_freezes_base_weights():
    model, tok = load_relevance_model(TINY, lora=LoraSettings(r=4, alpha=8, dropout=0.0,
                                                              target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    assert any("trainable_tokens" in n for n in trainable)  # the new grade-token rows can learn
    base = model.get_base_model()
    assert not base.model.layers[0].self_attn.q_proj.base_layer.weight.requires_grad
    assert not base.model.layers[0].mlp.up_proj.weight.requires_grad
    probs = grade_probs(model, tok, PROMPTS[:2])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)


def test_minilm_tokenizer_round_trips_the_completion_grammar():
    """Decoded completions must parse: WordPiece alone loses newlines and '=>' and lowercases 'L3'."""
    from searchrl.relevance.format.parser import is_consistent, parse_completion
    from searchrl.relevance.format.prompt import build_completion
    _, tok = load_relevance_model(TINY)
    c = build_completion(3, {"query": "laptop", "item": "notebook", "category": "match", "attribute": "partial"})
    parsed = parse_completion(tok.decode(tok(c, add_special_tokens=False)["input_ids"]))
    assert parsed.format_errors == [] and parsed.grade == 3 and parsed.verdicts["verdict"] == "L3"
    assert is_consistent(parsed.grade, parsed.verdicts)


def test_trimmed_tokenizer_keeps_corpus_tokenization_and_spells_the_rest(tmp_path):
    from searchrl.relevance.model.builds import minilm_qwen2
    from searchrl.relevance.model.tokenizer import load_tokenizer, trim_minilm_tokenizer
    base = minilm_tokenizer()
    tok = trim_minilm_tokenizer(PROMPTS, tmp_path / "tok")
    assert len(tok) < 2500 < len(base)  # the corpus' tokens, single characters and their ## forms
    for p in PROMPTS:  # exactly the same pieces as MiniLM's full vocabulary
        assert tok.tokenize(p) == base.tokenize(p)
    unseen = tok.tokenize("zyzzyva headphones")
    assert tok.unk_token not in unseen and "".join(t.removeprefix("##") for t in unseen) == "zyzzyvaheadphones"
    again = load_tokenizer(str(tmp_path / "tok"))  # saved as a BertTokenizer; eos and the line grammar survive
    assert again.tokenize(PROMPTS[2]) == tok.tokenize(PROMPTS[2]) and again.eos_token == "[SEP]"
    assert again("a\nb => c")["input_ids"] == tok("a\nb => c")["input_ids"]
    # the kept rows start from MiniLM's embeddings, whichever id a token has now
    add_grade_tokens(tok)
    add_grade_tokens(base)
    trimmed, full = minilm_qwen2(tok), minilm_qwen2(base)
    a = trimmed.get_input_embeddings().weight[tok.convert_tokens_to_ids("laptop")]
    b = full.get_input_embeddings().weight[base.convert_tokens_to_ids("laptop")]
    assert tok.convert_tokens_to_ids("laptop") != base.convert_tokens_to_ids("laptop")
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999
    assert trimmed.get_input_embeddings().weight.shape[0] == len(tok)
