"""Rule engine: grade (query, product) with the atomic rules of rules.yaml.

The engine reads the query (product type, brand, colour, sizes and capacities,
features, exclusions), reads the product (its type from category, title and
description; what it is compatible with), and fills in the five CoT steps with a
verdict each; the grade is the one parser.RULE_TABLE implies for the category
and attribute verdicts. It is the offline CoT teacher and a baseline.

The vocabularies and type-mention finding live in kb.py (KnowledgeBase);
this file reads queries and items and applies the rules.

Simplifies: text is matched as token n-grams against the vocabularies (no
embeddings, no spelling correction); the item's type is the highest-ranked type
named in its category, else title, else description (accessory > peripheral >
device > component, first mention on ties; in "Laptop Lock" the head noun
"lock" wins); only the part of a bundle title before "+"/"with" counts.
Pure python with dictionary look-ups: thousands of pairs per second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from searchrl.data.schema import product_attributes
from searchrl.relevance.format.parser import grade_implied_by_verdicts
from searchrl.relevance.rules.kb import KnowledgeBase
from searchrl.relevance.rules.rule_text import NUM, field_text, norm, stem

MAX_NGRAM = 6
RELATION_NOTES = {  # category note per relation rule, the verdict's reason first; {i} item type, {q} query type
    "relation.same_type": "{i} is the type asked for",
    "relation.also_named": "{i}, and the listing also names it {q}",
    "relation.more_general": "{i} is the general kind of {q}; the exact type is not shown",
    "relation.accessory_of_query": "{i} is an accessory for {q}, not {q}",
    "relation.main_product_of_query": "{i} is what {q} is for, not {q} itself",
    "relation.sibling": "{i} is a sibling type of {q}, not the same",
    "relation.other_type": "{i} is another kind of product than {q}",
}


@dataclass
class RuleJudgment:
    grade: int  # 1..4, parser.RULE_TABLE applied to the category and attribute verdicts
    verdicts: dict  # step -> value for the five STEPS ("verdict" -> "L3")
    notes: dict  # step -> one line of human-readable reasoning
    fired: list = field(default_factory=list)  # ids of the rules that fired, in order


@dataclass
class _Query:
    tokens: list
    type: str | None
    modifiers: list  # types named before the head ("laptop" in "laptop bag")
    lines: list  # product lines named ("iphone")
    brand: str | None
    colours: set
    features: list
    quantities: list  # (dimension, value)
    negated: list  # (kind, value): kind in type / brand / feature / colour / word
    words: list  # leftover content words (stemmed)


class RuleEngine(KnowledgeBase):
    """judge(query, product) -> RuleJudgment, with the vocabularies of a KnowledgeBase."""

    def __init__(self, kb: dict):
        super().__init__(kb)
        self.read_query = lru_cache(maxsize=4096)(self._read_query)  # queries repeat across many products

    # ------------------------------------------------------------------ query
    def _read_query(self, query: str) -> _Query:
        tokens = norm(query).split()
        negated, keep, i = [], [], 0
        while i < len(tokens):
            if tokens[i] in self.negation_words and i + 1 < len(tokens):
                rest = tokens[i + 1:]
                span = None
                for kind, vocab in (("brand", self.brand_vocab), ("type", self.type_vocab),
                                    ("colour", self.colour_vocab), ("feature", self.feature_vocab)):
                    hit = vocab.find(rest[:MAX_NGRAM])
                    if hit and hit[0][0] == 0:
                        value = hit[0][2][1] if kind == "type" else hit[0][2]
                        span = (hit[0][1], kind, value)
                        break
                n, kind, value = span or (1, "word", stem(rest[0]))
                negated.append((kind, value))
                i += 1 + n
                continue
            keep.append(tokens[i])
            i += 1
        mentions = self.mentions(keep)
        heads = [m for m in mentions if m["role"] in ("head", "spec")]
        qtype = heads[-1]["type"] if heads else None  # English noun phrases end in their head
        modifiers = [m["type"] for m in mentions if m["role"] == "modifier"]
        if qtype and modifiers:
            qtype = self.specialise(qtype, modifiers)  # "iphone case": a case for a smartphone = phone_case
        lines = [m["line"] for m in mentions if m["line"]]
        brand = next((b for _, _, b in self.brand_vocab.find(keep)), None)  # a line's brand is checked by the line
        used = set()
        for vocab in (self.type_vocab, self.brand_vocab, self.colour_vocab, self.feature_vocab):
            for s, e, _ in vocab.find(keep):
                used.update(range(s, e))
        quantities = self.quantities(" ".join(keep))
        for k, tok in enumerate(keep):
            if self.quantities(tok) and not NUM.match(tok):
                used.add(k)  # "32gb", '17"'
            elif NUM.match(tok) and k + 1 < len(keep) and keep[k + 1] in self.units and keep[k + 1] != "in":
                used.update((k, k + 1))  # "32 gb"
        words = [stem(t) for k, t in enumerate(keep)
                 if k not in used and t not in self.stopwords and t not in self.negation_words]
        return _Query(tokens=keep, type=qtype, modifiers=modifiers,
                      lines=lines, brand=brand, colours={c for _, _, c in self.colour_vocab.find(keep)},
                      features=sorted({f for _, _, f in self.feature_vocab.find(keep)}), quantities=quantities,
                      negated=negated, words=words)

    # ------------------------------------------------------------------ item
    def _read_item(self, product) -> dict:
        title = field_text(product, "title")
        head_title = self.bundle.split(title, maxsplit=1)[0] if self.bundle else title
        attrs = _attributes(product.get("attributes"))
        category, desc = norm(product.get("category")), norm(product.get("description"))[:400]
        title_t, head_t = norm(title).split(), norm(head_title).split()
        brand_n = norm(product.get("brand"))
        if brand_n and head_t[:len(brand_n.split())] == brand_n.split():
            head_t = head_t[len(brand_n.split()):]  # "Case Logic ... case": the brand is not a product type
        mentions = self.mentions(head_t)
        heads = [m for m in mentions if m["role"] == "head"] or [m for m in mentions if m["role"] == "spec"]
        itype, source = None, None
        for segment in reversed(re.split(r"[>|/]", field_text(product, "category"))):  # paths: the last is finest
            cat_heads = [m for m in self.mentions(norm(segment).split()) if m["role"] in ("head", "spec")]
            if cat_heads:
                itype, source = cat_heads[-1]["type"], "category"
                break
        if itype is None and heads:
            best = max(heads, key=lambda m: (self.rank(m["type"]), -m["at"]))
            itype, source = best["type"], "title"
        if itype is None:
            desc_heads = [m for m in self.mentions(desc.split()) if m["role"] == "head"]
            if desc_heads:
                best = max(desc_heads, key=lambda m: (self.rank(m["type"]), -m["at"]))
                itype, source = best["type"], "description"
        attr_text = norm(" ".join(f"{v}" for k, v in attrs.items() if isinstance(v, str)))[:600]
        compat_text = norm(" ".join(str(v) for k, v in attrs.items() if "compat" in k))
        text_t = title_t + category.split() + desc.split()
        colour_src = norm(" ".join(str(v) for k, v in attrs.items() if "colour" in k or "color" in k))
        colours = {c for _, _, c in self.colour_vocab.find(colour_src.split() or title_t)}
        qty = self.quantities(" ".join(title_t + desc.split()))
        if isinstance(attrs.get("display_diagonal"), (int, float)):
            qty.append(("size_inch", float(attrs["display_diagonal"])))
        return {
            "type": itype, "source": source, "title": title,
            "types": {m["type"] for m in heads} | ({itype} if itype else set()),
            "compat": {m["type"] for m in mentions if m["role"] in ("modifier", "compat")},
            "lines": {m["line"] for m in self.mentions(text_t + compat_text.split()) if m["line"]},
            "brand": next((b for s, _, b in self.brand_vocab.find(brand_n.split()) if s == 0), None) or
                     (brand_n.replace(" ", "_") or None),  # a brand the rule file does not list keeps its own name
            "brand_n": brand_n,
            "brands_named": {b for _, _, b in self.brand_vocab.find(title_t + compat_text.split())},
            "colours": colours, "quantities": qty,
            "features": self.features_in(text_t + attr_text.split()),
            "opposites": {o for _, _, o in self.opposite_vocab.find(text_t + attr_text.split())},
            "words": {stem(t) for t in text_t}, "joined": "".join(title_t),
            "title_words": {stem(t) for t in title_t + category.split()},
            "title_features": self.features_in(title_t + category.split()),
        }

    # ------------------------------------------------------------------ judging
    def relation(self, q: str, item: dict, q_compat: list) -> tuple[str, str]:
        """(category verdict, rule id) for query type q against the item."""
        i = item["type"]
        if i == q or q in self.ancestors(i):
            return "match", "relation.same_type"
        if any((t == q or q in self.ancestors(t)) and self.rank(t) >= self.rank(i) for t in item["types"]):
            return "match", "relation.also_named"  # "notebook case ... Backpack case"; not the laptop a lock is for
        if i in self.ancestors(q):
            return "match", "relation.more_general"  # a plain "case" for "camera case": the exact type is unverified
        q_family, i_family = {q, *self.ancestors(q)}, {i, *self.ancestors(i)}
        if self.kind(i) != "device" and (q_family & set(self.types.get(i, {}).get("for", [])) or
                                         q_family & item["compat"]):
            return self.accessory_verdict, "relation.accessory_of_query"
        if i_family & set(self.types.get(q, {}).get("for", [])) or i_family & set(q_compat):
            return self.accessory_verdict, "relation.main_product_of_query"
        parent = self.types.get(q, {}).get("parent")
        if parent and parent == self.types.get(i, {}).get("parent"):
            return "related", "relation.sibling"
        return "mismatch", "relation.other_type"

    def _brand_status(self, brand: str, item: dict) -> str:
        if item["brand"] == brand:
            return "ok"
        if brand in item["brands_named"]:
            return "compat" if self.kind(item["type"] or "") != "device" else "unknown"  # accessory "for Apple"
        return "violated" if item["brand_n"] else "unknown"

    def _line_status(self, line: str, item: dict) -> str:
        """ok if the item names the line; violated if it is another brand's device of that type, or names
        another line of the same type (a case "for Galaxy S10" for "iphone case")."""
        if line in item["lines"] or line.replace(" ", "") in item["joined"]:
            return "ok"
        spec = self.lines[line]
        if item["type"] == spec["type"] and spec.get("brand") and item["brand"] not in (None, spec["brand"]):
            return "violated"
        same_type = {self.lines[n]["type"] for n in item["lines"] if n in self.lines}
        return "violated" if spec["type"] in same_type else "unknown"

    def _checks(self, q: _Query, item: dict, with_type: bool) -> list[tuple[str, str, str]]:
        """(rule id, status ok|unknown|violated, note) for each constraint the query states."""
        out = []
        if q.brand and with_type:
            status = self._brand_status(q.brand, item)  # an accessory "for" the brand satisfies it
            out.append((f"brand.{q.brand}", "ok" if status == "compat" else status,
                        f"brand {q.brand}" + (" (compatible)" if status == "compat" else "")))
        for line in q.lines:
            if with_type:
                out.append((f"line.{line}", self._line_status(line, item), f"line {line}"))
        for c in sorted(q.colours):
            status = "unknown" if not item["colours"] else "ok" if c in item["colours"] else "violated"
            out.append((f"colour.{c}", status, f"colour {c} (item: {', '.join(sorted(item['colours'])) or '?'})"))
        for dim, value in q.quantities:
            values = [v for d, v in item["quantities"] if d == dim]
            hit = any(abs(v - value) <= 0.03 * value for v in values)
            status = "ok" if hit else "violated" if values else "unknown"
            out.append((f"quantity.{dim}", status, f"{dim.split('_')[0]} {value:g}"))
        for f in q.features:
            if with_type:
                status = "ok" if f in item["features"] else \
                    "violated" if self.opposites.get(f, set()) & item["opposites"] else "unknown"
                out.append((f"feature.{f}", status, f"feature {f}"))
        for kind, value in q.negated:
            hit = (kind == "brand" and (item["brand"] == value or value in item["brands_named"])) or \
                  (kind == "type" and value in item["types"]) or (kind == "colour" and value in item["colours"]) or \
                  (kind == "feature" and value in item["features"]) or (kind == "word" and value in item["words"])
            out.append((f"negation.{value}", "violated" if hit else "ok", f"excludes {value}"))
        for w in q.words:
            if with_type:
                hit = w in item["words"] or (any(ch.isdigit() for ch in w) and w in item["joined"])
                status = "ok" if hit else "violated" if any(ch.isdigit() for ch in w) else "unknown"
                out.append((f"word.{w}", status, f"word {w!r}"))
        return out

    def _query_for(self, query: str, item: dict) -> _Query:
        """The query as read for this item: a brand the rule file may not list counts when the item has it."""
        q = self.read_query(field_text({"q": query}, "q"))
        if item["brand_n"] and q.brand is None and f" {item['brand_n']} " in f" {' '.join(q.tokens)} ":
            brand_words = {stem(t) for t in item["brand_n"].split()}
            q = _replace(q, brand=item["brand"], words=[w for w in q.words if w not in brand_words])
        return q

    def linked_slugs(self, query: str, product) -> dict[str, list[str]]:
        """The ids this knowledge base links to the pair's text, per type step: the values a model decoding with
        ``prompt.slugs: linked`` may name there. Query: each type named in the query, each type one of them
        specialises to for another ("iphone case": phone_case), the brand it names, its remaining words as one
        slug. Item: each type named in its category, title or description. A step whose text links none of these
        has one candidate, unknown (what the rules write then). These are the candidates, not the choice: which
        one the rules take (the head noun, the category before the title, the highest-ranked kind) is the
        model's to learn."""
        item = self._read_item(product)
        q = self._query_for(query, item)
        named = [m["type"] for m in self.mentions(q.tokens)]
        intents = set(named) | {self.specialise(h, [t]) for h in named for t in named if t != h}
        intents |= {b for b in (q.brand, *(b for _, _, b in self.brand_vocab.find(q.tokens))) if b}
        intents |= {"_".join(q.words + q.features)} - {""}
        texts = [norm(s).split() for s in re.split(r"[>|/]", field_text(product, "category"))]
        texts += [norm(field_text(product, "title")).split(), norm(product.get("description"))[:400].split()]
        types = {m["type"] for t in texts for m in self.mentions(t)}
        return {"query": sorted(intents) or ["unknown"], "item": sorted(types) or ["unknown"]}

    def judge(self, query: str, product) -> RuleJudgment:
        item = self._read_item(product)
        q = self._query_for(query, item)
        fired, notes = [], {}
        intent = q.type or q.brand or "_".join(q.words + q.features) or "unknown"
        wants = [_a(q.type) if q.type else "no product type"] + ([f"brand {q.brand}"] if q.brand else [])
        wants += [f"{c}" for c in sorted(q.colours)] + [f"{d.split('_')[0]} {v:g}" for d, v in q.quantities]
        wants += [f"feature {f}" for f in q.features] + [f"not {v}" for _, v in q.negated]
        # notes lead with their content (a short note budget cuts the tail, never the point)
        notes["query"] = ("wants " + ", ".join(wants) + (f"; other words: {' '.join(q.words)}" if q.words else ""))
        itype = item["type"] or "unknown"
        notes["item"] = (f"{_a(itype)}" + (f" by {item['brand_n']}" if item["brand_n"] else "") +
                         (f", read from its {item['source']}" if item["source"] else ", type not found") +
                         f": {item['title'][:60]}")
        if q.type:
            fired.append(f"type.{q.type}")
            if item["type"]:
                category, rule = self.relation(q.type, item, q.modifiers)
                notes["category"] = RELATION_NOTES[rule].format(q=_a(q.type), i=_a(itype))
            elif q.type in item["compat"]:
                category, rule = self.accessory_verdict, "relation.accessory_of_query"
                notes["category"] = f"the item is made for {_a(q.type)}, it is not one"
            else:
                names = {norm(n) for n in self.types.get(q.type, {}).get("names", [])}
                named = any(f" {n} " in f" {' '.join(norm(item['title']).split())} " for n in names)
                category, rule = ("match", "lexical.type_named") if named else ("unclear", "lexical.type_unknown")
                notes["category"] = f"item type unknown; the title {'names' if named else 'never names'} {_a(q.type)}"
            fired.append(rule)
            checks = self._checks(q, item, with_type=True)
            if rule == "relation.more_general":  # the general type holds, the specific one is not shown
                checks += [(f"type.{itype}", "ok", f"is a {itype.replace('_', ' ')}"),
                           (f"type.{q.type}.exact", "unknown", f"{q.type.replace('_', ' ')} not shown")]
        else:  # no product type: brand, features and words carry the intent
            terms, brand_status = [], self._brand_status(q.brand, item) if q.brand else None
            if q.brand:
                terms.append((f"brand.{q.brand}", "ok" if brand_status == "compat" else brand_status))
            terms += [(f"feature.{f}", "ok" if f in item["title_features"] else "unknown") for f in q.features]
            for w in q.words:
                terms.append((f"word.{w}", "ok" if w in item["title_words"] or (any(c.isdigit() for c in w) and
                                                                                w in item["joined"]) else "unknown"))
            share = sum(s == "ok" for _, s in terms) / len(terms) if terms else 0.0
            category = "match" if share == 1.0 else "mismatch"  # AND semantics, like a lexical search engine
            fired += [rid for rid, s in terms if s == "ok"] + ["lexical.coverage"]
            notes["category"] = f"no product type in the query; {share:.0%} of its terms found in the item"
            if brand_status == "compat" and not (q.features or q.words):  # only a brand, and an accessory for it
                category = self.accessory_verdict
                fired.append("relation.accessory_of_brand")
                notes["category"] = f"the query wants {q.brand} products; the item is an accessory for them"
            checks = self._checks(q, item, with_type=False)
        statuses = [s for _, s, _ in checks]
        if "violated" in statuses:
            attribute = "mismatch"
        elif all(s == "ok" for s in statuses):
            attribute = "match"
        else:
            attribute = "partial" if "ok" in statuses else "unclear"
        fired += [f"{rid}.{s}" for rid, s, _ in checks]
        notes["attribute"] = "; ".join(f"{n}: {s}" for _, s, n in checks) or "no constraints"
        verdicts = {"query": intent, "item": itype, "category": category, "attribute": attribute}
        grade = grade_implied_by_verdicts(verdicts)
        verdicts["verdict"] = f"L{grade}"
        notes["verdict"] = f"category {category}, attributes {attribute} -> L{grade}"
        return RuleJudgment(grade=grade, verdicts=verdicts, notes=notes, fired=fired)


@lru_cache(maxsize=4)
def _engine(rules: str | None) -> RuleEngine:
    return RuleEngine.from_yaml(rules)


def pair_slugs(prompt_cfg, queries, products, rules=None) -> list[dict] | None:
    """Each (query, product)'s :meth:`RuleEngine.linked_slugs` when ``prompt_cfg.slugs`` is "linked" -- what a
    batch's completion grammar is bound to (format.grammar.CompletionGrammar.bind) -- else None."""
    if prompt_cfg.slugs != "linked":
        return None
    engine = _engine(str(rules) if rules else None)
    return [engine.linked_slugs(q, p) for q, p in zip(queries, products)]


def link_examples(prompt_cfg, examples: list[dict], rules=None) -> list[dict]:
    """``examples`` (train.examples' dicts) with each one's pair_slugs under "linked_slugs" where it carries its
    "query" and "product": what the samplers bind their grammar to (the same dicts, changed in place)."""
    known = [ex for ex in examples if "query" in ex and "product" in ex]
    for ex, slugs in zip(known, pair_slugs(prompt_cfg, [ex["query"] for ex in known],
                                           [ex["product"] for ex in known], rules) or []):
        ex["linked_slugs"] = slugs
    return examples


def _a(type_id: str | None) -> str:
    name = (type_id or "unknown").replace("_", " ")
    return ("an " if name[0] in "aeiou" else "a ") + name


def _replace(q: _Query, **changes) -> _Query:
    return _Query(**{**q.__dict__, **changes})


def _attributes(value) -> dict:
    try:
        out = product_attributes(value)
    except (ValueError, TypeError):
        return {}
    return out if isinstance(out, dict) else {}
