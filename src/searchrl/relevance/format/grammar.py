"""Grammar-constrained decoding: a completion that always has prompt.py's line grammar.

A relevance completion is a fixed skeleton with a few places where the model decides:

    <L3>                               the grade token: the model's choice among the four
    query: NOTE => intent: SLUG        NOTE: free text (or "-" when the format has no notes)
    item: NOTE => type: SLUG           SLUG: [a-z0-9_]+, chosen token by token
    category: NOTE => category: VALUE  VALUE: one of prompt.ALLOWED_VALUES, chosen token by token
    attribute: NOTE => attribute: VALUE
    verdict: NOTE => grade: L3         the grade token restated (cot_first: chosen, and the token follows it)

:class:`CompletionGrammar` turns that into a per-row state machine over token ids, which the one
decode loop (``rl.rollout.sample_groups``) applies to each step's logits: in a forced stretch only
the next skeleton token is allowed; in a choice only the tokens that continue a valid value; in a
note any token that cannot break a line ("\\n", "=>", a grade token, EOS), until the model chooses
the token that closes the note (or the note reaches ``max_note_tokens``). The model's own
probabilities decide every choice, so greedy decoding is still the model's argmax *within* the
grammar -- the same idea as llama.cpp grammars or outlines' regex-guided generation, written here
for this one grammar (no regex compiler: its states are the five lines).

The skeleton is tokenized piece by piece at whitespace boundaries ("\\n", "query:", " -", " =>
intent:", " speaker"), which is where both WordPiece and byte-level BPE pre-tokenizers split, so
the forced tokens are the ones a whole teacher completion tokenizes into
(tests/test_grammar.py checks both tokenizers).

A type step's slug is one of a vocabulary when the caller gives one (``slugs``: the rule knowledge base's
type and brand ids, which relevance.rules.kb.completion_grammar passes for ``prompt.slugs: rules``): a token
trie over the ids, so the model names a type it knows -- the way a product-category model picks a node of
its taxonomy -- and never invents one ("screen_screen"); without one, any run of slug tokens, at most
``max_slug_tokens`` long. Greedy decoding names the intent whole (``prompt.intent_beam``): the state lists the
rows about to name one (:meth:`GrammarState.slug_starts`), the decode loop's beam over the trie
(rl.rollout.trie_beam_search) picks the id most probable as a whole, and the row then writes it
(:meth:`GrammarState.commit`).

A grammar bound to a batch of prompts (:meth:`CompletionGrammar.bind`, ``prompt.slugs: linked``) gives each row
a vocabulary of its own: the ids the knowledge base links to that pair's text (relevance.rules.engine's
``linked_slugs``: the types and brands its query and its product name, the query's own words; unknown where its
text names none), the way an entity linker hands a tagger its candidates. The model still chooses among them.

Simplifies: one grammar per order; RL treats forced tokens as the model's own samples (their log-probabilities
enter the GRPO ratio like any other token's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from searchrl.relevance.format.prompt import ALLOWED_VALUES, GRADE_TOKENS, STEPS, VERDICT_KEYS, slug_of

_SLUG_PIECE = re.compile(r"[a-z0-9_]+")


@dataclass
class _Vocab:
    """Per-token classes, as boolean masks over the model's vocabulary."""
    note_ok: torch.Tensor  # [V] may appear inside a note
    slug_first: torch.Tensor  # [V] may start a slug value
    slug_next: torch.Tensor  # [V] may continue a slug value (after a word piece)
    slug_after_underscore: torch.Tensor  # [V] may follow "_" (WordPiece: a new word)


def _token_strings(tokenizer) -> tuple[list[str], bool]:
    """(each id's text as it joins onto the text before it, wordpiece?). WordPiece: "##x" -> "x" with no space,
    a word -> " word"; byte-level BPE: the decoded token as it is (" laptop")."""
    n = len(tokenizer)
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    backend = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    wordpiece = hasattr(tokenizer, "wordpiece_tokenizer") or type(backend).__name__ == "WordPiece"
    if wordpiece:
        specials = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
        return [t if t in specials else t[2:] if t.startswith("##") else " " + t for t in raw], True
    return tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False), False


@lru_cache(maxsize=8)
def _vocab_classes(tokenizer, size: int) -> _Vocab:
    texts, wordpiece = _token_strings(tokenizer)
    raw = tokenizer.convert_ids_to_tokens(list(range(len(texts))))  # WordPiece: "##" marks a continuation
    special = set(tokenizer.all_special_ids)
    note_ok = torch.zeros(size, dtype=torch.bool)
    slug_first, slug_next, after_us = (torch.zeros(size, dtype=torch.bool) for _ in range(3))
    for i, text in enumerate(texts[:size]):
        if i in special or not text or "\n" in text or "=>" in text or "<L" in text or "\r" in text:
            continue
        note_ok[i] = text.strip() != "" or text == " "
        body = text[1:] if text.startswith(" ") else None
        if body and _SLUG_PIECE.fullmatch(body) and body != "_":
            slug_first[i] = True
            after_us[i] = wordpiece  # WordPiece: "laptop _ bag" -- the word after "_" is a new word
        if not wordpiece and _SLUG_PIECE.fullmatch(text):
            slug_next[i] = after_us[i] = True  # BPE: "bag" glued on
        if wordpiece and raw[i].startswith("##") and _SLUG_PIECE.fullmatch(text):
            slug_next[i] = True
        if wordpiece and text == " _":
            slug_next[i] = True
    return _Vocab(note_ok, slug_first, slug_next, after_us)


def grammar_for(tokenizer, prompt_cfg, slugs: dict | None = None) -> "CompletionGrammar | None":
    """The grammar a model with this prompt config decodes under (None when ``prompt_cfg.constrained`` is off):
    notes are free text up to about ``max_note_chars`` when the format has notes, else the fixed "-";
    ``slugs``: {"query": ids, "item": ids}, the values each type step may name (required unless
    ``prompt_cfg.slugs == "free"``; relevance.rules.kb.completion_grammar passes the knowledge base's; "linked"
    narrows them per pair when a batch binds the grammar)."""
    if not prompt_cfg.constrained:
        return None
    if prompt_cfg.slugs != "free" and slugs is None:
        raise ValueError(f'prompt.slugs is "{prompt_cfg.slugs}": pass the slug vocabulary '
                         '(relevance.rules.kb.completion_grammar)')
    return CompletionGrammar(tokenizer, prompt_cfg.order, free_notes=prompt_cfg.max_note_chars > 0,
                             max_note_tokens=max(4, prompt_cfg.max_note_chars // 2),  # digits tokenize one by one
                             slugs=slugs if prompt_cfg.slugs != "free" else None,
                             beams={"query": prompt_cfg.intent_beam})


@dataclass
class _SlugTrie:
    """A slug vocabulary as token sequences: the tokens that may follow each prefix, and the whole slugs."""
    continuations: dict  # prefix tuple -> sorted list of ids that continue some slug
    whole: frozenset  # the slugs' token tuples
    rest: dict  # prefix tuple -> the fewest tokens that complete it to a whole slug
    longest: int  # tokens in the longest slug


def _slug_trie(grammar: CompletionGrammar, slugs) -> _SlugTrie | None:
    """The trie of ``slugs`` as ``grammar``'s tokenizer writes them after " => key:"; slugs with a token the
    tokenizer cannot write (its unknown token: a trimmed vocabulary) are left out; None when none is left."""
    unk = grammar.tok.unk_token_id
    seqs = {grammar._piece(" " + slug_of(s)) for s in slugs}
    seqs = {q for q in seqs if q and unk not in q}
    if not seqs:
        return None
    nxt: dict[tuple, set] = {}
    rest: dict[tuple, int] = {}
    for q in seqs:
        for i in range(len(q) + 1):
            rest[q[:i]] = min(rest.get(q[:i], len(q)), len(q) - i)
            if i < len(q):
                nxt.setdefault(q[:i], set()).add(q[i])
    return _SlugTrie({k: sorted(v) for k, v in nxt.items()}, frozenset(seqs), rest, max(map(len, seqs)))


class CompletionGrammar:
    """The completion grammar of ``order`` over ``tokenizer``'s ids; :meth:`start` gives a decoding state."""

    def __init__(self, tokenizer, order: str = "label_first", free_notes: bool = True, max_note_tokens: int = 24,
                 max_slug_tokens: int = 8, slugs: dict | None = None, beams: dict | None = None):
        self.tok, self.order, self.free_notes = tokenizer, order, free_notes
        self.beams = beams or {}  # step -> width of the search that names its slug whole (1: token by token)
        self.max_note_tokens, self.max_slug_tokens = max_note_tokens, max_slug_tokens
        self.grade_ids = tokenizer.convert_tokens_to_ids(list(GRADE_TOKENS))
        self.eos = tokenizer.eos_token_id
        self._pieces: dict[str, tuple[int, ...]] = {}
        self.underscore = (self._piece(" _") or (None,))[0]
        # step -> its slug trie, or None: free slugs
        self.tries = {step: _slug_trie(self, (slugs or {}).get(step) or ()) for step in ("query", "item")}
        self._linked: dict[tuple, _SlugTrie | None] = {}  # a row's own candidates -> their trie

    def bind(self, linked: list[dict | None] | None) -> CompletionGrammar | _BoundGrammar:
        """This grammar for one batch of prompts where prompt i's type steps name only ``linked[i][step]`` (its
        candidates; a step or a prompt left out keeps the grammar's vocabulary); the decode's rows repeat each
        prompt ``rows // len(linked)`` times, as rl.rollout.sample_groups lays them out."""
        if not linked or all(c is None for c in linked):
            return self
        rows = []
        for candidates in linked:
            own = {}
            for step, slugs in (candidates or {}).items():
                key = tuple(sorted(set(slugs))) or ("unknown",)
                if key not in self._linked:  # none the tokenizer can write: unknown, never free slugs
                    self._linked[key] = _slug_trie(self, key) or _slug_trie(self, ("unknown",))
                own[step] = self._linked[key]
            rows.append(own)
        return _BoundGrammar(self, rows)

    def _piece(self, text: str) -> tuple[int, ...]:
        """``text``'s token ids, tokenized alone (at a whitespace boundary: as inside a whole completion)."""
        if text not in self._pieces:
            self._pieces[text] = tuple(self.tok(text, add_special_tokens=False)["input_ids"])
        return self._pieces[text]

    def program(self) -> list[tuple]:
        """The completion as segments: ("grade",) | ("force", ids) | ("note",) | ("slug", trie or None, beam)
        | ("value", [ids...])."""
        segments: list[tuple] = [("grade",)] if self.order == "label_first" else []
        for k, step in enumerate(STEPS):
            head = ("\n" if k or self.order == "label_first" else "") + f"{step}:"
            segments.append(("force", self._piece(head)))
            segments.append(("note",) if self.free_notes else ("force", self._piece(" -")))
            segments.append(("force", self._piece(f" => {VERDICT_KEYS[step]}:")))
            if step in ("query", "item"):
                segments.append(("slug", self.tries[step], self.beams.get(step, 1), step))
            elif step == "verdict" and self.order == "label_first":
                segments.append(("restate",))  # " L<grade>", the grade token's value
            else:  # cot_first's verdict value is the grade decision itself: the token after the lines restates it
                segments.append(("value", [self._piece(f" {v}") for v in ALLOWED_VALUES[step]], step == "verdict"))
        if self.order == "cot_first":
            segments += [("force", self._piece("\n")), ("regrade",)]
        return segments + [("eos",)]

    def start(self, rows: int, vocab_size: int) -> "GrammarState":
        return GrammarState(self, rows, _vocab_classes(self.tok, vocab_size))


class _BoundGrammar:
    """A CompletionGrammar with each prompt's own slug tries (:meth:`CompletionGrammar.bind`)."""

    def __init__(self, grammar: CompletionGrammar, tries: list[dict]):
        self.grammar, self.tries = grammar, tries

    def start(self, rows: int, vocab_size: int) -> GrammarState:
        if rows % len(self.tries):
            raise ValueError(f"{rows} rows for {len(self.tries)} prompts: bind the grammar to the decoded batch")
        repeat = rows // len(self.tries)
        return GrammarState(self.grammar, rows, _vocab_classes(self.grammar.tok, vocab_size),
                            [self.tries[r // repeat] for r in range(rows)])


class _Cursor:
    """One row's position in the program: segment index, tokens into it, and what it has chosen so far."""

    def __init__(self, program: list[tuple], tries: dict | None = None):
        # a type step's slug segment with this row's own trie (a bound grammar), else the program's
        self.program = [seg[:1] + (tries[seg[3]],) + seg[2:] if seg[0] == "slug" and seg[3] in (tries or {})
                        else seg for seg in program]
        self.seg, self.pos, self.grade = 0, 0, None
        self.value: tuple = ()  # tokens of the current value/slug so far
        self.commit: tuple = ()  # the whole slug a search chose for the current segment, if any
        self.finished = False


def _min_tokens(segment: tuple, grammar: CompletionGrammar) -> int:
    """The fewest tokens a whole segment can take (a note or slug: one; a value: its shortest candidate)."""
    kind = segment[0]
    if kind == "force":
        return len(segment[1])
    if kind in ("value",):
        return min(len(v) for v in segment[1])
    if kind == "restate":
        return len(grammar._piece(" L1"))
    if kind == "slug" and segment[1] is not None:
        return min(len(v) for v in segment[1].whole)
    return 1  # grade, regrade, note, free slug, eos


class GrammarState:
    """The grammar state of a batch of rows being decoded: ``mask`` the logits, then ``advance`` with the choice."""

    def __init__(self, grammar: CompletionGrammar, rows: int, vocab: _Vocab, tries: list[dict] | None = None):
        self.g, self.vocab = grammar, vocab
        program = grammar.program()
        self.rows = [_Cursor(program, tries[r] if tries else None) for r in range(rows)]
        # after[i]: the fewest tokens the segments after i take; a note or slug closes early when the token
        # budget left is only enough for them (a completion cut short would not parse)
        sizes = [_min_tokens(s, grammar) for s in program]
        self.after = [sum(sizes[i + 1:]) for i in range(len(program))]

    def _allowed(self, c: _Cursor, budget: int | None) -> list[int] | tuple[torch.Tensor, int, bool]:
        """Allowed next ids for cursor c, ``budget`` tokens left: a list of ids, or (a [V] bool mask of a token
        class, the closing token, whether it is allowed too)."""
        g, seg = self.g, c.program[c.seg]
        kind = seg[0]
        if kind == "grade":
            return list(g.grade_ids)
        if kind == "force":
            return [seg[1][c.pos]]
        if kind == "eos":
            return [g.eos]
        if kind in ("value", "restate", "regrade"):
            fits = [v for v in self._candidates(c) if v[:len(c.value)] == c.value]
            if budget is not None:  # a longer value than the budget leaves room for: only if none is shorter
                short = [v for v in fits if len(v) - len(c.value) <= budget - self.after[c.seg]]
                fits = short or [min(fits, key=len)]
            return sorted({v[len(c.value)] for v in fits})
        closing = self._next_token(c)  # the token that ends the note or the slug
        out_of_budget = budget is not None and budget <= self.after[c.seg]
        if kind == "note":
            if c.pos >= g.max_note_tokens or (out_of_budget and c.pos > 0):
                return [closing]
            return self.vocab.note_ok, closing, c.pos > 0  # a note has at least one token
        if seg[1] is not None and c.commit:  # a search chose the whole slug: its next token, then the closing one
            return [c.commit[c.pos]] if c.pos < len(c.commit) else [closing]
        if seg[1] is not None:  # a slug of the vocabulary: what continues one, or the closing token after a whole one
            return self._slug_allowed(seg[1], c.value, closing, None if budget is None else budget - self.after[c.seg])
        last_underscore = c.value and c.value[-1] == g.underscore
        if c.pos >= g.max_slug_tokens or (out_of_budget and c.pos > 0 and not last_underscore):
            return [closing]
        if c.pos == 0:
            return self.vocab.slug_first, closing, False
        return (self.vocab.slug_after_underscore if last_underscore else self.vocab.slug_next), closing, \
            not last_underscore

    @staticmethod
    def _slug_allowed(trie: _SlugTrie, value: tuple, closing: int, room: int | None) -> list[int]:
        """The tokens that continue ``value`` to a slug of ``trie`` -- only those that can finish within ``room``
        tokens when there is a budget (the quickest one if none can) -- and ``closing`` once it is whole."""
        ids, whole = list(trie.continuations.get(value, ())), value in trie.whole
        if whole and (not ids or (room is not None and room <= 0)):
            return [closing]
        if room is not None and ids:
            fits = [t for t in ids if 1 + trie.rest[value + (t,)] <= room]
            ids = fits if fits or whole else [min(ids, key=lambda t: trie.rest[value + (t,)])]
        return ids + [closing] * whole

    def slug_starts(self, budget: int | None = None) -> list[tuple]:
        """``(row, trie, closing token, beam)`` for each row about to name a slug of a vocabulary whose step has
        a beam (CompletionGrammar's ``beams``), where any of its slugs fits the ``budget`` of tokens left: the
        rows whose slug a search (rl.rollout.trie_beam_search) chooses whole."""
        out = []
        for r, c in enumerate(self.rows):
            seg = c.program[c.seg]
            if c.finished or seg[0] != "slug" or seg[1] is None or seg[2] < 2 or c.pos or c.commit:
                continue
            if budget is None or budget - self.after[c.seg] >= seg[1].longest:
                out.append((r, seg[1], self._next_token(c), seg[2]))
        return out

    def commit(self, row: int, slug: tuple) -> None:
        """Row ``row`` writes ``slug`` (token ids of a whole slug of its vocabulary) at its current slug."""
        self.rows[row].commit = tuple(slug)

    def _candidates(self, c: _Cursor) -> list[tuple]:
        kind = c.program[c.seg][0]
        if kind == "value":
            return c.program[c.seg][1]  # in ALLOWED_VALUES order, so a verdict's index + 1 is its grade
        if kind == "restate":
            return [self.g._piece(f" L{c.grade}")]
        return [(self.g.grade_ids[c.grade - 1],)]  # regrade: the token the verdict line named

    def _next_token(self, c: _Cursor) -> int:
        nxt = c.program[c.seg + 1]
        return nxt[1][0] if nxt[0] == "force" else self.g.eos

    def mask(self, logits: torch.Tensor, budget: int | None = None) -> torch.Tensor:
        """[N, V] logits with every token the grammar forbids at each row set to -inf (finished rows untouched);
        ``budget``: the tokens left to decode, this one included."""
        out = logits.clone()
        for r, c in enumerate(self.rows):
            if c.finished:
                continue
            allowed = self._allowed(c, budget)
            keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
            if isinstance(allowed, list):
                keep[allowed] = True
            else:
                token_class, closing, closing_ok = allowed
                keep[: token_class.shape[0]] = token_class.to(logits.device)
                keep[closing] = closing_ok
            out[r].masked_fill_(~keep, float("-inf"))
        return out

    def advance(self, tokens: torch.Tensor) -> None:
        """Move each unfinished row past its chosen token (one per row, [N])."""
        for c, tok in zip(self.rows, tokens.tolist()):
            if not c.finished:
                self._step(c, tok)

    def _step(self, c: _Cursor, tok: int) -> None:
        kind = c.program[c.seg][0]
        if kind == "grade":
            c.grade = self.g.grade_ids.index(tok) + 1
            return self._next(c)
        if kind == "force":
            c.pos += 1
            return self._next(c) if c.pos == len(c.program[c.seg][1]) else None
        if kind == "eos":
            c.finished = True
            return None
        if kind in ("note", "slug") and tok == self._next_token(c):
            self._next(c)  # the closing token is the next segment's first: consume it there
            return self._step(c, tok)
        c.pos += 1
        c.value += (tok,)
        if kind in ("value", "restate", "regrade") and c.value in self._candidates(c):
            if kind == "value" and c.program[c.seg][2]:  # cot_first's verdict line: the grade is chosen here
                c.grade = self._candidates(c).index(c.value) + 1
            self._next(c)
        return None

    def _next(self, c: _Cursor) -> None:
        c.seg, c.pos, c.value, c.commit = c.seg + 1, 0, (), ()
