"""The dense retriever: the encoder (encoder), FAISS index (index), the three trainers (train_sft:
in-batch and global negatives with optional hard negatives; rgrpo: Retrieval-GRPO with its rewards and
judges), what they share (shared), evaluation (evaluate) and the three stages end to end (chain)."""
