"""GRPO maths on plain tensors: group advantages, clipped surrogate with k3 KL, loss aggregation, dynamic sampling.

Written once for two callers: the relevance LLM (one row per sampled completion, one column per completion token)
and the dense retriever (one row per sampled ranking; one "token" per item, or one sequence-level ratio). Nothing
here knows about models: callers pass per-token log-probabilities [B*G, T] (B prompts x G samples, the G samples of
a prompt in consecutive rows) and a mask of the tokens that count. `token_logps` turns logits into those.

On one process this equals TRL 1.16's GRPOTrainer (tests/test_rl_grpo_loss.py runs TRL's own code on the same
tensors): advantages as in `_generate_and_score_completions` (multi_objective_aggregation="sum_then_normalize"),
per-token loss, clip fractions, KL and the "dapo" / "grpo" losses as in `_compute_loss`.

Simplifies, compared with TRL: rewards are one finite number per sample (no NaN "unscorable" rows, no reward
weighting); no vLLM importance-sampling correction, no two-sided `delta` clip, no entropy mask or bonus, no
off-policy sequence mask, no other loss types (bnpo, dr_grpo, cispo, sapo, luspo, vespo). Gradient accumulation and
data-parallel scaling are the caller's business: `aggregate(kind="dapo")` takes the token count to divide by.
"""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")
RATIO_LEVELS = ("token", "sequence")
AGGREGATIONS = ("dapo", "grpo")


def _unbiased_std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected std (TRL's `nanstd`), 0 where fewer than two values: a single sample has no spread."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros_like(x.mean() if dim is None else x.mean(dim=dim, keepdim=True))
    return x.std() if dim is None else x.std(dim=dim, keepdim=True)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4,
                     clamp: float | None = None) -> torch.Tensor:
    """Group-relative advantages: each reward minus the mean of its group, optionally divided by a std.

    Args:
        rewards: [B*G] with each group's G samples in consecutive rows, or [B, G]. One finite reward per sample.
        group_size: G, the number of samples per prompt (group).
        scale: what the centred rewards are divided by. "group" (default, GRPO): the group's std. "batch": the std
            of every reward passed (the group mean is still subtracted; this is TRL's "batch", from PPO-Lite; under
            data parallelism pass the gathered rewards so the std is global). "none": not divided (Dr. GRPO).
        eps: added to the std before dividing, so an all-equal group gets advantage 0 rather than NaN. Default
            1e-4, TRL's constant.
        clamp: if set, the advantages are clipped to [-clamp, clamp] after scaling (a guard against groups with a
            tiny std blowing up). Default None: no clip, as in TRL.

    Returns:
        Advantages with the shape and dtype of `rewards`.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.reshape(-1, group_size)  # [B, G]
    adv = grouped - grouped.mean(dim=1, keepdim=True)  # [B, G]
    if scale == "group":
        adv = adv / (_unbiased_std(grouped, dim=1) + eps)  # std: [B, 1]
    elif scale == "batch":
        adv = adv / (_unbiased_std(grouped) + eps)  # std: scalar over the whole batch
    if clamp is not None:
        adv = adv.clamp(-clamp, clamp)
    return adv.reshape(rewards.shape)


def dynamic_sampling_mask(rewards: torch.Tensor, group_size: int, std_tol: float = 0.0) -> torch.Tensor:
    """Which groups carry a learning signal (DAPO dynamic sampling): the rest have (near) all-equal rewards.

    An all-equal group has advantage 0 for every sample, so it only dilutes the loss; DAPO drops such groups and
    samples more prompts. TRL only logs their fraction (frac_reward_zero_std); filtering is ours.

    Args:
        rewards: [B*G] (each group's samples consecutive) or [B, G].
        group_size: G, samples per group.
        std_tol: a group is kept only if its (Bessel-corrected) reward std is above this. Default 0.0: drop only
            groups whose rewards are exactly equal. For continuous rewards use a small positive tolerance, so groups
            that differ by rounding noise are dropped too.

    Returns:
        [B] bool, True for groups to keep. Expand to samples with `.repeat_interleave(group_size)`.
    """
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.reshape(-1, group_size)  # [B, G]
    # max > min is the exact test for "not all equal"; the std alone is not, since the float mean of equal
    # values (e.g. three 0.1s) can differ from them in the last bit and leave a std of ~1e-17
    spread = grouped.amax(dim=1) > grouped.amin(dim=1)  # [B]
    return spread & (_unbiased_std(grouped, dim=1).squeeze(1) > std_tol)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(r) - r - 1 with r = ref_logp - logp.

    Non-negative, unbiased when the tokens were sampled from the policy, and lower-variance than -r (Schulman's
    "Approximating KL divergence"); GRPO and TRL use it.

    Args:
        logp: [B, T] policy log-probabilities of the sampled tokens (carries the gradient).
        ref_logp: [B, T] reference-model log-probabilities of the same tokens (no gradient needed).

    Returns:
        [B, T] per-token KL estimate (padding positions are not masked here).
    """
    r = ref_logp - logp  # [B, T]
    return torch.exp(r) - r - 1


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor | None, advantages: torch.Tensor,
                      mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2, ratio_level: str = "token",
                      ref_logp: torch.Tensor | None = None, beta: float = 0.0,
                      kl_ratio_correction: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-style clipped surrogate per token, plus beta * k3 KL to a reference: the GRPO per-token loss.

    loss = -min(w * A, clip(w, 1 - eps_low, 1 + eps_high) * A) + beta * KL, with w the importance ratio
    pi / pi_old, per token ("token") or one per sequence ("sequence", GSPO: the exp of the mean per-token log ratio
    over active tokens; TRL importance_sampling_level="sequence").

    Args:
        logp: [B, T] log-probabilities of the sampled tokens under the current policy (carries the gradient).
            Keep padding positions finite (token_logps gives 0 there): the ratio ignores them, the KL does not.
        old_logp: [B, T] the same under the policy that sampled them (no gradient). None means on-policy (one
            update per batch): logp.detach() is used, so w = 1 but its gradient is the policy gradient.
        advantages: [B] one per sequence (broadcast over tokens), or [B, T] per token.
        mask: [B, T] 1/True for tokens that count (completion tokens), 0/False for padding; any dtype.
        eps_low: lower clip, w is clipped at 1 - eps_low. Default 0.2.
        eps_high: upper clip, w is clipped at 1 + eps_high (DAPO's clip-higher uses e.g. 0.28). Default 0.2.
        ratio_level: "token" (default) or "sequence" (GSPO).
        ref_logp: [B, T] reference-model log-probabilities, or None. Needed when beta != 0; when given with
            beta == 0 the KL is still measured for logging but not added.
        beta: KL coefficient. Default 0.0 (no KL term, as in TRL's default).
        kl_ratio_correction: multiply the per-token KL by the (unclipped, differentiable) ratio w, so that its
            gradient is the unbiased reverse-KL gradient even off-policy (DeepSeek-V3.2; even on-policy, where
            w = 1, it changes the gradient). Default True, as TRL's use_bias_correction_kl.

    Returns:
        (per_token_loss [B, T], stats). The loss is not masked (reduce it with `aggregate`); at sequence level
        the per-sequence surrogate is repeated over the row. stats are detached 0-d tensors named like TRL's logs:
        "clip_low" (w < 1 - eps_low with A < 0), "clip_high" (w > 1 + eps_high with A > 0), "clip_region"
        (either), as fractions of active tokens (token level) or of rows (sequence level), and "kl" (mean k3 KL
        over active tokens, ratio-weighted if kl_ratio_correction) when ref_logp is given.
    """
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level must be one of {RATIO_LEVELS}, got {ratio_level!r}")
    if beta != 0.0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp")
    active = mask.bool()  # [B, T]
    mask = mask.to(logp.dtype)
    old_logp = logp.detach() if old_logp is None else old_logp
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # [B, 1] or [B, T]

    # select rather than multiply: a non-finite old_logp at padding (e.g. -inf) must not turn a row's ratio NaN
    log_ratio = torch.where(active, logp - old_logp, 0.0)  # [B, T]
    if ratio_level == "token":
        log_w = log_ratio  # [B, T]
    else:
        log_w = log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1]
    w = torch.exp(log_w)
    w_clipped = w.clamp(1 - eps_low, 1 + eps_high)
    loss = -torch.min(w * adv, w_clipped * adv)  # [B, T], or [B, 1] at sequence level with [B] advantages

    kl = k3_kl(logp, ref_logp) if ref_logp is not None else None  # [B, T]
    if kl is not None and kl_ratio_correction:
        kl = kl * w  # w: [B, T], or [B, 1] at sequence level
    if beta != 0.0:
        loss = loss + beta * kl
    loss = loss.expand(logp.shape)  # [B, T]

    with torch.no_grad():
        low = (w < 1 - eps_low) & (adv < 0)
        high = (w > 1 + eps_high) & (adv > 0)
        stats = {name: _stat_mean(x, mask) for name, x in
                 (("clip_low", low), ("clip_high", high), ("clip_region", low | high))}
        if kl is not None:
            stats["kl"] = _stat_mean(kl, mask)
    return loss, stats


def _stat_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over active tokens for [B, T] values, over rows for [B, 1] ones (as TRL's global_masked_mean)."""
    x = x.to(mask.dtype)
    if x.shape[-1] == 1 and mask.shape[-1] != 1:
        return x.mean()
    x = x.expand(mask.shape)
    return torch.where(mask.bool(), x, 0.0).sum() / mask.sum().clamp(min=1.0)


def aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, kind: str = "dapo",
              num_items: torch.Tensor | float | None = None) -> torch.Tensor:
    """Reduce a per-token loss [B, T] to the scalar to backpropagate.

    Args:
        per_token_loss: [B, T], e.g. from `clipped_surrogate`.
        mask: [B, T] 1/True for tokens that count; any dtype.
        kind: "dapo" (default): sum over active tokens / their number, so every token weighs the same whatever
            its sequence's length (DAPO's token-level loss). "grpo": mean over sequences of each sequence's mean
            over its active tokens (the original GRPO; favours short correct answers and long wrong ones).
        num_items: "dapo" only; the count to divide by instead of this batch's active tokens. To match one big
            batch when a step is split, pass the active-token count of the whole optimizer step (every
            micro-batch, every process) divided by the number of data-parallel processes (DDP averages their
            gradients), and sum the micro-batch losses without further scaling. TRL passes num_items_in_batch
            / num_processes (times grad_accum / steps_per_generation). Default None: this batch's count.

    Returns:
        0-d loss tensor. "grpo" does no gradient-accumulation scaling: divide by the number of micro-batches.
        Counts are clamped to >= 1 so an all-padding batch gives 0, not NaN.
    """
    if kind not in AGGREGATIONS:
        raise ValueError(f"kind must be one of {AGGREGATIONS}, got {kind!r}")
    active = mask.bool()
    mask = mask.to(per_token_loss.dtype)
    masked = torch.where(active, per_token_loss, 0.0)  # [B, T]
    if kind == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    denom = mask.sum() if num_items is None else torch.as_tensor(num_items, dtype=mask.dtype, device=mask.device)
    return masked.sum() / denom.clamp(min=1.0)


def token_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                ignore_index: int = -100) -> torch.Tensor:
    """Log-probability of each label under its logits: log_softmax(logits / temperature) gathered at labels.

    Args:
        logits: [B, T, V], already aligned with labels: logits[:, t] scores labels[:, t]. For a causal LM over
            input_ids, pass logits[:, :-1] and input_ids[:, 1:] (or just the completion slice).
        labels: [B, T] token ids; positions equal to ignore_index get log-probability 0.
        temperature: the sampling temperature the logits are divided by (GRPO scores tokens under the
            distribution it sampled from). Default 1.0.
        ignore_index: label value that marks positions to skip. Default -100, the Hugging Face convention.

    Returns:
        [B, T] log-probabilities, in float32 at least (half-precision logits are upcast: their logsumexp over a
        large vocabulary is too coarse in bf16).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    valid = labels != ignore_index  # [B, T]
    picked = logits.gather(-1, labels.masked_fill(~valid, 0).unsqueeze(-1)).squeeze(-1)  # [B, T]
    # gather - logsumexp instead of log_softmax: no second [B, T, V] tensor
    return torch.where(valid, picked - torch.logsumexp(logits, dim=-1), 0.0)
