"""``PipelineConfig``: one YAML for every stage of ``searchrl pipeline``, a section per stage.

Each trainer's section is that trainer's own config (``sft`` is an SFTConfig, ``dpo`` a
DPOConfig, ``grpo`` a GRPOConfig, ``retriever`` a RetrieverConfig), so ``--set
sft.optim.lr=1e-3`` or ``--set grpo.rollout.group_size=4`` reach the same documented fields
as ``searchrl train ...``. What ties the stages together -- data directories, output
directories, which model a stage starts from, the relevance model that judges R-GRPO -- is
set by the pipeline and overrides what a section says (the stage's ``data_dir``,
``model``, ``pairs``, ``encoder``, ``reward.relevance_model``, ``run.output_dir``,
``run.resume``).

``start_model`` lets a run start the relevance chain from a model trained elsewhere: with
``--stages data,sample,dpo,grpo --set start_model=runs/quickstart/sft/final`` the sample and DPO
stages read that SFT model, and GRPO the DPO model this run trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from searchrl.config import check_choices
from searchrl.errors import ConfigError
from searchrl.relevance.train.dpo import DPOConfig
from searchrl.relevance.train.grpo import GRPOConfig
from searchrl.relevance.train.sft import SFTConfig
from searchrl.retrieval.config import RetrieverConfig

STAGES = ("data", "baselines", "sft", "tiering", "sample", "dpo", "grpo", "export", "retriever", "evaluate",
          "report")
RELEVANCE_CHAIN = ("sft", "dpo", "grpo")  # each starts from the last of these that the plan runs before it


@dataclass
class DataStage:
    dataset: str = "chorus"  # registered dataset `searchrl data prepare` fetches when no data_dir is given
    data_dir: str = ""  # a prepared dataset directory (e.g. from `searchrl data import`); wins over dataset
    mirror: str = ""  # local mirror of upstream files; "" = $SEARCHRL_DATA_MIRROR, then the upstream URLs
    seed: int = 0  # seed of the query-level split (prepare only)
    fractions: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])  # train, valid, test shares of queries


@dataclass
class TieringStage:
    split: str = "valid"  # split beta (and the per-grade thresholds) are tuned on


@dataclass
class SampleStage:
    n: int = 4  # samples per prompt (pass@1..n)
    split: str = "train"  # split whose judged pairs are the prompts
    max_prompts: int = 512  # a seeded subset of this many pairs; 0 = all
    temperature: float = 1.0  # sampling temperature
    top_p: float = 1.0  # nucleus sampling; 1 = off
    max_new_tokens: int = 64  # completion length cap (label-first: the grade is the first token)
    prompts_per_batch: int = 16  # prompts per sampling batch (x n rows)
    seed: int = 0  # seeds the subset and the sampling
    teacher_chosen: str = "completion"  # an all-wrong prompt's chosen side: the rule teacher's whole completion,
    #   or "grade": its grade token alone (grade-only sampling, max_new_tokens=1: as long as the rejected sample)


@dataclass
class EvaluateStage:
    split: str = "test"  # split every system is evaluated on
    decode: bool = True  # also decode each trained stage's CoT: parse rate, step agreement, self-consistency
    max_decode: int = 256  # decode at most this many pairs (a seeded subset); 0 = all
    bootstrap: int = 1000  # query-bootstrap resamples for the 95% intervals
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50, 100])  # retrieval curve cut-offs


@dataclass
class ReportStage:
    examples_per_grade: int = 2  # test pairs per gold grade shown with the final model's grade and decoded CoT
    max_new_tokens: int = 96  # CoT tokens decoded for each example
    results_dir: str = ""  # also write the results pages (relevance.md, retrieval.md, timing.md) here, e.g.
    #   docs/results (what scripts/quickstart.sh does); "" = none


@dataclass
class PipelineConfig:
    stages: list[str] = field(default_factory=lambda: list(STAGES))  # the stages to run, in pipeline order
    data: DataStage = field(default_factory=DataStage)  # prepare or a given dataset
    sft: SFTConfig = field(default_factory=SFTConfig)  # relevance SFT (its data_dir and run.output_dir are set)
    tiering: TieringStage = field(default_factory=TieringStage)  # beta tuned on a held-out split
    sample: SampleStage = field(default_factory=SampleStage)  # pass@N sampling: the pairs DPO trains on
    dpo: DPOConfig = field(default_factory=DPOConfig)  # DPO from the SFT model
    grpo: GRPOConfig = field(default_factory=GRPOConfig)  # GRPO from the previous relevance model
    retriever: RetrieverConfig = field(default_factory=RetrieverConfig)  # sft, hardneg and R-GRPO stages
    evaluate: EvaluateStage = field(default_factory=EvaluateStage)  # every system on one split, with intervals
    report: ReportStage = field(default_factory=ReportStage)  # report.html
    start_model: str = ""  # a trained relevance model (a final/ or export directory) the chain starts from: a stage
    #   that reads an earlier relevance model gets this one when the run has trained none before it

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ConfigError(f"stages: unknown {unknown}; known, in order: {', '.join(STAGES)}")
        check_choices(self.evaluate, split=("train", "valid", "test"))
        check_choices(self.tiering, split=("train", "valid", "test"))
        check_choices(self.sample, teacher_chosen=("completion", "grade"))
