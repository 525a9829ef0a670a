"""experiments/decoder_grade_signal.py: the zero-shot answer score and the probe's state, read in batches as from
each prompt alone."""

import numpy as np
import torch

from experiments import decoder_grade_signal as script
from searchrl.relevance.model.builds import TINY
from searchrl.relevance.model.load import load_relevance_model

PAIRS = [("usb c cable", {"title": "anker usb c to usb c cable 1m", "brand": "anker"}),
         ("laptop", {"title": "stand"}),
         ("red wireless mouse for macbook", {"title": "logitech m185 wireless mouse grey", "category": "mice"})]


def test_answer_scores_read_each_prompts_own_last_position_under_left_padding():
    model, tok = load_relevance_model(TINY)
    model.eval()
    prompts = [script.yes_no_prompt(tok, q, p) for q, p in PAIRS]
    assert "Category: mice" in prompts[2] and all(p.endswith(script.QUESTION + "\nAnswer:") for p in prompts)
    preference, states = script.answer_scores(model, tok, prompts, batch_size=3)  # three lengths: padded rows
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    with torch.no_grad():
        for i, p in enumerate(prompts):
            out = model(input_ids=torch.tensor([tok.encode(p, add_special_tokens=False)]), output_hidden_states=True)
            alone = out.logits[0, -1]
            assert abs(preference[i] - float(alone[yes] - alone[no])) < 1e-4
            np.testing.assert_allclose(states[i], out.hidden_states[-1][0, -1].numpy(), atol=1e-4)
