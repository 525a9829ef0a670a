"""Sampling G completions per prompt with the prompt encoded once: the rollout of GRPO and of pass@N.

:func:`sample_groups` left-pads a batch of prompts, runs them through the model once
(prefill), then repeats each prompt's KV cache G times and decodes the B*G
continuations together, one token per step, with temperature and top-p (nucleus)
sampling from a seeded ``torch.Generator``. ``generate(num_return_sequences=G)``
would instead copy every prompt G times before the prefill and pay for it G times.

Rows stop at the tokenizer's EOS (kept, so the model learns to stop) or at
``max_new_tokens``; finished rows keep decoding padding (masked out) until every
row is done, which keeps shapes static.

Greedy decoding under a grammar whose choice is one of a vocabulary of token sequences (a type step naming
a knowledge-base id) may search instead of going token by token: :func:`trie_beam_search` keeps the
``beam`` most probable prefixes over the vocabulary's trie, on branches of the rows' KV cache, and the
grammar then writes the id most probable as a whole. Token by token, "flat screen tv" starts with "screen"
and can then only end in an id that begins with it.

Simplifies: no repetition penalty, no stop strings, top-k only through top-p; the
decode loop is plain PyTorch over a ``DynamicCache`` (no paged or static cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, position_ids), each [B, T], padded on the left.

    Position ids count real tokens only, so a padded row sees the same positions as
    the unpadded sequence would.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # [B, T]
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # [B, T]
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # [B, T]
    return ids, mask, pos


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # [B*G, P] left-padded prompts, each repeated G times (consecutive rows)
    prompt_mask: torch.Tensor  # [B*G, P]
    completion_ids: torch.Tensor  # [B*G, T] right-padded with pad_id after EOS
    completion_mask: torch.Tensor  # [B*G, T] 1 for sampled tokens up to and including EOS
    group_size: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B*G] or [B*G, T] per-row data a
    #   recipe attaches (guided replay: which rows are guided, their behaviour log-probs); rows follow take/concat

    def take(self, rows: torch.Tensor, group_size: int | None = None) -> "Rollout":
        """The given rows (in that order), optionally regrouped."""
        return Rollout(self.prompt_ids[rows], self.prompt_mask[rows], self.completion_ids[rows],
                       self.completion_mask[rows], group_size or self.group_size,
                       {k: v[rows] for k, v in self.extras.items()})

    def texts(self, tokenizer) -> list[str]:
        """Decoded completions (special tokens such as grade tokens kept; padding and EOS dropped)."""
        out = []
        for ids, m in zip(self.completion_ids, self.completion_mask):
            toks = [t for t, keep in zip(ids.tolist(), m.tolist()) if keep and t != tokenizer.eos_token_id]
            out.append(tokenizer.decode(toks, skip_special_tokens=False).strip())
        return out


def concat_rollouts(parts: list[Rollout], pad_id: int, group_size: int) -> Rollout:
    """Rows of several rollouts stacked: prompts re-padded on the left, completions on the right."""
    p = max(r.prompt_ids.shape[1] for r in parts)
    t = max(r.completion_ids.shape[1] for r in parts)

    def pad(x, width, value, left):
        extra = width - x.shape[1]
        return torch.nn.functional.pad(x, (extra, 0) if left else (0, extra), value=value)

    extras = {}
    for name in dict.fromkeys(k for r in parts for k in r.extras):  # a part without an extra contributes zeros
        like = next(r.extras[name] for r in parts if name in r.extras)
        rows = []
        for r in parts:
            shape = (len(r.prompt_ids),) + ((r.completion_ids.shape[1],) if like.ndim == 2 else ())
            x = r.extras.get(name, torch.zeros(shape, dtype=like.dtype))
            rows.append(pad(x, t, 0, False) if x.ndim == 2 else x)
        extras[name] = torch.cat(rows)
    return Rollout(torch.cat([pad(r.prompt_ids, p, pad_id, True) for r in parts]),
                   torch.cat([pad(r.prompt_mask, p, 0, True) for r in parts]),
                   torch.cat([pad(r.completion_ids, t, pad_id, False) for r in parts]),
                   torch.cat([pad(r.completion_mask, t, 0, False) for r in parts]), group_size, extras)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits with everything outside the smallest set of tokens holding top_p of the probability set to -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V]
    probs = sorted_logits.softmax(-1)
    # drop a token when the tokens before it already hold top_p (the most likely token is always kept)
    drop = (probs.cumsum(-1) - probs) >= top_p  # [N, V]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


@torch.no_grad()
def sample_groups(model, tokenizer, prompts: list[list[int]], group_size: int, max_new_tokens: int,
                  temperature: float = 1.0, top_p: float = 1.0, generator: torch.Generator | None = None,
                  min_new_tokens: int = 0, grammar=None) -> Rollout:
    """``group_size`` sampled completions for each tokenized prompt; see the module docstring.

    temperature 0 means greedy. ``generator`` (a CPU generator) makes sampling
    reproducible independently of the global RNG. ``min_new_tokens``: EOS is not sampled before
    that many tokens (a benchmark's fixed-length decode). ``grammar``: an object with
    ``start(rows, vocab_size)`` returning a state with ``mask(logits)`` and ``advance(tokens)``
    (relevance.format.grammar.CompletionGrammar): each step samples only what it allows.
    """
    from transformers import DynamicCache
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    g = group_size
    ids, mask, pos = left_pad(prompts, tokenizer.pad_token_id)  # [B, P]
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                use_cache=True, logits_to_keep=1)
    rows = torch.arange(len(prompts), device=device).repeat_interleave(g)  # [B*G]: row -> its prompt
    cache = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, rows), layer.values.index_select(0, rows))
                                         for layer in out.past_key_values.layers], config=model.config)
    logits = out.logits[:, -1].index_select(0, rows).float()  # [B*G, V]
    full_mask = mask.to(device).index_select(0, rows)  # [B*G, P]
    # a model that copies words of its prompt (prefix_lm's cot_copy) reads each row's prompt at every step
    copying = {"prompt_ids": ids.to(device).index_select(0, rows), "prompt_mask": mask.to(device).index_select(0, rows)} \
        if getattr(model.config, "cot_copy", False) else {}
    # a model whose completion reads the grade it starts with (prefix_lm's cot_grade) gets each row's first token
    conditioning = getattr(model.config, "cot_grade", False)
    next_pos = pos[:, -1].to(device).index_select(0, rows) + 1  # [B*G]
    n = len(rows)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    tokens, keep = [], []
    state = grammar.start(n, logits.shape[-1]) if grammar is not None else None
    for step in range(max_new_tokens):
        if step < min_new_tokens:
            logits[:, tokenizer.eos_token_id] = float("-inf")
        searching = temperature == 0 and hasattr(state, "slug_starts")
        starts = state.slug_starts(max_new_tokens - step) if searching else []
        if starts:  # rows about to name an id of a vocabulary: the one most probable as a whole
            extra = {**copying, **({"completion_start": tokens[0]} if conditioning else {})}
            branches = _Branches(model, cache, full_mask, next_pos, extra)
            for (r, *_), slug in zip(starts, trie_beam_search(branches, logits, starts)):
                if slug:
                    state.commit(r, slug)
        if state is not None:
            logits = state.mask(logits, max_new_tokens - step)
        if temperature == 0:
            nxt = logits.argmax(-1)  # [B*G]
        else:
            probs = top_p_filter(logits / temperature, top_p).softmax(-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(device)  # [B*G]
        nxt = torch.where(done, torch.full_like(nxt, tokenizer.pad_token_id), nxt)
        if state is not None:
            state.advance(nxt.cpu())  # finished rows are past their EOS: the state skips them
        tokens.append(nxt)
        keep.append(~done)
        done = done | (nxt == tokenizer.eos_token_id)
        if bool(done.all()):
            break
        full_mask = torch.cat([full_mask, (~done | (nxt == tokenizer.eos_token_id)).long()[:, None]], dim=1)
        logits = model(input_ids=nxt[:, None], attention_mask=full_mask, position_ids=next_pos[:, None],
                       past_key_values=cache, use_cache=True, **copying,
                       **({"completion_start": tokens[0]} if conditioning else {})).logits[:, -1].float()
        next_pos = next_pos + 1
    model.train(was_training)
    return Rollout(ids.index_select(0, rows.cpu()), mask.index_select(0, rows.cpu()),
                   torch.stack(tokens, 1).cpu(), torch.stack(keep, 1).long().cpu(), g)


class _Branches:
    """Branches of some decode rows' KV cache, one token longer at each call: ``(sources, tokens)`` -> the
    logits [k, V] after appending ``tokens`` [k] to rows ``sources`` of the previous call (the first call:
    of the decode batch). The decode's own cache is never written."""

    def __init__(self, model, cache, mask: torch.Tensor, next_pos: torch.Tensor, extra: dict):
        self.model, self.cache, self.mask, self.next_pos, self.extra = model, cache, mask, next_pos, extra
        self.origin, self.depth = None, 0  # origin[k]: the decode row branch k descends from

    def __call__(self, sources: list[int], tokens: list[int]) -> torch.Tensor:
        from transformers import DynamicCache
        device = self.mask.device
        src = torch.tensor(sources, device=device)
        self.origin = src if self.origin is None else self.origin.index_select(0, src)
        self.cache = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, src), layer.values.index_select(0, src))
                                                  for layer in self.cache.layers], config=self.model.config)
        self.depth += 1
        k = len(sources)
        mask = torch.cat([self.mask.index_select(0, self.origin),
                          torch.ones(k, self.depth, dtype=self.mask.dtype, device=device)], 1)  # [k, W + depth]
        pos = self.next_pos.index_select(0, self.origin) + self.depth - 1  # [k]
        extra = {key: v.index_select(0, self.origin) for key, v in self.extra.items()}
        return self.model(input_ids=torch.tensor(tokens, device=device)[:, None], attention_mask=mask,
                          position_ids=pos[:, None], past_key_values=self.cache, use_cache=True,
                          **extra).logits[:, -1].float()  # [k, V]


def trie_beam_search(forward, logits: torch.Tensor, starts: list[tuple]) -> list[tuple]:
    """For each ``(row, trie, closing, width)`` of ``starts``, the token sequence of ``trie.whole`` most probable
    as a whole after ``row`` (logits [N, V]: each row's next-token logits): the model's own probability of its
    tokens and of the closing token after them, over the whole vocabulary (renormalised over the tokens the
    trie allows, a prefix with one continuation would get it for free: "screen" + "_protector"). A beam of
    ``width`` prefixes a row; ``forward(sources, tokens)`` extends them (:class:`_Branches`). () for a row
    where no whole sequence was reached."""
    best = [((), float("-inf"))] * len(starts)
    live = [(i, (), 0.0, start[0]) for i, start in enumerate(starts)]  # (start, prefix, log-prob, logits row)
    current = logits
    while live:
        grown: list[list] = [[] for _ in starts]
        for i, prefix, score, at in live:
            trie, closing = starts[i][1:3]
            nxt, whole = list(trie.continuations.get(prefix, ())), prefix in trie.whole
            logp = current[at].float().log_softmax(-1)[nxt + [closing] * whole].tolist()
            if whole and score + logp[-1] > best[i][1]:
                best[i] = (prefix, score + logp[-1])
            grown[i] += [(score + lp, at, prefix + (t,)) for t, lp in zip(nxt, logp)]
        # a prefix only loses probability as it grows: one below its row's best whole sequence is done
        kept = [sorted((x for x in g if x[0] > best[i][1]), key=lambda x: -x[0])[:starts[i][3]]
                for i, g in enumerate(grown)]
        live = [(i, prefix, score, at) for i, g in enumerate(kept) for score, at, prefix in g]
        if live:
            current = forward([at for _, _, _, at in live], [prefix[-1] for _, prefix, _, _ in live])
            live = [(i, prefix, score, k) for k, (i, prefix, score, _) in enumerate(live)]
    return [prefix for prefix, _ in best]
