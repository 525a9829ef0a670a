"""What every pipeline stage is handed: the config, the run directory, the plan, the dataset (loaded once)
and where each stage's output and the latest relevance model are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from searchrl.data.schema import Dataset, load_dataset
from searchrl.errors import UserError
from searchrl.pipeline.config import RELEVANCE_CHAIN, PipelineConfig


class SkipStage(UserError):
    """This stage cannot run on this dataset; the message says why (the pipeline goes on without it)."""


@dataclass
class Context:
    cfg: PipelineConfig
    out: Path
    plan: list[str]  # the stages this invocation runs, in order
    _ds: Dataset | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.cfg.data.data_dir) if self.cfg.data.data_dir else self.out / "data"

    def ds(self) -> Dataset:
        if self._ds is None:
            self._ds = load_dataset(self.data_dir)
        return self._ds

    def dir(self, stage: str) -> Path:
        return self.out / stage

    def relevance_model(self, before: str | None = None) -> Path | None:
        """final/ of the last relevance stage (sft, dpo, grpo) before ``before`` that has one, else the config's
        start_model; None if neither."""
        chain = RELEVANCE_CHAIN if before is None else RELEVANCE_CHAIN[:RELEVANCE_CHAIN.index(before)] \
            if before in RELEVANCE_CHAIN else RELEVANCE_CHAIN
        for stage in reversed(chain):
            final = self.dir(stage) / "final"
            if (final / "relevance_config.json").exists():
                return final
        return Path(self.cfg.start_model) if self.cfg.start_model else None

    def judge(self) -> Path | None:
        """The relevance model downstream stages use: the exported one, else the last trained."""
        export = self.dir("export") / "model"
        return export if (export / "relevance_config.json").exists() else self.relevance_model()
