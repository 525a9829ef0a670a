"""Config dataclasses from YAML plus ``--set key=value`` overrides, and the sections every trainer shares.

Every trainer has one dataclass whose fields are documented where they are
declared; what several trainers share is a section of its own, documented once:

- :class:`OptimConfig` (``optim.*``): AdamW, gradient clipping, the warmup/decay schedule and its length;
- :class:`RunConfig` (``run.*``): output directory, seed, device, logging / checkpoint cadence, resume,
  stop_at_step, progress bar -- what the run loop in training.py owns;
- :class:`EvalConfig` (``eval.*``): the in-training evaluation of the relevance trainers.

Each trainer's config sets its own defaults for these sections (DPO's learning rate is not SFT's).
``load_config(Cls, path, overrides)`` reads YAML, applies overrides (dotted keys reach
sections: ``--set optim.lr=1e-5``), converts values to the declared field types and
rejects unknown keys with the path of the key, so a typo never silently trains with a
default. ``config_from_dict(Cls, mapping)`` does the same from a nested dict.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from searchrl.errors import ConfigError, MissingFileError
from searchrl.errors import shown as _shown

SCHEDULES = ("cosine", "linear", "constant_with_warmup", "constant")


def safe_load_yaml(text: str, where: str, lines: bool = True):
    """``yaml.safe_load``, every failure a ConfigError naming ``where`` (and the line, when yaml knows it and
    ``lines``: a one-line ``--set`` value has none worth naming).

    Besides YAMLError, PyYAML lets ValueError (a date like 2024-13-45, an integer past Python's 4300-digit
    limit), IndexError (an empty ``!!int``) and RecursionError (thousands of nested brackets) escape from
    its constructors. safe_load has no side effects, so any failure means only that the text is unreadable."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f":line {mark.line + 1}" if mark is not None and lines else ""
        col = f" (column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{where}{at}: invalid YAML: {e.problem or e.context}{col}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{where}: invalid YAML: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 -- see the docstring
        raise ConfigError(f"{where}: invalid YAML value: {' '.join(str(e).split())[:200] or type(e).__name__}") \
            from None


def read_config_text(path: str | Path, kind: str = "config") -> str:
    """The text of a YAML file the user named: UTF-8 (a BOM is skipped); a missing file or other bytes are
    a UserError naming it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no such {kind} file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {kind} ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _convert(value, tp, where: str, default=None):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _convert(value, args[0], where, default)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # already built (config_from_dict given an instance)
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_shown(value)}")
        # a section's keys go on top of the owner's defaults for it (SFT's optim is not DPO's optim)
        return _build(tp, value, where, default if isinstance(default, tp) else None)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_shown(value)}")
        items = [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_shown(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes", "on"):
            return True
        if str(value).lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {_shown(value)}")
    if tp in (int, float, str):
        # only a scalar converts: str({'a': 1}) or int(True) would quietly give the field a value nobody wrote
        if value is None or isinstance(value, (dict, list, tuple)) or (tp is not str and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {_shown(value)}")
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            out = tp(float(value)) if tp is int and isinstance(value, str) and "e" in value.lower() else tp(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int("1e999") goes through inf
            raise ConfigError(f"{where}: expected {tp.__name__}, got {_shown(value)}") from None
        if tp is float and not math.isfinite(out):
            raise ConfigError(f"{where}: expected a finite number, got {_shown(value)}")
        return out
    return value


def _field_default(f: dataclasses.Field):
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _build(cls, data: dict, where: str = "", base=None):
    """cls from ``data``; fields it leaves out keep ``base``'s values (when given) or their defaults."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - set(fields)))  # YAML keys can be numbers, null or dates, too
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; known: {sorted(fields)}")
    start = {n: getattr(base, n) for n in fields} if base is not None else {}
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k,
                          start[k] if base is not None else _field_default(fields[k])) for k, v in data.items()}
    kwargs = {**{n: v for n, v in start.items() if fields[n].init}, **kwargs}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a __post_init__ check: say which section it is about
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def config_from_dict(cls, data: dict):
    """``cls`` built from a nested mapping (sections as sub-mappings), with the same checks as load_config."""
    return _build(cls, data)


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
    tree[parts[-1]] = value


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None):
    """Build ``cls`` from a YAML file (optional) and ``key=value`` overrides."""
    data: dict = {}
    if path:
        data = safe_load_yaml(read_config_text(path), str(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {_shown(data)}")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        value = safe_load_yaml(raw, f"--set {key.strip()}", lines=False) if raw.strip() else ""
        _set_dotted(data, key.strip(), value)
    try:
        return _build(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def when_set(default):
    """A config field that counts in :func:`identity` only where it differs from ``default``: a field added this
    way (a new option, off by default) leaves every finished run that predates it reusable."""
    return field(default=default, metadata={"when_set": True})


def identity(cfg):
    """``dataclasses.asdict(cfg)`` without the :func:`when_set` fields at their defaults: what a finished run is
    matched on (the pipeline's stage fingerprints, a CV fold's saved config)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: identity(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if not (f.metadata.get("when_set") and getattr(cfg, f.name) == f.default)}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(identity(v) for v in cfg)
    if isinstance(cfg, dict):
        return {k: identity(v) for k, v in cfg.items()}
    return cfg


def save_config(cfg, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def check_choices(cfg, **choices) -> None:
    """Raise ConfigError naming the field when ``cfg.<field>`` is not one of its allowed values.

    For config ``__post_init__`` checks: ``check_choices(self, schedule=SCHEDULES, dtype=DTYPES)``.
    """
    for name, allowed in choices.items():
        value = getattr(cfg, name)
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {sorted(allowed) if isinstance(allowed, dict) else list(allowed)}, "
                             f"got {value!r}")


# ---------------------------------------------------------------- shared sections

@dataclass
class OptimConfig:
    """AdamW over the trainable parameters and its learning-rate schedule (training.build_optimizer)."""
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay on matrices (not on biases / norms)
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW (beta1, beta2)
    max_grad_norm: float = 1.0  # clip the global gradient norm to this; 0 = no clipping (the norm is still logged)
    schedule: str = "cosine"  # cosine | linear | constant_with_warmup | constant: decay after warmup (to 0 at the end)
    warmup_ratio: float = 0.0  # share of the optimizer steps with linear warmup from 0 to lr
    max_steps: int = 0  # optimizer steps to run; 0 = derive from epochs
    epochs: float = 1.0  # passes over the training data, used when max_steps is 0

    def __post_init__(self):
        check_choices(self, schedule=SCHEDULES)
        if self.lr < 0 or self.max_steps < 0 or self.epochs <= 0 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"need lr >= 0, max_steps >= 0, epochs > 0 and warmup_ratio in [0, 1), got "
                              f"lr={self.lr}, max_steps={self.max_steps}, epochs={self.epochs}, "
                              f"warmup_ratio={self.warmup_ratio}")


@dataclass
class RunConfig:
    """Where a run writes and when; the run loop (training.RunLoop) reads nothing else from a config."""
    output_dir: str = "runs/out"  # metrics.jsonl, checkpoint-STEP/ and final/ are written here
    seed: int = 0  # seeds python, numpy and torch at start: data order, subsets, model init, dropout, sampling
    device: str = "auto"  # "auto" = cuda when available, else cpu
    log_every: int = 1  # write a metrics line every this many steps (and at the last)
    save_every: int = 0  # checkpoint every this many steps; 0 = none besides final/
    save_total_limit: int = 0  # keep only the newest this many checkpoints; 0 = keep all
    stop_at_step: int = 0  # checkpoint and stop at this step without changing the schedule (time-boxed jobs)
    resume: bool = False  # continue from the newest valid output_dir/checkpoint-*/ (fresh start when there is none)
    progress: bool = True  # show the tqdm progress bar

    def __post_init__(self):
        if self.log_every < 1 or self.save_every < 0 or self.save_total_limit < 0 or self.stop_at_step < 0:
            raise ConfigError("log_every must be >= 1 and save_every, save_total_limit, stop_at_step >= 0")


EVAL_METRICS = ("macro_f1", "accuracy", "good_f1", "good_auc")  # relevance/evaluate.py:evaluate_examples's, by split


@dataclass
class EvalConfig:
    """The evaluation a relevance trainer runs on a held-out split while it trains."""
    split: str = "valid"  # split the eval examples come from; also the prefix of eval metric names
    every: int = 0  # evaluate every this many steps; 0 = only at the end
    max_examples: int = 512  # evaluate on a seeded random subset of this size; 0 = all
    batch_size: int = 16  # prompts per scoring batch
    max_new_tokens: int = 160  # cot_first only: greedy tokens generated to reach the grade token
    best_metric: str = ""  # e.g. "valid_good_auc": final/ gets the weights of the eval where this metric was
    #   highest (transformers' metric_for_best_model + load_best_model_at_end); "" = the last step's weights

    def __post_init__(self):
        names = [f"{self.split}_{m}" for m in EVAL_METRICS]
        if self.best_metric and self.best_metric not in names:  # a typo fails at load, not after the first eval
            raise ConfigError(f"eval.best_metric {self.best_metric!r} is not an eval metric; one of {', '.join(names)}")
        if self.best_metric and self.every < 1:
            raise ConfigError("eval.best_metric needs eval.every >= 1: with one eval at the end there is no choice")
