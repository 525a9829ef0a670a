"""The scorer config a relevance model directory carries, and the rule that weights are never unpickled.

``relevance_config.json`` sits beside the Hugging Face files of every model searchrl
trains or exports. It says how to build the model's prompts (the PromptConfig it was
trained with, chat template or not, the prompt-template version), which tokens are the
grades, and how to turn probabilities into a grade at serving time (the
cumulative-probability threshold beta, tuned by ``searchrl tune-tiering``).

:func:`check_safetensors` refuses a directory whose weights exist only in a pickle
format (``pytorch_model.bin``, ``*.pt``, ...): loading those runs arbitrary code.

Simplifies: one template version for the whole package; a model trained by a newer
searchrl (a higher version) is refused rather than guessed at.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from searchrl.errors import MissingFileError, ModelError
from searchrl.relevance.format.prompt import GRADE_TOKENS, PromptConfig

CONFIG_FILE = "relevance_config.json"
TEMPLATE_VERSION = 1  # bump when build_prompt / build_completion change what a trained model has seen
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass
class ScorerConfig:
    prompt: PromptConfig = field(default_factory=PromptConfig)  # how prompts were built in training
    chat_template: bool = True  # prompts go through the tokenizer's chat template when it has one
    grade_tokens: list[str] = field(default_factory=lambda: list(GRADE_TOKENS))  # <L1>..<L4>, in grade order
    beta: float = 0.5  # cumulative-probability tiering threshold (0.5 = the median grade until tuned)
    grade_thresholds: list[float] | None = None  # per-grade thresholds (t4, t3, t2) when tuned, for comparison
    template_version: int = TEMPLATE_VERSION  # prompt-template version the model was trained with

    def __post_init__(self):
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        if list(self.grade_tokens) != list(GRADE_TOKENS):
            raise ValueError(f"grade_tokens {self.grade_tokens} differ from this searchrl's {list(GRADE_TOKENS)}")


def save_scorer_config(model_dir: str | Path, cfg: ScorerConfig) -> Path:
    path = Path(model_dir, CONFIG_FILE)
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    return path


def save_relevance_model(path: str | Path, model, tokenizer, scorer: ScorerConfig, run_config, name: str) -> Path:
    """A trainer's final/ directory: weights, tokenizer, scorer config and the run's config as ``NAME.json``
    (replacing whatever was there). The scorer config is the starting model's, so a tuned beta is kept."""
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    save_scorer_config(path, scorer)
    (path / f"{name}.json").write_text(json.dumps(dataclasses.asdict(run_config), indent=2) + "\n")
    return path


def load_scorer_config(model_dir: str | Path) -> ScorerConfig:
    path = Path(model_dir, CONFIG_FILE)
    if not path.exists():
        raise MissingFileError(f"{path}: missing; {model_dir} is not a searchrl relevance model "
                                "(train one with `searchrl train sft`)")
    raw = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(ScorerConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelError(f"{path}: unknown field(s) {unknown}")
    version = int(raw.get("template_version", TEMPLATE_VERSION))
    if version > TEMPLATE_VERSION:
        raise ModelError(f"{path}: prompt template version {version} is newer than this searchrl's "
                         f"{TEMPLATE_VERSION}; upgrade searchrl to score with this model")
    try:
        return ScorerConfig(**{**raw, "prompt": PromptConfig(**raw.get("prompt", {}))})
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path}: {e}") from None


def scorer_config_or_default(model: str | Path, prompt: PromptConfig, chat_template: bool) -> ScorerConfig:
    """The model directory's scorer config when it has one (the prompt settings it was trained with), else one
    made of the given settings (a model built from scratch, e.g. in tests)."""
    if Path(model).is_dir() and Path(model, CONFIG_FILE).exists():
        return load_scorer_config(model)
    return ScorerConfig(prompt=prompt, chat_template=chat_template)


def scorer_config_of(model: str | Path) -> ScorerConfig:
    """A model directory's scorer config (required: a directory given here is a trained relevance model), or the
    defaults for a GGUF file, a packaged GGUF name or an in-code build, which no searchrl run has configured yet."""
    if Path(model).is_dir():
        return load_scorer_config(model)
    return ScorerConfig()


def update_scorer_config(model_dir: str | Path, **changes) -> ScorerConfig:
    cfg = dataclasses.replace(load_scorer_config(model_dir), **changes)
    save_scorer_config(model_dir, cfg)
    return cfg


def check_safetensors(model_dir: str | Path) -> None:
    """Raise unless the model's weights are in safetensors files (a pickle is never loaded)."""
    d = Path(model_dir)
    if any(d.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES) if d.is_dir() else []
    found = f"found {pickles}, a pickle format that can run code when loaded" if pickles else "found no weights"
    raise ModelError(f"{d}: no *.safetensors weights ({found}); searchrl loads safetensors only. "
                     "Convert with transformers: from_pretrained(...) then save_pretrained(DIR, safe_serialization=True) "
                     "in an environment you trust")
