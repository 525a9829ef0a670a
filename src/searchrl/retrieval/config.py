"""``RetrieverConfig``: one config for the three retriever stages (``stage: sft | hardneg | rgrpo``).

The stages share model, data, index, optimisation and bookkeeping fields; each stage reads
its own section and ignores the others'. YAML + ``--set key=value`` through
searchrl.config.load_config (unknown keys are errors).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import check_choices
from .index import IndexConfig
from .rewards import RewardConfig

STAGES = ("sft", "hardneg", "rgrpo")
CANDIDATES = ("index", "batch")
SCHEDULES = ("cosine", "linear", "constant_with_warmup", "constant")


@dataclass
class RetrieverConfig:
    stage: str = "sft"  # sft = InfoNCE, in-batch + global random negatives | hardneg = contrastive on
    #   offline-mined hard negatives (the baseline R-GRPO replaces) | rgrpo = Retrieval-GRPO
    # --- model
    encoder: str = "all-MiniLM-L6-v2"  # start point: a sentence-transformers dir, or any HF encoder/decoder dir.
    #   hardneg: also the miner; rgrpo: the SFT encoder, also the frozen KL reference
    pooling: str = "auto"  # plain HF models: auto (mean for encoders, last token for decoders) | mean | lasttoken | cls
    max_seq_length: int = 128  # tokens per query / product text (longer ones are cut)
    device: str = "auto"  # "auto" = cuda when available, else cpu
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
    # --- optimisation
    batch_size: int = 16  # queries per step (per process under torchrun)
    lr: float = 2e-5  # peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay on matrices
    adam_betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    max_grad_norm: float = 1.0  # clip the global gradient norm to this; 0 = no clipping
    warmup_ratio: float = 0.05  # share of the steps with linear warmup from 0 to lr
    schedule: str = "linear"  # cosine | linear | constant_with_warmup | constant: decay after warmup
    max_steps: int = 0  # optimizer steps; 0 = derive from epochs
    epochs: float = 1.0  # passes over the training queries, used when max_steps is 0
    seed: int = 0  # seeds data order, negatives, subsets and dropout
    # --- bookkeeping
    output_dir: str = "runs/retriever"  # metrics.jsonl, checkpoint-STEP/ and final/ (a SentenceTransformer)
    encode_batch_size: int = 64  # texts per forward pass when encoding the catalogue
    log_every: int = 1  # write a metrics line every this many steps
    save_every: int = 0  # checkpoint every this many steps; 0 = none besides final/
    save_total_limit: int = 0  # keep only the newest this many checkpoints; 0 = keep all
    stop_at_step: int = 0  # checkpoint and stop at this step without changing the schedule (time-boxed jobs)
    resume: bool = False  # continue from the newest output_dir/checkpoint-*/ (fresh start when there is none)
    progress: bool = True  # show tqdm progress bars

    def __post_init__(self):
        check_choices(self, stage=STAGES, candidates=CANDIDATES, schedule=SCHEDULES)
        if self.batch_size < 1 or self.group_size < 2:
            raise ValueError("batch_size must be >= 1 and group_size >= 2")
        if self.temperature <= 0 or self.policy_temperature <= 0:
            raise ValueError("temperatures must be > 0")
