"""The relevance recipes, one trainer per method: CoT SFT (sft, examples), pass@N sampling and DPO
(sample, dpo), GRPO with dynamic sampling, rule-aware rewards and guided replay (grpo, rollouts,
rewards, guided_replay)."""
