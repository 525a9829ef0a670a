"""Property-based fuzzing of the config loader (config.load_config): random YAML documents and ``--set``
strings against SFTConfig, GRPOConfig and RetrieverConfig.

The property: a config either loads, with every field of its declared type (a float field holds a
finite float, a str field a str, a section its dataclass) and surviving save_config -> load_config
unchanged, or loading stops with one ConfigError (a UserError) of one line that says where: the file
(and its line, for a YAML syntax error) or the ``--set`` key, and the field. Never an exception from
inside PyYAML (a date like 2024-13-45, a 5000-digit integer, a thousand nested brackets) or a
TypeError from comparing keys of mixed types.
"""

import dataclasses
import math
import tempfile
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from searchrl.config import load_config, save_config
from searchrl.errors import ConfigError, UserError
from searchrl.relevance.train.grpo import GRPOConfig
from searchrl.relevance.train.sft import SFTConfig
from searchrl.retrieval.config import RetrieverConfig

# derandomize: the same examples in CI on every run; deadline=None: a loaded 2-core machine is slow
FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLASSES = {"sft": SFTConfig, "grpo": GRPOConfig, "retriever": RetrieverConfig}


def dotted_fields(cls, prefix="") -> list[str]:
    """Every field path of ``cls``, sections included (optim, optim.lr, run.output_dir, ...)."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        out.append(path)
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
        if dataclasses.is_dataclass(inner):
            out += dotted_fields(inner, path + ".")
    return out


PATHS = {name: dotted_fields(cls) for name, cls in CLASSES.items()}


def default_at(cls, path: str):
    value = cls()
    for p in path.split("."):
        value = getattr(value, p, None)
    return value


def near(default):
    """Values of the default's own type, so that many documents load (and the success path is tested too)."""
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(0, 2 * default + 4)
    if isinstance(default, float):
        return st.floats(0.0, max(1.0, 2 * default), exclude_min=True)
    if isinstance(default, str):
        return st.just(default)
    if default is None:
        return st.none()
    if dataclasses.is_dataclass(default):
        return st.just({})
    return st.just(default)

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10 ** 6), st.integers(), st.floats(), st.text(max_size=8),
    st.sampled_from(["1e-5", "1e999", "-inf", ".nan", "0x10", "1_000", "yes", "off", "null", "None", "~",
                     "2024-13-45", "2024-01-01", "cosine", "sft", "float32", "[1, 2]", "{a: 1}", "1,2", "",
                     "tiny-qwen2", "9" * 5000]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=6)
KEYS = st.one_of(st.text(max_size=6), st.integers(), st.none(), st.booleans())
# raw YAML text: pieces of the syntax, so that documents are often almost valid
YAML_PIECES = ["optim:", " lr:", " 1e-4", "\n", "\n  ", "- ", ": ", "[", "]", "{", "}", ",", "&a ", "*a", "!!int ",
               "!!float ", "!!binary ", "!!python/object ", "? ", "|", ">", "'", '"', "#", "%YAML 1.1\n", "---\n",
               "\t", "\x00", "\ufeff", "run:", " output_dir:", "batch_size:", "2024-13-45", "9" * 5000, "[" * 50]
raw_yaml = st.lists(st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=4)), max_size=30).map("".join)


@st.composite
def documents(draw, name):
    """A nested mapping with values at real field paths (and a few keys that are not)."""
    doc: dict = {}
    for path in draw(st.lists(st.sampled_from(PATHS[name]), max_size=6)):
        node, *parts = [doc, *path.split(".")]
        for p in parts[:-1]:
            node = node.setdefault(p, {}) if isinstance(node.get(p, {}), dict) else node
        typed = draw(st.integers(0, 9)) < 8  # mostly a value of the right type: the loads get tested too
        node[parts[-1]] = draw(near(default_at(CLASSES[name], path)) if typed else VALUES)
    if draw(st.integers(0, 4)) == 0:
        doc[draw(KEYS)] = draw(VALUES)
    return doc


overrides = st.lists(st.one_of(
    st.tuples(st.sampled_from(sorted(set().union(*PATHS.values()))), st.one_of(
        st.sampled_from(["", "1", "0", "-1", "1e-5", "1e999", "[", "]", "{", "a: b", "[1, 2]", "null", "true",
                         "2024-13-45", "9" * 5000, "&a [*a]", "!!float x", "'", "cosine", "adamw", "x=y"]),
        st.text(max_size=8))).map("=".join),
    st.text(max_size=12)), max_size=3)


def conforms(value, tp) -> bool:
    """``value`` is of the declared field type ``tp`` (recursively, for sections)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return isinstance(value, tp) and all(conforms(getattr(value, f.name), hints[f.name])
                                             for f in dataclasses.fields(tp))
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (object,)
        return isinstance(value, origin) and all(conforms(v, inner) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, float) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (bool, str):
        return isinstance(value, tp)
    return True


def _load(cls, path, sets):
    try:
        return load_config(cls, path, sets), None
    except UserError as e:  # anything else is a crash and fails the test with its traceback
        return None, e


def check_outcome(cls, cfg, err, path, sets):
    event("loaded" if err is None else "ConfigError")  # --hypothesis-show-statistics: both are reached
    if err is not None:
        msg = str(err)
        assert isinstance(err, ConfigError), f"{type(err).__name__}: {msg}"
        assert "\n" not in msg and len(msg) < 1000, msg
        assert msg.startswith((str(path), "--set", "config")), msg
        return
    assert conforms(cfg, cls), cfg
    with tempfile.TemporaryDirectory() as tmp:  # what a run saves beside its output loads back the same
        save_config(cfg, Path(tmp) / "c.yaml")
        assert load_config(cls, Path(tmp) / "c.yaml") == cfg


@FUZZ
@given(name=st.sampled_from(sorted(CLASSES)), data=st.data(), sets=st.one_of(st.just([]), overrides))
def test_any_yaml_document_loads_or_is_a_config_error(name, data, sets):
    doc = data.draw(documents(name), label="doc")
    cls = CLASSES[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        cfg, err = _load(cls, path, sets)
        check_outcome(cls, cfg, err, path, sets)


@FUZZ
@given(name=st.sampled_from(sorted(CLASSES)), text=raw_yaml, sets=overrides)
@example(name="sft", text="optim:\n  lr: [", sets=[])  # a syntax error
@example(name="grpo", text="!!int ", sets=[])  # PyYAML's int constructor raises IndexError
@example(name="sft", text="run:\n  output_dir: 2024-13-45", sets=[])  # PyYAML's date constructor raises ValueError
@example(name="sft", text="batch_size: " + "9" * 5000, sets=[])  # past int's 4300-digit limit: ValueError
@example(name="grpo", text="[" * 5000, sets=[])  # RecursionError
@example(name="retriever", text="1: 2\na: 3", sets=[])  # keys of mixed types could not be sorted
@example(name="sft", text="run: {output_dir: {a: 1}}", sets=[])  # str({'a': 1}) became the output dir
@example(name="sft", text="optim: {lr: .nan}", sets=[])  # a NaN learning rate passed every check
@example(name="sft", text="", sets=["batch_size=1e999"])  # int(inf): OverflowError
@example(name="sft", text="", sets=["optim.lr=["])  # --set values were parsed with no error handling
@example(name="sft", text="", sets=["model=null"])  # None became the model name "None"
@example(name="sft", text="", sets=["gradient_checkpointing=1", "batch_size=true"])  # True became 1
def test_any_yaml_text_loads_or_is_a_config_error(name, text, sets):
    cls = CLASSES[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        cfg, err = _load(cls, path, sets)
        check_outcome(cls, cfg, err, path, sets)


@pytest.mark.parametrize("text, sets, message", [
    ("optim:\n  lr: [", [], (r"c.yaml:line 2: invalid YAML: expected the node content, but found '<stream end>' "
                            r"\(column 8\)")),
    ("batch_size: !!int", [], r"c.yaml: invalid YAML value: "),  # PyYAML's own IndexError
    ("run:\n  output_dir: 2024-13-45", [], r"c.yaml: invalid YAML value: month must be in 1..12"),
    ("1: 2\na: 3", [], r"c.yaml: SFTConfig: unknown key\(s\) \['1', 'a'\]"),
    ("run: {output_dir: {a: 1}}", [], r"c.yaml: run.output_dir: expected str, got \{'a': 1\}"),
    ("optim: {lr: .nan}", [], r"c.yaml: optim.lr: expected a finite number, got nan"),
    ("", ["batch_size=1e999"], r"config: batch_size: expected int, got '1e999'"),
    ("", ["optim.lr=["], (r"--set optim.lr: invalid YAML: expected the node content, but found '<stream end>' "
                         r"\(column 2\)")),
    ("", ["model=null"], r"config: model: expected str, got None"),
    ("", ["batch_size=true"], r"config: batch_size: expected int, got True"),
])
def test_bad_configs_name_the_place(tmp_path, text, sets, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, path if text else None, sets)


def test_a_config_file_that_is_missing_or_not_utf8(tmp_path):
    with pytest.raises(UserError, match=r"nope.yaml: no such config file"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"model: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 \(byte 0xe9 at offset 10\)"):
        load_config(SFTConfig, tmp_path / "latin1.yaml")
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbfbatch_size: 3\n")  # Windows editors write one
    assert load_config(SFTConfig, tmp_path / "bom.yaml").batch_size == 3
