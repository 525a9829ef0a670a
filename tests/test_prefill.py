"""Shared-prefix scoring gives the same grade probabilities as scoring every prompt whole."""

import numpy as np
import pytest

from searchrl.relevance.format.prompt import PromptConfig, build_prompt
from searchrl.relevance.model.builds import MINILM_QWEN2, TINY
from searchrl.relevance.model.load import grade_probs, load_relevance_model
from searchrl.relevance.scoring.prefill import common_prefix_len, shared_prefix_grade_probs

PRODUCTS = [{"title": "Dell XPS 13 laptop 16 GB", "brand": "Dell", "category": "Notebook"},
            {"title": "Targus laptop bag 15.6 inch with a very long title that goes on and on", "brand": "Targus"},
            {"title": "Logitech M185", "brand": "Logitech", "attributes": {"colour": "grey"}},
            {"title": "JBL Flip 5 bluetooth speaker", "description": "waterproof portable speaker, 12 hours"},
            {"title": "HP 301 ink"}]
QUERIES = ["laptop", "laptop bag for a 15 inch notebook", "wireless mouse", "ink"]


def test_common_prefix_len_leaves_each_sequence_a_token():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert common_prefix_len([[1, 2, 3], [1, 2, 3, 4]]) == 2  # [1,2,3] must keep its last token to be scored
    assert common_prefix_len([[7, 8, 9]]) == 2
    assert common_prefix_len([[1, 2], [3, 4]]) == 0


@pytest.mark.parametrize("name", [MINILM_QWEN2, TINY])  # the quickstart's default model, and a tiny Qwen2
@pytest.mark.parametrize("cfg", [PromptConfig(), PromptConfig(instruction="Grade:", max_description_chars=0)])
def test_shared_prefix_equals_plain_prefill(name, cfg):
    model, tok = load_relevance_model(name, seed=3)
    # groups of 5, 4 (split over passes at batch 3), 1 (alone: its prefix is all but its last token) and 2
    groups = [[build_prompt(q, p, cfg) for p in PRODUCTS[: k]] for q, k in zip(QUERIES, (5, 4, 1, 2))]
    shared = shared_prefix_grade_probs(model, tok, groups, batch_size=3)
    for g, probs in zip(groups, shared):
        plain = grade_probs(model, tok, g, batch_size=len(g))
        assert probs.shape == (len(g), 4)
        np.testing.assert_allclose(probs, plain, atol=1e-4, rtol=0)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    # packing: the same groups scored with room for several per pass give the same numbers
    packed = shared_prefix_grade_probs(model, tok, groups, batch_size=16)
    for a, b in zip(shared, packed):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_prompts_without_a_common_prefix_and_progress_counts():
    model, tok = load_relevance_model(TINY)
    group = ["apple phone case", "zebra print mouse pad", "usb hub"]  # no shared first token
    seen = []
    probs = shared_prefix_grade_probs(model, tok, [group], batch_size=2, progress=seen.append)[0]
    np.testing.assert_allclose(probs, grade_probs(model, tok, group), atol=1e-4, rtol=0)
    assert sum(seen) == 3
    with pytest.raises(ValueError, match="empty prompt"):
        shared_prefix_grade_probs(model, tok, [[""]])
