"""RL core: GRPO and DPO maths shared by the relevance LLM and the dense retriever (tensors in, tensors out)."""
