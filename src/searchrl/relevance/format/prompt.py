"""The relevance prompt and the completion format the relevance model writes.

A completion is one grade token plus five reasoning lines (TaoSR1's five steps).
Label-first (the default, "post-CoT"): the grade token comes first, so serving
reads only the first generated position; cot-first puts it last (for the ablation).

Line grammar (one line per step, in STEPS order; parser.py reads it back):

    <step>: <note> => <key>: <value>

    step        key         value
    query       intent      slug  [a-z0-9_]+  (product type id, brand or query words; "unknown")
    item        type        slug  [a-z0-9_]+  (product type id of the item; "unknown")
    category    category    match | related | mismatch | unclear
    attribute   attribute   match | partial | mismatch | unclear
    verdict     grade       L1 | L2 | L3 | L4

<note> is free text on one line; it never contains "=>" (sanitised to "->").
Label-first:  "<L3>\\nquery: ... => intent: laptop\\n...\\nverdict: ... => grade: L3"
CoT-first:    "query: ... => intent: laptop\\n...\\nverdict: ... => grade: L3\\n<L3>"

Simplifies: the prompt is plain text with one user turn (no system turn, which
some chat templates reject); key attributes are picked by a fixed priority list.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from searchrl.config import when_set
from searchrl.errors import ConfigError

GRADE_TOKENS = ("<L1>", "<L2>", "<L3>", "<L4>")  # one dedicated token per grade; index = grade - 1
STEPS = ("query", "item", "category", "attribute", "verdict")
VERDICT_KEYS = {"query": "intent", "item": "type", "category": "category", "attribute": "attribute", "verdict": "grade"}
CATEGORY_VALUES = ("match", "related", "mismatch", "unclear")
ATTRIBUTE_VALUES = ("match", "partial", "mismatch", "unclear")
GRADE_VALUES = ("L1", "L2", "L3", "L4")
ALLOWED_VALUES = {"category": CATEGORY_VALUES, "attribute": ATTRIBUTE_VALUES, "verdict": GRADE_VALUES}
SLUG = re.compile(r"[a-z0-9_]+")
ORDERS = ("label_first", "cot_first")
LAYOUTS = ("lines", "segments")
SLUG_SOURCES = ("rules", "linked", "free")
MARKER, SEGMENT_START = "[SEP]", "[CLS]"  # the segments layout's boundaries (MiniLM's own special tokens)

GRADE_GUIDE = (
    "<L4> Excellent: the product is exactly what the query asks for.\n"
    "<L3> Related: the right kind of product, but some requested detail is missing or unverified.\n"
    "<L2> Mismatch: a related product (sibling type or accessory) or the right type with a wrong key attribute.\n"
    "<L1> Irrelevant: a different kind of product, or it violates what the query excludes."
)
STEP_GUIDE = (
    "query: what the user wants => intent: <type>\n"
    "item: what the product is => type: <type>\n"
    "category: product type vs the query => category: match|related|mismatch|unclear\n"
    "attribute: brand, colour, size, capacity, compatibility, exclusions => attribute: match|partial|mismatch|unclear\n"
    "verdict: the conclusion => grade: L1|L2|L3|L4"
)
DEFAULT_INSTRUCTIONS = {
    "label_first": ("You judge search relevance for an electronics shop. Grade the product for the query:\n"
                    f"{GRADE_GUIDE}\nAnswer with the grade token first, then five lines:\n{STEP_GUIDE}"),
    "cot_first": ("You judge search relevance for an electronics shop. Grade the product for the query:\n"
                  f"{GRADE_GUIDE}\nFirst write five lines:\n{STEP_GUIDE}\nthen the grade token on the last line."),
}

# attributes shown first when present (Icecat / canonical names); logistics fields are skipped
ATTRIBUTE_PRIORITY = ("product_type", "type", "product_colour", "colour", "color", "compatibility",
                      "brand_compatibility", "display_diagonal", "internal_memory", "storage_capacity", "capacity",
                      "connectivity_technology", "connector_1", "connector_2", "form_factor", "material", "size")
SKIP_ATTRIBUTE = re.compile(r"package|pallet|master__outer|quantity_per|country_of_origin|temperature|humidity|"
                            r"certification|rohs|ean|oem_code|status|weight|width|height|depth|dimensions")


@dataclass
class PromptConfig:
    max_description_chars: int = 300  # description is cut to this many characters (long blurbs cost prefill time)
    max_attributes: int = 8  # at most this many attributes are listed, priority ones first
    order: str = "label_first"  # "label_first": grade token first (TaoSR1); "cot_first": grade token last
    instruction: str = ""  # task text at the top of the prompt; "" = DEFAULT_INSTRUCTIONS[order]
    max_note_chars: int = 160  # each reasoning note is cut to this length (keeps completions short)
    layout: str = "lines"  # lines: instruction, labelled query / product lines, "Answer:" | segments: the query and
    #   the product as two [SEP]-delimited texts, for the minilm-prefix model (prefix_lm.py; no instruction)
    constrained: bool = True  # decoding and sampling keep to the completion grammar (grammar.py): the model chooses
    #   the grade, the notes and the step values, never the skeleton; false: free decoding, as a plain LM
    slugs: str = "linked"  # the values a type step may name when decoding: "linked", the rule knowledge base's ids
    #   that the pair's own text names, the query's own words, unknown where it names none
    #   (relevance.rules.engine's linked_slugs; a caller without the pair, "rules"); "rules", any of the knowledge
    #   base's ids (intent: a type, a brand or unknown; type: a type or unknown); "free": any run of slug tokens
    intent_beam: int = when_set(4)  # greedy decoding names the intent from those ids by a beam of this many prefixes
    #   over their tokens: the id most probable as a whole ("flat screen tv" is not led by "screen" into
    #   screen_protector); 1 = token by token, as the item's type always is (a beam there agreed less with the
    #   rules: docs/relevance-model.md). Sampling (pass@N, GRPO) goes token by token

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ConfigError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.slugs not in SLUG_SOURCES:
            raise ConfigError(f"slugs must be one of {SLUG_SOURCES}, got {self.slugs!r}")
        if self.intent_beam < 1:
            raise ConfigError(f"intent_beam must be >= 1, got {self.intent_beam}")

    @property
    def instruction_text(self) -> str:
        return self.instruction or DEFAULT_INSTRUCTIONS[self.order]


def _text(value) -> str:
    # pandas gives NaN for missing cells; treat it like ""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return " ".join(str(value).split())


def key_attributes(attributes, limit: int) -> list[tuple[str, str]]:
    """Up to `limit` (name, value) pairs: priority names first, then the rest in stored order."""
    if isinstance(attributes, str):
        try:
            attributes = json.loads(attributes) if attributes.strip() else {}
        except json.JSONDecodeError:
            attributes = {}
    if not isinstance(attributes, dict):
        return []
    names = [n for n in ATTRIBUTE_PRIORITY if n in attributes]
    names += [n for n in attributes if n not in names and not SKIP_ATTRIBUTE.search(n)]
    out = []
    for name in names:
        value = _text(attributes[name])
        if value:
            out.append((name, value[:80]))
        if len(out) >= limit:
            break
    return out


def product_block(query: str, product: dict, cfg: PromptConfig | None = None) -> str:
    """The query and product lines of the prompt (no instruction)."""
    cfg = cfg or PromptConfig()
    lines = [f"Query: {_text(query)}", f"Title: {_text(product.get('title'))}"]
    for label, field in (("Brand", "brand"), ("Category", "category")):
        value = _text(product.get(field))
        if value:
            lines.append(f"{label}: {value}")
    attrs = key_attributes(product.get("attributes"), cfg.max_attributes)
    if attrs:
        lines.append("Attributes: " + "; ".join(f"{n}={v}" for n, v in attrs))
    desc = _text(product.get("description"))[: cfg.max_description_chars]
    if desc:
        lines.append(f"Description: {desc}")
    return "\n".join(lines)


def product_text(product: dict, cfg: PromptConfig | None = None) -> str:
    """The product as one line of text (the segments layout): title, brand, category, key attribute values and
    the description head -- what a sentence encoder reads."""
    cfg = cfg or PromptConfig()
    parts = [_text(product.get(f)) for f in ("title", "brand", "category")]
    parts += [v for _, v in key_attributes(product.get("attributes"), cfg.max_attributes)]
    parts.append(_text(product.get("description"))[: cfg.max_description_chars])
    return " ".join(p for p in parts if p)


def _unmarked(text: str) -> str:
    # a marker inside user text would move a segment boundary
    return " ".join(text.replace(MARKER, " ").replace(SEGMENT_START, " ").split())


def build_prompt(query: str, product: dict, cfg: PromptConfig | None = None) -> str:
    """The whole prompt as plain text, ending where the completion starts."""
    cfg = cfg or PromptConfig()
    if cfg.layout == "segments":  # segment A = the query, B = the product, then the read marker
        return (f"{SEGMENT_START}{_unmarked(_text(query))}{MARKER}{SEGMENT_START}"
                f"{_unmarked(product_text(product, cfg))}{MARKER}{MARKER}")
    return f"{cfg.instruction_text}\n\n{product_block(query, product, cfg)}\n\nAnswer:\n"


def build_messages(query: str, product: dict, cfg: PromptConfig | None = None) -> list[dict]:
    """Chat messages for a chat template: a single user turn holding the prompt."""
    return [{"role": "user", "content": build_prompt(query, product, cfg).rstrip("\n")}]


def apply_template(tokenizer, query: str, product: dict, cfg: PromptConfig | None = None) -> str:
    """The prompt string for `tokenizer`: its chat template when it has one, else the plain prompt."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(build_messages(query, product, cfg), tokenize=False,
                                             add_generation_prompt=True)
    return build_prompt(query, product, cfg)


def clean_note(note, limit: int = 160) -> str:
    """One line of free text that cannot break the line grammar, at most ``limit`` characters."""
    text = _text(note).replace("=>", "->")
    # a grade token inside a note would confuse the parser; repeat until none is left, since taking the
    # brackets off one can make another ("<<L3>>" -> "<L3>")
    while any(tok in text for tok in GRADE_TOKENS):
        for tok in GRADE_TOKENS:
            text = text.replace(tok, tok[1:-1])
    if len(text) > limit and " " in text[:limit + 1]:
        text = text[:limit + 1].rsplit(" ", 1)[0]  # cut between words: a note ends in a whole word
    return text[:limit].rstrip() or "-"


def slug_of(value) -> str:
    """A type step's value as a completion writes it: lower case, runs of [a-z0-9_] joined by "_"; "unknown" if none."""
    return "_".join(SLUG.findall(str(value).strip().lower().replace(" ", "_"))) or "unknown"


def grade_token(grade: int) -> str:
    if grade not in (1, 2, 3, 4):
        raise ValueError(f"grade must be 1..4, got {grade!r}")
    return GRADE_TOKENS[grade - 1]


def build_completion(grade: int, verdicts: dict, notes: dict | None = None, cfg: PromptConfig | None = None) -> str:
    """The target completion: grade token and the five step lines, in cfg.order.

    `verdicts` maps step -> value for query/item/category/attribute; the verdict
    step's value is always the grade itself ("L3"), whatever `verdicts` says.
    """
    cfg = cfg or PromptConfig()
    notes = notes or {}
    token = grade_token(grade)
    lines = []
    for step in STEPS:
        value = f"L{grade}" if step == "verdict" else str(verdicts.get(step, "unknown")).strip().lower()
        if step in ("query", "item"):
            value = slug_of(value)
        elif step in ALLOWED_VALUES and value not in ALLOWED_VALUES[step]:
            raise ValueError(f"{step} verdict must be one of {ALLOWED_VALUES[step]}, got {value!r}")
        note = clean_note(notes.get(step) or "-", cfg.max_note_chars)
        lines.append(f"{step}: {note} => {VERDICT_KEYS[step]}: {value}")
    if cfg.order == "label_first":
        return token + "\n" + "\n".join(lines)
    return "\n".join(lines) + "\n" + token
