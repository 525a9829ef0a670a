"""The segmented prefix LM's attention pattern (prefix_lm.py): segment ids read from the [SEP] markers, the 4D
additive mask over them, the query's and the product's words for the copy term, and a masked mean.

    [CLS] query [SEP] [CLS] product text [SEP] [SEP] <L3> query: ... => intent: ... [SEP]
    '--- segment A ---' '-- segment B ----------' read  '----- completion (causal) ------'

A reads A; B reads B (``late``) or A and B (``block``); the read token and the completion read everything before
them, causally. No prompt token reads the completion, so a prefill followed by KV-cached decoding (or a training
forward that runs the completion over the prompt's cache) equals the full masked forward.
"""

from __future__ import annotations

import torch

SEG_PAD, SEG_A, SEG_B, SEG_READ, SEG_COMPLETION = 0, 1, 2, 3, 4


def segments(input_ids: torch.Tensor, mask: torch.Tensor, marker: int) -> torch.Tensor:
    """[B, T] segment ids from the markers (module docstring); padding (mask 0) is SEG_PAD."""
    is_marker = (input_ids == marker) & (mask > 0)
    before = is_marker.long().cumsum(1) - is_marker.long()  # markers strictly before each position
    seg = torch.clamp(before + 1, max=SEG_COMPLETION)  # 0 before -> A, 1 -> B, 2 -> read, 3+ -> completion
    return torch.where(mask > 0, seg, torch.zeros_like(seg))


def attention_bias(seg_q: torch.Tensor, key_mask: torch.Tensor, past: int, mode: str, dtype) -> torch.Tensor:
    """[B, 1, T, past + T] additive bias (0 = may attend) for queries of segments ``seg_q`` [B, T] over ``past``
    cached keys and the T new ones; key_mask [B, past + T] is 1 for real tokens."""
    b, t = seg_q.shape
    sq = seg_q[:, :, None]  # [B, T, 1]
    sk = seg_q[:, None, :]  # [B, 1, T]: the new keys' segments
    causal = torch.ones(t, t, dtype=torch.bool, device=seg_q.device).tril()[None]  # [1, T, T]
    reads_all = sq >= SEG_READ  # the read token and the completion: everything before them
    new = torch.where(reads_all, (sk < SEG_READ) | causal,
                      (sk == sq) | ((mode == "block") & (sq == SEG_B) & (sk == SEG_A)))  # [B, T, T]
    cached = (reads_all | ((mode == "block") & (sq == SEG_B))).expand(b, t, past)  # [B, T, past]
    allowed = torch.cat([cached, new], dim=2) & (key_mask[:, None, :] > 0)
    eye = torch.zeros_like(allowed)
    eye[:, :, past:] = torch.eye(t, dtype=torch.bool, device=seg_q.device)
    allowed = allowed | (eye & (sq == SEG_PAD))  # a padding row attends to itself (no all-masked row: no NaN)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=seg_q.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def copy_masks(ids: torch.Tensor, seg: torch.Tensor, vocab_size: int, marker: int) -> torch.Tensor:
    """[B, 2, V]: 1 where a token occurs in the query (segment A) / in the product (segment B) of each row,
    markers left out."""
    out = ids.new_zeros(ids.shape[0], 2, vocab_size, dtype=torch.float)
    for k, s in enumerate((SEG_A, SEG_B)):
        out[:, k].scatter_add_(1, ids, ((seg == s) & (ids != marker)).float())
    return out.clamp_(max=1.0)


def mean_over(hidden: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """[B, H] mean of hidden [B, T, H] over the positions ``where`` [B, T] (bool)."""
    w = where.to(hidden.dtype)[:, :, None]
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1)
