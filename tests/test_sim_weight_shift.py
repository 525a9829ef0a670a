"""experiments/sim_weight_shift.py: the similarity-weight shift it evaluates is the one the model itself would
compute."""

import numpy as np
import torch

from experiments import sim_weight_shift as script
from searchrl.relevance.format.prompt import PromptConfig, build_prompt
from searchrl.relevance.model.load import grade_probs, load_relevance_model
from searchrl.relevance.model.prefix_lm import MINILM_PREFIX

PRODUCTS = [{"title": "Dell XPS 13 laptop", "brand": "Dell"}, {"title": "Targus laptop bag", "brand": "Targus"},
            {"title": "Logitech wireless mouse", "brand": "Logitech"}]


def test_shifting_the_probabilities_equals_shifting_the_models_similarity_weights():
    model, tok = load_relevance_model(MINILM_PREFIX)
    model.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        model.sim_w.add_(torch.randn(4))  # a trained-looking readout, not the symmetric start
    prompts = [build_prompt("laptop", p, PromptConfig(layout="segments", max_note_chars=0)) for p in PRODUCTS]

    def probs(delta: float) -> np.ndarray:
        with torch.no_grad():
            model.sim_w[2:] += delta
            out = grade_probs(model, tok, prompts)
            model.sim_w[2:] -= delta
        return out

    p0 = probs(0.0)
    sim = script.good_log_odds(probs(1.0)) - script.good_log_odds(p0)  # how the script reads the cosine
    assert np.ptp(sim) > 0.01  # the products' cosines differ, so the shift re-ranks
    np.testing.assert_allclose(script.shifted(p0, sim, 3.7), probs(3.7), atol=1e-5)
