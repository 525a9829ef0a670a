"""The scorer config beside a model, and the refusal to load pickled weights."""

import json

import pytest
import torch

from searchrl.relevance.format.prompt import PromptConfig
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.scorer_config import (
    TEMPLATE_VERSION,
    ScorerConfig,
    check_safetensors,
    load_scorer_config,
    save_scorer_config,
    update_scorer_config,
)


def test_roundtrip_update_and_defaults_for_older_files(tmp_path):
    save_scorer_config(tmp_path, ScorerConfig(prompt=PromptConfig(max_attributes=2), beta=0.3))
    cfg = load_scorer_config(tmp_path)
    assert cfg.prompt.max_attributes == 2 and cfg.beta == 0.3 and cfg.template_version == TEMPLATE_VERSION
    assert update_scorer_config(tmp_path, beta=0.7).beta == 0.7 and load_scorer_config(tmp_path).beta == 0.7
    # a config written before beta existed (prompt + chat_template only) loads with the defaults
    (tmp_path / "relevance_config.json").write_text(json.dumps({"prompt": {"order": "label_first"},
                                                                "chat_template": False}))
    cfg = load_scorer_config(tmp_path)
    assert cfg.beta == 0.5 and cfg.chat_template is False


@pytest.mark.parametrize("raw, match", [({"bogus": 1}, "unknown field"), ({"template_version": 99}, "newer"),
                                        ({"beta": 1.5}, "beta"), ({"prompt": {"order": "sideways"}}, "order"),
                                        ({"grade_tokens": ["<A>", "<B>", "<C>", "<D>"]}, "grade_tokens")])
def test_bad_configs_are_refused_naming_the_file(tmp_path, raw, match):
    (tmp_path / "relevance_config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=match) as e:
        load_scorer_config(tmp_path)
    assert "relevance_config.json" in str(e.value)


def test_missing_config_says_what_the_directory_is_not(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a searchrl relevance model"):
        load_scorer_config(tmp_path)


def test_pickled_weights_are_never_loaded(tmp_path, tiny_model_dir):
    model, tok = load_relevance_model(str(tiny_model_dir))
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights \(found \['pytorch_model.bin'\]"):
        check_safetensors(tmp_path)
    with pytest.raises(ValueError, match="safetensors only"):
        load_relevance_model(str(tmp_path))
    check_safetensors(tiny_model_dir)  # the saved model is fine
