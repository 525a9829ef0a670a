from dataclasses import dataclass, field

import pytest

from searchrl.config import ConfigError, load_config, save_config


@dataclass
class Optim:
    lr: float = 1e-4  # learning rate
    warmup_steps: int = 0


@dataclass
class Train:
    model: str = "tiny"
    steps: int = 10
    bf16: bool = False
    ks: list[int] = field(default_factory=lambda: [10])
    eval_split: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_yaml_then_overrides_with_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: qwen\nsteps: 5\noptim: {lr: 0.001}\n")
    cfg = load_config(Train, p, ["steps=7", "optim.lr=2e-5", "bf16=true", "ks=10,100", "eval_split=valid"])
    assert cfg == Train(model="qwen", steps=7, bf16=True, ks=[10, 100], eval_split="valid",
                        optim=Optim(lr=2e-5))
    save_config(cfg, tmp_path / "out.yaml")
    assert load_config(Train, tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize("overrides, match", [
    (["stpes=3"], r"unknown key\(s\) \['stpes'\]"),
    (["optim.beta=1"], r"optim: unknown key\(s\) \['beta'\]"),
    (["steps=many"], r"steps: expected int, got 'many'"),
    (["bf16=maybe"], r"bf16: expected true/false"),
    (["noequals"], "expected key=value"),
])
def test_bad_keys_and_values_are_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(Train, None, overrides)


def test_unknown_key_in_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim: {lr: 1, warmup: 3}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: optim: unknown key\(s\) \['warmup'\]"):
        load_config(Train, p)


def test_a_section_given_in_part_keeps_its_owners_defaults():
    """SFT's optim section defaults (linear, warmup 0.06, 2 epochs; OptimConfig's own are cosine, no warmup, 1 epoch)
    survive --set optim.lr=...; GRPO's differ from SFT's."""
    from searchrl.relevance.train.grpo import GRPOConfig
    from searchrl.relevance.train.sft import SFTConfig
    sft = load_config(SFTConfig, None, ["optim.lr=1e-3"])
    assert sft.optim.lr == 1e-3 and sft.optim.schedule == "linear" and sft.optim.warmup_ratio == 0.06
    assert sft.optim.epochs == 2
    grpo = load_config(GRPOConfig, None, ["optim.lr=1e-3", "rollout.group_size=4"])
    assert grpo.optim.schedule == "constant_with_warmup" and grpo.optim.max_steps == 100
    assert grpo.rollout.group_size == 4 and grpo.rollout.prompts_per_step == 8
    assert grpo.run.output_dir == "runs/grpo" and sft.run.output_dir == "runs/sft"
    with pytest.raises(ConfigError, match=r"optim: unknown key\(s\) \['lrr'\]"):
        load_config(SFTConfig, None, ["optim.lrr=1"])


def test_the_trainer_defaults_are_the_documented_recipe():
    """SFTConfig() is the default relevance model: the packaged sft_chorus.yaml and the quickstart's sft section
    change nothing but where it is written; the tiny test model is a fixture tests name (conftest.TINY_SFT)."""
    import dataclasses
    from pathlib import Path

    import searchrl
    from searchrl.pipeline import load_pipeline_config
    from searchrl.relevance.train.grpo import GRPOConfig
    from searchrl.relevance.train.sft import SFTConfig
    packaged = Path(searchrl.__file__).parent / "configs"
    assert load_config(SFTConfig, packaged / "sft_chorus.yaml") == SFTConfig()
    quickstart = load_pipeline_config("quickstart").sft
    assert dataclasses.replace(quickstart, run=SFTConfig().run) == SFTConfig()
    assert SFTConfig().model == "minilm-prefix" and GRPOConfig().model == "runs/sft/final"


def test_a_when_set_field_counts_in_a_runs_identity_only_once_set():
    import dataclasses

    from searchrl.config import identity, when_set

    @dataclasses.dataclass
    class Inner:
        rank: int = 32
        copy: bool = when_set(False)

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        sizes: tuple = (1, 2)

    before = {"inner": {"rank": 32}, "sizes": (1, 2)}  # the identity of a run made before `copy` existed
    assert identity(Outer()) == before
    assert identity(Outer(Inner(copy=True)))["inner"] == {"rank": 32, "copy": True}
    assert identity(Outer(Inner(rank=8)))["inner"] == {"rank": 8}  # every plain field counts, default or not
    assert dataclasses.asdict(Outer())["inner"]["copy"] is False  # saved configs still name it
