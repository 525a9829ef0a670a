"""Prefill-only grade probabilities with the query's prompt prefix computed once per group.

All candidate products of one query share a long prompt prefix (instruction and query
line). :func:`shared_prefix_grade_probs` runs each group's prefix once, keeps its KV
cache, and runs only the product-specific suffixes on top of it. A forward pass packs
several small groups (the prefixes go through one left-padded pass, each suffix row
gets a copy of its own prefix's cache) or a slice of a large one, suffixes sorted by
length. Suffixes are left-padded *after* the prefix (holes in the middle are masked;
position ids continue from each row's prefix), so every row's last token sits at the
same position and only that position's logits are computed.

The shared prefix is the longest common prefix of the group's *token ids* (not of the
strings), so the result equals plain scoring of the full prompts whatever the
tokenizer does at the boundary; ``tests/test_prefill.py`` checks this to 1e-4.

A segmented prefix-LM (prefix_lm.py: the query and the product as [SEP]-delimited segments)
shares exactly its query segment: the prefix is cut at the segment's end (product tokens must
read the whole product, which a shared part of it would not), the prefix pass returns the
query's pooled states, and the suffix pass gets the product's segment ids and those states.

Simplifies: models whose cache is not a plain per-layer key/value cache (sliding
window or state-space layers) are not supported; score them with ``shared_prefix=False``.
"""

from __future__ import annotations

import numpy as np
import torch

from searchrl.relevance.model.tokenizer import encode_prompt, grade_token_ids
from searchrl.rl.rollout import left_pad


def common_prefix_len(seqs: list[list[int]], marker: int | None = None) -> int:
    """Length of the longest common prefix of token lists, leaving every list at least one token of its own; with
    ``marker`` (a segmented prefix-LM), exactly the query segment (through the first marker) or nothing."""
    if marker is not None:
        ends = {s.index(marker) + 1 if marker in s else 0 for s in seqs}
        n = ends.pop() if len(ends) == 1 else 0
        return n if n and all(s[:n] == seqs[0][:n] and len(s) > n for s in seqs) else 0
    n = min(len(s) for s in seqs) - 1  # the last token must be scored in the suffix pass
    first = seqs[0]
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def _slices(encoded: list[list[int]], groups: list[list[int]], batch_size: int,
            marker: int | None = None) -> list[tuple[int, list[int]]]:
    """(shared prefix length, row indices) per slice: a group's rows sorted by length, at most batch_size each."""
    out = []
    for rows in groups:
        if not rows:
            continue
        n = common_prefix_len([encoded[i] for i in rows], marker) if len(rows) > 1 else 0
        if n == 0:  # a lone prompt, or nothing in common: nothing to share, plain prefill
            out += [(0, [i]) for i in rows]
            continue
        rows = sorted(rows, key=lambda i: len(encoded[i]))
        out += [(n, rows[s:s + batch_size]) for s in range(0, len(rows), batch_size)]
    return out


def _chunks(slices, batch_size: int, encoded: list[list[int]]):
    """Slices packed, in order, into forward passes of at most batch_size rows; unshared rows go together."""
    plain = [i for n, rows in slices if n == 0 for i in rows]
    plain.sort(key=lambda i: len(encoded[i]))
    for s in range(0, len(plain), batch_size):
        yield [(0, plain[s:s + batch_size])]
    chunk, rows = [], 0
    for sl in (sl for sl in slices if sl[0] > 0):
        if chunk and rows + len(sl[1]) > batch_size:
            yield chunk
            chunk, rows = [], 0
        chunk.append(sl)
        rows += len(sl[1])
    if chunk:
        yield chunk


def _chunk_probs(model, encoded, chunk, pad_id: int, gids, device, marker: int | None = None
                 ) -> tuple[list[int], torch.Tensor]:
    """One prefix pass for the chunk's distinct prefixes, one suffix pass for all its rows."""
    from transformers import DynamicCache
    prefixes = [encoded[rows[0]][:n] for n, rows in chunk]
    owner = torch.tensor([j for j, (_, rows) in enumerate(chunk) for _ in rows])  # [B]: row -> its prefix
    idx = [i for _, rows in chunk for i in rows]
    suffixes = [encoded[i][n:] for n, rows in chunk for i in rows]
    lengths = torch.tensor([n for n, rows in chunk for _ in rows])  # [B]
    s_ids, s_mask, _ = left_pad(suffixes, pad_id)  # [B, S]
    extra = {}
    if max(len(p) for p in prefixes) == 0:  # a chunk of unshared prompts: whole prompts, plain prefill
        cache, p_mask = None, torch.zeros((len(idx), 0), dtype=s_mask.dtype)
    else:
        p_ids, p_mask, p_pos = left_pad(prefixes, pad_id)  # [C, P]
        seg = {"return_pooled_query": True} if marker is not None else {}
        out = model(input_ids=p_ids.to(device), attention_mask=p_mask.to(device), position_ids=p_pos.to(device),
                    use_cache=True, logits_to_keep=1, **seg)
        # index_select gives each row its own copy of its prefix's keys/values: the suffix pass appends to them
        sel = owner.to(device)
        cache = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, sel), layer.values.index_select(0, sel))
                                             for layer in out.past_key_values.layers], config=model.config)
        p_mask = p_mask[owner]  # [B, P]
        if marker is not None:  # the suffix is the product segment, then the read marker
            from searchrl.relevance.model.prefix_attention import segments
            full = segments(s_ids, s_mask, marker) + 1  # counted from the suffix: A -> B, B -> read
            extra = {"segment_ids": torch.where(s_mask > 0, full.clamp(max=4), 0).to(device),
                     "pooled_query": out["pooled_query"].index_select(0, sel)}
    mask = torch.cat([p_mask, s_mask], dim=1)  # [B, P+S]: padding on the left of both parts is masked
    pos = lengths[:, None] + (s_mask.cumsum(1) - 1).clamp(min=0)  # [B, S]: positions continue after the prefix
    logits = model(input_ids=s_ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                   past_key_values=cache, use_cache=cache is not None, logits_to_keep=1, **extra).logits  # [B, 1, V]
    return idx, torch.softmax(logits[:, -1, gids].double(), dim=-1)  # [B, 4]


@torch.no_grad()
def shared_prefix_grade_probs(model, tokenizer, groups: list[list[str]], batch_size: int = 32,
                              progress=None) -> list[np.ndarray]:
    """For each group of prompts (one query's candidates), a [len(group), 4] array of grade probabilities.

    ``batch_size`` caps the rows of a forward pass; small groups are packed together,
    large ones split. ``progress`` (optional) is called with the number of prompts
    finished after each pass.
    """
    device = next(model.parameters()).device
    gids = torch.tensor(grade_token_ids(tokenizer), device=device)  # [4]
    encoded, members = [], []
    for prompts in groups:
        members.append(list(range(len(encoded), len(encoded) + len(prompts))))
        encoded += [encode_prompt(tokenizer, p) for p in prompts]
    if any(not e for e in encoded):
        raise ValueError("an empty prompt cannot be scored")
    flat = np.zeros((len(encoded), 4), dtype=np.float64)
    was_training = model.training
    model.eval()
    marker = getattr(model.config, "marker_token_id", None)  # a segmented prefix-LM shares its query segment
    for chunk in _chunks(_slices(encoded, members, batch_size, marker), batch_size, encoded):
        idx, probs = _chunk_probs(model, encoded, chunk, tokenizer.pad_token_id, gids, device, marker)
        flat[idx] = probs.cpu().numpy()
        if progress is not None:
            progress(len(idx))
    model.train(was_training)
    return [flat[rows] for rows in members]
