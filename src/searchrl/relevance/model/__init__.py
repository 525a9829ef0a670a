"""The relevance model: loading a base model by name or path (load, pretrained), the MiniLM prefix LM
(prefix_lm), LoRA, and the scorer config saved beside the weights (scorer_config)."""
