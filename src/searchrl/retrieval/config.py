"""``RetrieverConfig``: one config for the three retriever stages (``stage: sft | hardneg | rgrpo``).

The stages share model, data and index fields and the ``optim`` / ``run`` sections; each stage
reads its own fields and ignores the others'. YAML + ``--set key=value`` through
searchrl.config.load_config (unknown keys are errors).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from searchrl.config import OptimConfig, RunConfig, check_choices
from searchrl.errors import ConfigError
from searchrl.retrieval.index import IndexConfig
from searchrl.retrieval.rewards import RewardConfig

STAGES = ("sft", "hardneg", "rgrpo")
CANDIDATES = ("index", "batch")


@dataclass
class RetrieverConfig:
    stage: str = "sft"  # sft = InfoNCE, in-batch + global random negatives | hardneg = contrastive on
    #   offline-mined hard negatives (the baseline R-GRPO replaces) | rgrpo = Retrieval-GRPO
    # --- model
    encoder: str = "all-MiniLM-L6-v2"  # start point: a sentence-transformers dir, or any HF encoder/decoder dir.
    #   hardneg: also the miner; rgrpo: the SFT encoder, also the frozen KL reference
    pooling: str = "auto"  # plain HF models: auto (mean for encoders, last token for decoders) | mean | lasttoken | cls
    max_seq_length: int = 128  # tokens per query / product text (longer ones are cut)
    # --- data
    data_dir: str = ""  # prepared dataset directory (searchrl data prepare / import)
    train_split: str = "train"  # split whose queries train the encoder
    query_files: list[str] = dataclasses.field(default_factory=list)  # extra training queries: .txt (one per
    #   line) or .jsonl/.csv/.tsv/.parquet with a "query" (or "text") column. rgrpo only: they carry no labels
    generated_queries: int = 0  # sft/hardneg: add up to this many pseudo-queries made from product fields
    #   ("brand category", or the title's first words) with that product as the positive; 0 = none
    max_products: int = 0  # use a seeded subset of this many products (always keeping the judged ones); 0 = all
    # --- contrastive stages (sft, hardneg)
    temperature: float = 0.05  # InfoNCE temperature: logits = cosine / temperature
    global_negatives: int = 32  # products drawn at random from the whole catalogue per step, shared by the batch
    hard_negatives: int = 4  # hardneg: mined negatives per (query, positive)
    mine_depth: int = 50  # hardneg: mine from the miner's top this many for each query
    mine_skip: int = 3  # hardneg: skip this many top unjudged hits (likely unlabelled positives)
    # --- rgrpo
    group_size: int = 8  # K: the group is the query's top-K products under the current encoder
    policy_temperature: float = 0.05  # tau: pi(i) = softmax over the K similarities / tau
    candidates: str = "index"  # index = top-K from the ANN index over the whole catalogue (rebuilt every
    #   rebuild_every steps) | batch = top-K from a random pool of candidate_pool products (the paper's big batch)
    candidate_pool: int = 1024  # candidates=batch: products in the random pool per step
    rebuild_every: int = 20  # candidates=index: re-encode the catalogue every this many steps
    beta: float = 0.02  # KL coefficient to the reference encoder (k3 estimator)
    eps_low: float = 0.2  # clip: ratio >= 1 - eps_low
    eps_high: float = 0.2  # clip: ratio <= 1 + eps_high
    adv_scale: str = "group"  # group (GRPO) | batch | none (Dr. GRPO): what centred rewards are divided by
    adv_clamp: float = 0.0  # clip advantages to [-adv_clamp, adv_clamp]; 0 = no clip
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)  # reward weights and sources
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)  # FAISS index used in training and search
    # --- batches and bookkeeping
    batch_size: int = 16  # queries per step (per process under torchrun)
    encode_batch_size: int = 64  # texts per forward pass when encoding the catalogue
    # --- sections
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=2e-5, weight_decay=0.01,
                                                                               warmup_ratio=0.05, schedule="linear"))
    #   epochs: passes over the training queries (sft/hardneg: pairs), used when optim.max_steps is 0
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(output_dir="runs/retriever"))
    #   output_dir gets metrics.jsonl, checkpoint-STEP/ and final/ (a SentenceTransformer)

    def __post_init__(self):
        check_choices(self, stage=STAGES, candidates=CANDIDATES)
        if self.batch_size < 1 or self.group_size < 2:
            raise ConfigError("batch_size must be >= 1 and group_size >= 2")
        if self.temperature <= 0 or self.policy_temperature <= 0:
            raise ConfigError("temperatures must be > 0")
