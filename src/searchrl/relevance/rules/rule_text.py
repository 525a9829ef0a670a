"""Text matching for the rule engine: normalisation and phrase vocabularies.

Simplifies: English-only, plural folding by suffix (s / es / y->ies), no
spelling correction; phrases are matched as whole token n-grams.
"""

from __future__ import annotations

import re

_QUOTES = str.maketrans({"\u201d": '"', "\u201c": '"', "\u2033": '"', "\u2019": "'", "\u00b4": "'"})
_DROP = re.compile(r"[^a-z0-9.\" ]+")
NUM = re.compile(r"^\d+(?:\.\d+)?$")
CAPACITY_TOKEN = re.compile(r"^\d+(?:\.\d+)?(?:gb|tb|mb|g)$")  # "250gb", "160g": a spec, not a product


def norm(text) -> str:
    """Lower case, punctuation to spaces; keeps decimal points and the inch sign after digits."""
    if text is None or (isinstance(text, float) and text != text):
        return ""
    s = str(text).lower().translate(_QUOTES).replace("''", '"').replace("'", "")
    s = _DROP.sub(" ", s)
    s = re.sub(r"\.(?!\d)|(?<!\d)\.", " ", s)
    s = re.sub(r'(?<![0-9])"', " ", s)
    return " ".join(s.split())


def stem(word: str) -> str:
    """Plural folding for word overlap: "speakers" -> "speaker" (not "glass" -> "glas")."""
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def variants(name: str) -> set[str]:
    """A name and its plural spellings, normalised."""
    name = norm(name)
    out = {name}
    if name and name[-1].isalpha():
        out |= {name + "s", name + "es"}
        if name.endswith("y") and name[-2:-1] not in "aeou":
            out.add(name[:-1] + "ies")
    return out


class Vocab:
    """Phrase -> value lookup over token n-grams, leftmost-longest."""

    def __init__(self, entries: dict):
        self.lookup = {k: v for k, v in entries.items() if k.strip()}
        self.lengths: dict[str, list[int]] = {}  # first token -> phrase lengths, longest first (the fast path)
        for phrase in self.lookup:
            words = phrase.split()
            self.lengths.setdefault(words[0], []).append(len(words))
        for first, ns in self.lengths.items():
            self.lengths[first] = sorted(set(ns), reverse=True)

    def find(self, tokens: list[str]) -> list[tuple[int, int, object]]:
        out, i = [], 0
        while i < len(tokens):
            for n in self.lengths.get(tokens[i], ()):
                value = self.lookup.get(" ".join(tokens[i:i + n])) if i + n <= len(tokens) else None
                if value is not None:
                    out.append((i, i + n, value))
                    i += n
                    break
            else:
                i += 1
        return out


def field_text(product, name: str) -> str:
    """A product field as a string; None and NaN (pandas' missing value) give ""."""
    value = product.get(name)
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)
