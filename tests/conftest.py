"""Shared fixtures: the read-only data mirror beside the checkout, and an isolated cache."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("SEARCHRL_DATA_MIRROR", REPO.parent / "shared" / "data"))
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def mirror() -> Path:
    if not (MIRROR / "chorus" / "1.json.zip").exists():
        pytest.skip(f"no data mirror at {MIRROR}")
    return MIRROR


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own empty cache; the mirror must be passed explicitly."""
    home = tmp_path_factory.mktemp("searchrl_home")
    monkeypatch.setenv("SEARCHRL_HOME", str(home))
    monkeypatch.delenv("SEARCHRL_DATA_MIRROR", raising=False)
    return home


@pytest.fixture(scope="session")
def chorus_dir(tmp_path_factory):
    """Chorus prepared once per session (shared read-only by the tests that need it)."""
    if not (MIRROR / "chorus" / "1.json.zip").exists():
        pytest.skip(f"no data mirror at {MIRROR}")
    from searchrl.data.prepare import prepare
    out = tmp_path_factory.mktemp("chorus")
    os.environ.setdefault("SEARCHRL_HOME", str(tmp_path_factory.mktemp("session_home")))
    prepare("chorus", out, MIRROR)
    return out


TINY_PRODUCTS = [
    ("p1", "Dell XPS 13 laptop 16 GB", "Dell", "Notebook"), ("p2", "HP Pavilion 15 notebook silver", "HP", "Notebook"),
    ("p3", "Targus laptop bag 15.6 inch", "Targus", "Bag"), ("p4", "Logitech wireless mouse M185", "Logitech", "Mouse"),
    ("p5", "JBL Flip 5 bluetooth speaker", "JBL", "Speaker"), ("p6", "Anker USB-C cable 1m", "Anker", "Cable"),
    ("p7", "Samsung 32GB microSD memory card", "Samsung", "Memory card"), ("p8", "HP 301 black ink cartridge", "HP", "Ink"),
]
TINY_JUDGMENTS = {  # query -> {product: grade}
    "laptop": {"p1": 4, "p2": 4, "p3": 2, "p4": 1}, "laptop bag": {"p3": 4, "p1": 2, "p5": 1, "p6": 1},
    "wireless mouse": {"p4": 4, "p1": 1, "p6": 1, "p5": 1}, "bluetooth speaker": {"p5": 4, "p4": 1, "p7": 1, "p2": 1},
    "usb c cable": {"p6": 4, "p4": 1, "p8": 1, "p3": 1}, "memory card": {"p7": 4, "p6": 1, "p1": 1, "p8": 1},
    "hp ink": {"p8": 4, "p2": 2, "p7": 1, "p5": 1}, "dell laptop": {"p1": 4, "p2": 3, "p3": 2, "p8": 1},
    "speaker": {"p5": 4, "p3": 1, "p6": 1, "p1": 1}, "hp laptop": {"p2": 4, "p1": 3, "p8": 2, "p4": 1},
}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A 10-query, 8-product dataset in canonical form (through the importer, as a user would)."""
    import csv

    from searchrl.data.importer import import_dataset, parse_mapping
    d = tmp_path_factory.mktemp("tiny_data")
    with open(d / "products.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "title", "brand", "category"])
        w.writerows(TINY_PRODUCTS)
    with open(d / "judgments.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "product_id", "label"])
        for q, grades in TINY_JUDGMENTS.items():
            w.writerows((q, p, g) for p, g in grades.items())
    mapping = parse_mapping(files={"products": str(d / "products.csv"), "judgments": str(d / "judgments.csv")})
    import_dataset(mapping, d / "ds", name="tiny", fractions=(0.6, 0.2, 0.2))
    return d / "ds"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved random tiny Qwen2 relevance model with a scorer config (default prompt: a long shared prefix)."""
    from searchrl.relevance.model.load import load_relevance_model
    from searchrl.relevance.model.scorer_config import ScorerConfig, save_scorer_config
    d = tmp_path_factory.mktemp("tiny_model")
    model, tok = load_relevance_model("tiny-qwen2", seed=1)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    save_scorer_config(d, ScorerConfig())
    return d


def retriever_config(**flat):
    """A RetrieverConfig from flat test keywords: the optim and run ones go into their sections."""
    from searchrl.config import config_from_dict
    from searchrl.retrieval.config import RetrieverConfig
    optim_keys = ("lr", "warmup_ratio", "schedule", "max_steps", "epochs")
    run_keys = ("output_dir", "progress", "seed", "stop_at_step", "resume", "save_every")
    return config_from_dict(RetrieverConfig, {
        **{k: v for k, v in flat.items() if k not in optim_keys + run_keys},
        "optim": {k: flat[k] for k in optim_keys if k in flat}, "run": {k: flat[k] for k in run_keys if k in flat}})


@pytest.fixture
def one_thread():
    """One torch thread: a 64-wide model runs faster so (40 s, not minutes on a busy machine), and the float
    reduction order, hence the exact numbers, does not depend on how many cores the machine has."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}  # a small LoRA for the trainers


def assert_only_adapters_moved(policy, start, grade_ids: list[int]) -> None:
    """``policy`` (a peft model mid-training) trains LoRA and grade-token parameters only, and they have moved;
    every other weight still equals the starting model's."""
    start_sd = start.state_dict()
    start_rows = start_sd["model.embed_tokens.weight"][grade_ids]  # [4, H]
    moved = set()
    for name, p in policy.named_parameters():
        if p.requires_grad:
            assert "lora_" in name or "trainable_tokens" in name, name
            if "lora_B" in name and p.abs().max() > 0:  # lora_B starts at zero
                moved.add("lora")
            if "trainable_tokens_delta" in name and not torch.equal(p, start_rows):
                moved.add("grade_rows")  # the delta starts as the starting rows
        else:
            key = name.removeprefix("base_model.model.").replace(".token_adapter", "").replace(".base_layer", "")
            assert torch.equal(p, start_sd[key]), name
    assert moved == {"lora", "grade_rows"}, moved


# The tiny test model: a random Qwen2 over MiniLM's vocabulary (seconds to train), and the SFT settings tests train
# it with. SFTConfig's own defaults are the default relevance model's recipe; a test names this fixture instead.
TINY_SFT = {"model": "tiny-qwen2", "prefix": {"mask": "late"}, "trim_vocab": False, "freeze_layers": 0, "head_lr": 0.0,
            "prompt": {"layout": "lines", "max_description_chars": 300, "max_attributes": 8, "max_note_chars": 160},
            "rank_loss_weight": 0.0, "query_chunk": 0, "batch_size": 8, "label_loss_weight": 1.0,
            "balance_grades": 0.0, "cot_fraction": 1.0, "max_length": 1024,
            "optim": {"epochs": 1.0, "warmup_ratio": 0.03, "schedule": "cosine"},
            "eval": {"max_examples": 512}, "run": {"save_every": 0, "save_total_limit": 0, "resume": False}}


def tiny_sft(config: dict | None = None) -> dict:
    """TINY_SFT with ``config`` merged over it (sections merge key by key): an SFTConfig mapping for the tiny model."""
    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return out
    return merge(TINY_SFT, config or {})


def tiny_sft_sets(config: dict | None = None) -> list[str]:
    """tiny_sft(config) as ``--set key=value`` strings for the command line."""
    def flat(tree: dict, prefix: str = "") -> list[str]:
        return [s for k, v in tree.items()
                for s in (flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}={v}"])]
    return flat(tiny_sft(config))


def sft_config_for_tests(config: dict):
    """SFTConfig of tiny_sft(config): the test settings, with ``config``'s keys (another model, too) over them."""
    from searchrl.config import config_from_dict
    from searchrl.relevance.train.sft import SFTConfig
    return config_from_dict(SFTConfig, tiny_sft(config))
