"""The rule knowledge base (rules.yaml) compiled for matching, and its checks.

rules.yaml is edited by hand, so loading validates it (unknown kinds, parents,
`for` targets and line types fail at once, naming the entry). Types named in a
text are found with their role: head (what the product is), modifier or
compat (what it serves: "Laptop Lock", "for iPad") or spec (a part listed after
a capacity: "256 GB SSD" in a laptop title).

Simplifies: one flat type list with single parents; a name maps to one type.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import yaml

from searchrl.errors import ConfigError
from searchrl.relevance.rules.rule_text import CAPACITY_TOKEN, NUM, Vocab, norm, variants

DEFAULT_RULES = Path(__file__).with_name("rules.yaml")
KIND_RANK = {"component": 0, "device": 1, "peripheral": 2, "accessory": 3, "service": 4}  # which type a title is
# in "<A> <B>" the first names what the second serves when it ranks lower here ("PC fan", "camera cable")
COMPOUND_RANK = {"device": 0, "component": 1, "peripheral": 2, "accessory": 3, "service": 4}


class KnowledgeBase:
    """rules.yaml compiled: vocabularies, the type hierarchy, units; finds type mentions in text."""

    def __init__(self, kb: dict):
        kb = {k: v for k, v in (kb or {}).items() if v is not None}  # an empty YAML section reads as None
        self.kb = kb
        settings = kb.get("settings", {})
        self.accessory_verdict = settings.get("accessory_verdict", "mismatch")
        self.negation_words = set(settings.get("negation_words", []))
        self.compat_words = [norm(w).split() for w in settings.get("compat_words", [])]
        self.stopwords = {norm(w) for w in settings.get("stopwords", [])}
        bundle = [re.escape(w) if w == "+" else rf"\b{re.escape(w)}\b" for w in settings.get("bundle_words", [])]
        self.bundle = re.compile(r"\s(?:" + "|".join(bundle) + r")[\s/]", re.I) if bundle else None
        self.types = {t.get("id"): t for t in kb.get("types", [])}
        _validate(kb, self.types, self.accessory_verdict)
        names = {}
        for t in kb.get("types", []):
            for n in t.get("names", []):
                for v in variants(n):
                    names.setdefault(v, ("type", t["id"], None))
        self.lines = {norm(line["name"]): line for line in kb.get("lines", [])}
        for line in kb.get("lines", []):
            for v in variants(line["name"]):
                names[v] = ("line", line["type"], line.get("brand") or None, norm(line["name"]))
        self.type_vocab = Vocab(names)
        self.brand_vocab = Vocab({norm(n): b for b, ns in kb.get("brands", {}).items() for n in ns})
        self.colour_vocab = Vocab({v: c for c, ns in kb.get("colours", {}).items() for n in ns for v in variants(n)})
        feats, self.opposites, self.implies = {}, {}, {}
        for f in kb.get("features", []):
            for n in f.get("names", []):
                feats.setdefault(norm(n), f["id"])
            self.opposites[f["id"]] = {norm(n) for n in f.get("opposite", [])}
            self.implies[f["id"]] = list(f.get("implies", []))
        self.feature_vocab = Vocab(feats)
        self.opposite_vocab = Vocab({n: n for ns in self.opposites.values() for n in ns})
        units = {u: (dim, f) for dim, us in kb.get("quantities", {}).items() for u, f in us.items()}
        spaced = "|".join(re.escape(u) for u in sorted(units, key=len, reverse=True) if u != "in") or "(?!)"
        self.units = units
        attached = "in" if "in" in units else "(?!)"  # "15.6in" yes, "2 in 1" no
        self.quantity_rx = re.compile(rf"(\d+(?:\.\d+)?)(?:\s?({spaced})|({attached}))(?![a-z0-9])")

    @classmethod
    def from_yaml(cls, path: str | Path | None = None):
        path = Path(path) if path else DEFAULT_RULES
        with open(path) as f:
            return cls(yaml.safe_load(f) or {})

    def step_slugs(self) -> dict[str, list[str]]:
        """The values the rule engine writes for the type steps: intent, a type, a brand or unknown; type, a type
        or unknown (its third intent, the query's own words, is open-ended and left out)."""
        types = sorted(self.types)
        return {"query": types + sorted(self.kb.get("brands", {})) + ["unknown"], "item": types + ["unknown"]}

    # ------------------------------------------------------------------ vocabulary helpers
    def ancestors(self, type_id: str) -> list[str]:
        out, t = [], self.types.get(type_id, {}).get("parent")
        while t and t not in out:
            out.append(t)
            t = self.types.get(t, {}).get("parent")
        return out

    def specialise(self, head: str, targets: list[str]) -> str:
        """The most specific type under `head` that serves one of `targets`: bag + laptop -> laptop_bag."""
        wanted = {a for t in targets for a in (t, *self.ancestors(t))}
        for t in self.types.values():
            if (t["id"] == head or head in self.ancestors(t["id"])) and wanted & set(t.get("for", [])):
                return t["id"]
        return head

    def kind(self, type_id: str) -> str:
        return self.types.get(type_id, {}).get("kind", "device")

    def features_in(self, tokens: list[str]) -> set[str]:
        found = {f for _, _, f in self.feature_vocab.find(tokens)}
        for f in list(found):
            found.update(self.implies.get(f, []))
        return found

    def quantities(self, text: str) -> list[tuple[str, float]]:
        out = []
        for m in self.quantity_rx.finditer(text):
            dim, factor = self.units[m.group(2) or m.group(3)]
            out.append((dim, float(m.group(1)) * factor))
        return out

    def rank(self, type_id: str) -> int:
        return KIND_RANK[self.kind(type_id)]

    @staticmethod
    def _is_spec(tokens: list[str], i: int) -> bool:
        """A type right after a capacity ("250 GB HDD" in a laptop title) may be a spec of another product."""
        return i > 0 and bool(CAPACITY_TOKEN.match(tokens[i - 1]) or (
            i > 1 and NUM.match(tokens[i - 2]) and tokens[i - 1] in ("gb", "tb", "mb")))

    def mentions(self, tokens: list[str]) -> list[dict]:
        """Type mentions with their role: head (names the product), modifier/compat (names a target) or spec."""
        found = self.type_vocab.find(tokens)
        out = []
        for k in range(len(found) - 1, -1, -1):  # right to left: a modifier needs to know its right neighbour
            i, j, entry = found[k]
            prev = tokens[max(0, i - 3):i]
            nxt = out[0] if out and out[0]["at"] - j <= 1 else None  # the adjacent mention on the right
            role = "head"
            if any(prev[len(prev) - len(w):] == w for w in self.compat_words if w):
                role = "compat"
            elif self._is_spec(tokens, i):
                role = "spec"
            elif nxt and (nxt["role"] == "modifier" or
                          COMPOUND_RANK[self.kind(entry[1])] < COMPOUND_RANK[self.kind(nxt["type"])]):
                role = "modifier"  # "notebook USB speakers", "Monitor & Laptop Mounting Arm": the last noun is the head
            out.insert(0, {"type": entry[1], "role": role, "line": entry[3] if entry[0] == "line" else None,
                           "brand": entry[2], "at": i})
        return out


def _validate(kb: dict, types: dict, accessory_verdict: str) -> None:
    """Fail on load, naming the entry, rather than mis-grade later: rules.yaml is edited by hand."""
    if accessory_verdict not in ("related", "mismatch"):
        raise ConfigError(f"settings.accessory_verdict must be related or mismatch, got {accessory_verdict!r}")
    words = [w for key in ("negation_words", "compat_words", "bundle_words", "stopwords")
             for w in kb.get("settings", {}).get(key, [])]
    words += [n for t in kb.get("types", []) for n in t.get("names", [])] + [x.get("name") for x in kb.get("lines", [])]
    words += [n for section in ("brands", "colours") for ns in kb.get(section, {}).values() for n in ns]
    words += [n for f in kb.get("features", []) for key in ("names", "opposite") for n in f.get(key, [])]
    bad = [w for w in words if not isinstance(w, str)]
    if bad:
        raise ConfigError(f"names must be strings, got {bad[:5]} (quote words YAML reads as booleans: no, on, yes)")
    for t in kb.get("types", []):
        if not t.get("id") or not t.get("names"):
            raise ConfigError(f"type entry needs an id and names: {t}")
        if t.get("kind", "device") not in KIND_RANK:
            raise ConfigError(f"type {t['id']}: kind must be one of {sorted(KIND_RANK)}, got {t['kind']!r}")
        for ref in [t.get("parent")] + list(t.get("for", [])):
            if ref and ref not in types:
                raise ConfigError(f"type {t['id']}: unknown type {ref!r}")
    for line in kb.get("lines", []):
        if line.get("type") not in types:
            raise ConfigError(f"line {line.get('name')!r}: unknown type {line.get('type')!r}")


@lru_cache(maxsize=4)
def _step_slugs(path: str | None) -> dict[str, list[str]]:
    return KnowledgeBase.from_yaml(path).step_slugs()


def completion_grammar(tokenizer, prompt_cfg, rules: str | Path | None = None):
    """grammar_for with the slug vocabulary ``prompt_cfg.slugs`` asks for: "rules" (and "linked", until it is
    a batch binds it to its pairs' engine.pair_slugs), this knowledge base's (``rules``: a rules.yaml, default the
    packaged one); "free", none. None when decoding is unconstrained."""
    from searchrl.relevance.format.grammar import grammar_for  # torch, which the rules themselves never need
    slugs = _step_slugs(str(rules) if rules else None) if prompt_cfg.slugs != "free" else None
    return grammar_for(tokenizer, prompt_cfg, slugs)
