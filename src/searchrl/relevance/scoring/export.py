"""``searchrl export``: a trained model directory -> a deployable one.

The export holds exactly what serving needs: the weights as safetensors, config and
generation config, the tokenizer files and the scorer config (grade tokens, beta,
prompt-template version). ``transformers`` ``from_pretrained`` loads it as it is; no
optimizer state, training logs or pickles travel with it. The source is re-saved
through ``save_pretrained`` rather than copied, so a checkpoint with extra files
exports clean, and the exported scorer is checked to give the source's probabilities.

Simplifies: the export is written aside and renamed into place (no partial export
is ever left at the destination); sharding follows ``save_pretrained``'s defaults.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from searchrl.errors import OutputExistsError
from searchrl.relevance.model.load import load_relevance_model
from searchrl.relevance.model.scorer_config import check_safetensors, load_scorer_config, save_scorer_config

CHECK_PAIRS = [("usb c charging cable", {"title": "Anker USB-C to USB-C cable 1 m", "brand": "Anker"}),
               ("usb c charging cable", {"title": "Logitech wireless mouse", "brand": "Logitech"})]


def export_model(model_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the deployable copy of ``model_dir`` to ``out_dir``; returns ``out_dir``."""
    from searchrl.relevance.scoring.scorer import RelevanceScorer
    src, out = Path(model_dir), Path(out_dir)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists (pass overwrite=True / --overwrite to replace it)")
    check_safetensors(src)
    config = load_scorer_config(src)
    model, tok = load_relevance_model(str(src))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    save_scorer_config(tmp, config)
    before = RelevanceScorer(model, tok, config).grade_probs([(q, [p]) for q, p in CHECK_PAIRS])
    after = RelevanceScorer.load(tmp).grade_probs([(q, [p]) for q, p in CHECK_PAIRS])
    if not all(np.allclose(a, b, atol=1e-6) for a, b in zip(before, after)):
        raise RuntimeError(f"{tmp}: the exported model scores differently from {src}; export aborted")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
