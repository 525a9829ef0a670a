"""DPO maths on plain tensors: the sigmoid (Bradley-Terry) preference loss and summed sequence log-probabilities.

The loss takes summed log-probabilities of the chosen and rejected completions under the policy and a frozen
reference; the implicit reward of a completion is beta * (policy logp - reference logp). With label_smoothing=0
it equals TRL 1.16's DPOTrainer with loss_type="sigmoid" (tests/test_rl_dpo_loss.py runs TRL's own code).

Simplifies, compared with TRL: one loss type (sigmoid; no IPO, hinge, robust, ...), no f-divergence variants, no
LD-DPO length weighting, no WPO weighting. label_smoothing > 0 gives conservative DPO (cDPO: the label is wrong
with that probability), which older TRL applied to "sigmoid" and TRL 1.16 no longer does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from searchrl.rl.grpo_loss import token_logps


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Summed log-probability of each sequence's active tokens.

    Args:
        logits: [B, T, V] aligned with labels (logits[:, t] scores labels[:, t]; for a causal LM pass
            logits[:, :-1] and input_ids[:, 1:], with the mask shifted the same way).
        labels: [B, T] token ids (-100 allowed at positions the mask excludes).
        mask: [B, T] 1/True for the tokens to score (the completion), 0/False for prompt and padding.
        temperature: logits are divided by it first. Default 1.0 (DPO scores the plain model).

    Returns:
        [B] sum of log p(label) over active tokens.
    """
    per_token = token_logps(logits, labels, temperature=temperature)  # [B, T]
    return torch.where(mask.bool(), per_token, 0.0).sum(-1)


def dpo_sigmoid_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                     ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
                     label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), and the implicit rewards.

    Args:
        policy_chosen_logps: [B] summed log-probabilities of the chosen completions under the policy.
        policy_rejected_logps: [B] the same for the rejected completions.
        ref_chosen_logps: [B] chosen completions under the frozen reference (no gradient needed).
        ref_rejected_logps: [B] rejected completions under the reference.
        beta: inverse temperature of the implicit reward; larger keeps the policy closer to the reference.
            Default 0.1 (TRL's default).
        label_smoothing: probability that a preference label is flipped (cDPO); the loss becomes
            -(1 - ls) * log sigmoid(beta * d) - ls * log sigmoid(-beta * d). Default 0.0: plain DPO.

    Returns:
        (losses [B], chosen_rewards [B], rejected_rewards [B]); the rewards are beta * (policy - reference)
        log-ratios, detached (for logging: margins, accuracy). The training loss is losses.mean().
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # [B]
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # [B]
    logits = beta * (chosen_logratios - rejected_logratios)  # [B]
    # logsigmoid, not log(sigmoid(.)): stays finite for large margins of either sign
    losses = -(1 - label_smoothing) * F.logsigmoid(logits)
    if label_smoothing:
        losses = losses - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
