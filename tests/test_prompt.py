"""Prompt and completion format: what the relevance model reads and writes."""

import json
import math

import pytest

from searchrl.relevance.format.prompt import (
    GRADE_TOKENS,
    STEPS,
    PromptConfig,
    apply_template,
    build_completion,
    build_messages,
    build_prompt,
    clean_note,
    key_attributes,
)

LAPTOP = {
    "title": 'HP Pavilion dv7-1211ea Notebook Silver 43.2 cm (17") 4 GB DDR2-SDRAM 250 GB HDD',
    "brand": "HP",
    "category": "Notebook",
    "description": "A 17 inch multimedia notebook. " + "x" * 1000,
    "attributes": json.dumps({"package_weight": 3.2, "product_type": "Notebook", "pallet_width": 80,
                              "compatibility": "CopyCentre C65", "display_diagonal": 17.0,
                              "product_colour": "Silver"}),
}
VERDICTS = {"query": "laptop", "item": "laptop", "category": "match", "attribute": "match"}


def test_constants():
    assert GRADE_TOKENS == ("<L1>", "<L2>", "<L3>", "<L4>")
    assert STEPS == ("query", "item", "category", "attribute", "verdict")


def test_prompt_fields_and_cuts():
    cfg = PromptConfig(max_description_chars=40, max_attributes=2)
    p = build_prompt("laptop", LAPTOP, cfg)
    assert "Query: laptop" in p and "Title: HP Pavilion dv7-1211ea" in p
    assert "Brand: HP" in p and "Category: Notebook" in p
    # priority attributes first, logistics never, and only max_attributes of them
    attr_line = next(line for line in p.splitlines() if line.startswith("Attributes: "))
    assert attr_line == "Attributes: product_type=Notebook; product_colour=Silver"
    assert "pallet" not in p and "package" not in p
    desc_line = next(line for line in p.splitlines() if line.startswith("Description: "))
    assert len(desc_line) == len("Description: ") + 40
    assert p.startswith(cfg.instruction_text) and p.endswith("\nAnswer:\n")


def test_prompt_skips_missing_fields():
    p = build_prompt("mouse", {"title": "V7 Standard Mouse USB", "brand": math.nan, "category": None,
                               "description": "", "attributes": "not json"})
    assert "Brand:" not in p and "Category:" not in p and "Description:" not in p and "Attributes:" not in p
    assert "nan" not in p.lower().split("answer")[0].split("title")[-1]


def test_key_attributes_accepts_dict_and_bad_input():
    assert key_attributes({"colour": "Black", "a": ""}, 5) == [("colour", "Black")]
    assert key_attributes("{broken", 5) == [] and key_attributes(None, 5) == [] and key_attributes("[1]", 5) == []


def test_instruction_depends_on_order_and_can_be_replaced():
    lf, cf = PromptConfig(order="label_first"), PromptConfig(order="cot_first")
    assert "grade token first" in lf.instruction_text and "last line" in cf.instruction_text
    assert build_prompt("q", LAPTOP, PromptConfig(instruction="Grade it.")).startswith("Grade it.\n\nQuery: q")
    with pytest.raises(ValueError):
        PromptConfig(order="sideways")


def test_messages_single_user_turn():
    msgs = build_messages("laptop", LAPTOP)
    assert [m["role"] for m in msgs] == ["user"]
    assert msgs[0]["content"] == build_prompt("laptop", LAPTOP).rstrip("\n")


class FakeChatTokenizer:
    chat_template = "{{ messages }}"

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        self.calls.append((messages, tokenize, add_generation_prompt))
        return "<|user|>" + messages[0]["content"] + "<|assistant|>"


def test_apply_template_uses_chat_template_when_present():
    tok = FakeChatTokenizer()
    out = apply_template(tok, "laptop", LAPTOP)
    assert out.startswith("<|user|>") and out.endswith("<|assistant|>")
    assert tok.calls[0][1] is False and tok.calls[0][2] is True

    class Plain:
        chat_template = None
    assert apply_template(Plain(), "laptop", LAPTOP) == build_prompt("laptop", LAPTOP)


def test_apply_template_with_a_real_tokenizer():
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    out = apply_template(tok, "laptop", LAPTOP)
    assert out.startswith("<user>") and out.endswith("</user><assistant>") and "Query: laptop" in out


def test_completion_label_first_layout():
    notes = {"query": "wants a laptop", "item": "an HP notebook", "category": "same type => fine\nreally",
             "attribute": "no constraints", "verdict": "all good <L1>"}
    text = build_completion(4, VERDICTS, notes, PromptConfig())
    lines = text.split("\n")
    assert lines[0] == "<L4>" and len(lines) == 6
    assert [line.split(":")[0] for line in lines[1:]] == list(STEPS)
    assert lines[1] == "query: wants a laptop => intent: laptop"
    assert lines[3] == "category: same type -> fine really => category: match"
    assert lines[5].endswith("=> grade: L4") and "<L1>" not in lines[5]  # notes cannot smuggle grade tokens in
    assert sum(line.count("=>") for line in lines) == 5


def test_completion_cot_first_puts_token_last():
    text = build_completion(2, VERDICTS | {"attribute": "mismatch"}, {}, PromptConfig(order="cot_first"))
    lines = text.split("\n")
    assert lines[-1] == "<L2>" and lines[0].startswith("query: ") and lines[4] == "verdict: - => grade: L2"


def test_completion_rejects_bad_values():
    with pytest.raises(ValueError):
        build_completion(5, VERDICTS)
    with pytest.raises(ValueError):
        build_completion(3, VERDICTS | {"category": "sort of"})
    # free-form type names are slugged, never rejected
    assert "=> intent: usb_c_cable" in build_completion(3, VERDICTS | {"query": "USB-C cable!"})


def test_clean_note_limits():
    assert clean_note("a" * 500, 10) == "a" * 10
    assert clean_note("a mouse pad by kensington", 16) == "a mouse pad by"  # whole words
    assert clean_note("a mouse pad by kensington", 14) == "a mouse pad by"
    assert clean_note("a mouse pad", 0) == "-"
    assert clean_note(None) == "-" and clean_note("  \n ") == "-"
