"""``searchrl pipeline``: every stage on any dataset in one command, resumable, ending in report.html.

data (prepare or a given import) -> baselines -> relevance SFT -> tiering (beta on valid) ->
pass@N sampling -> DPO -> GRPO -> export -> retriever SFT / hardneg / R-GRPO (judged by the
exported relevance model) -> evaluation (query-bootstrap intervals) -> report.html.

- config.py: PipelineConfig, one section per stage (each trainer's own config);
- stages.py: what each stage does;
- runner.py: the plan, reuse by fingerprint, resume, progress, --dry-run;
- collect.py: the report's input from the run directory.
"""

from pathlib import Path

from searchrl.config import load_config
from searchrl.errors import ConfigError
from searchrl.pipeline.config import STAGES, PipelineConfig
from searchrl.pipeline.runner import run_pipeline

PACKAGED = {"quickstart": "pipeline_quickstart.yaml", "full": "pipeline_full.yaml", "llm": "pipeline_llm.yaml"}


def load_pipeline_config(config: str | None, overrides: list[str] | None = None) -> PipelineConfig:
    """PipelineConfig from a YAML path or a packaged name (quickstart, full, llm), plus ``section.key=value``
    overrides."""
    path = None
    if config:
        path = Path(config)
        if not path.exists():
            if config not in PACKAGED:
                raise ConfigError(f"{config}: no such config file (or a packaged one: {', '.join(PACKAGED)})")
            path = Path(__file__).resolve().parents[1] / "configs" / PACKAGED[config]
    return load_config(PipelineConfig, path, overrides)


__all__ = ["PACKAGED", "STAGES", "PipelineConfig", "load_pipeline_config", "run_pipeline"]
