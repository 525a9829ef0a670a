"""`searchrl export`: a directory transformers loads as-is, safetensors only, same scores."""

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from searchrl.cli import main
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.scorer_config import update_scorer_config
from searchrl.relevance.scoring.export import export_model
from searchrl.relevance.scoring.scorer import RelevanceScorer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def test_export_loads_with_plain_transformers_and_scores_the_same(tiny_model_dir, tmp_path):
    src = tmp_path / "src"
    model, tok = load_relevance_model(str(tiny_model_dir))
    model.save_pretrained(src)
    tok.save_pretrained(src)
    (src / "relevance_config.json").write_text((tiny_model_dir / "relevance_config.json").read_text())
    update_scorer_config(src, beta=0.35)
    (src / "trainer_state.pt").write_bytes(b"optimizer state that must not travel")
    out = tmp_path / "export"
    assert main(["export", "--model", str(src), "--output", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "relevance_config.json" in names and "tokenizer.json" in names
    assert not [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    assert json.loads((out / "relevance_config.json").read_text())["beta"] == 0.35
    plain = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)  # as-is, no searchrl code
    assert plain.config.vocab_size == model.config.vocab_size
    q, products = "laptop bag", [{"title": "Targus laptop bag"}, {"title": "Dell XPS 13"}]
    a = RelevanceScorer.load(src).score(q, products)
    b = RelevanceScorer.load(out).score(q, products)
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in a],
                               [list(r["probabilities"].values()) for r in b], atol=1e-6)
    with pytest.raises(FileExistsError):
        export_model(src, out)
    export_model(src, out, overwrite=True)
