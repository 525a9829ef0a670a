"""Checkpoints every trainer writes, verified before they are used.

``checkpoint-STEP/`` holds what the trainer's ``save_weights(path)`` writes (HF
``save_pretrained``, a SentenceTransformer, ...), ``trainer_state.pt`` (optimizer,
scheduler, step, RNG states, config, per-rank extras) and ``manifest.json``: the sha256
and size of every other file, written last and atomically. The directory is written
aside as ``checkpoint-STEP.tmp`` and renamed when complete, so a crash (or a full disk)
never leaves half of one under the real name; when a write fails the .tmp is removed, and a
full disk is an OutputError that names the file (:func:`write_aside`). Resume verifies the manifest
(:func:`latest_valid_checkpoint`): a checkpoint with a missing, truncated or altered file
is skipped with a warning that names the file, and the previous one is used; when none is
left, resume stops with an error rather than load half-written weights or silently start
over.

Simplifies: verification re-reads every file (seconds for a small model, minutes for a
7B one); no remote storage.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from searchrl import faults
from searchrl.errors import OutputError, UserError, disk_full

MANIFEST = "manifest.json"
STATE_FILE = "trainer_state.pt"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(directory: Path) -> Path:
    """manifest.json with the sha256 and size of every file under ``directory``, written atomically, last."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {str(p.relative_to(directory)): {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files}
    tmp = directory / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"files": entries}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST)
    return directory / MANIFEST


def verify_checkpoint(path: Path) -> str | None:
    """None when every file the manifest lists is there with its size and sha256; else what is wrong."""
    manifest = path / MANIFEST
    if not manifest.exists():
        return f"{manifest}: missing (the checkpoint was never completed)"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"{manifest}: unreadable ({e})"
    for name, meta in entries.items():
        f = path / name
        if not f.is_file():
            return f"{f}: missing"
        if f.stat().st_size != meta["bytes"]:
            return f"{f}: {f.stat().st_size} bytes, the manifest says {meta['bytes']} (truncated?)"
        if _sha256(f) != meta["sha256"]:
            return f"{f}: sha256 differs from the manifest (corrupted)"
    if STATE_FILE not in entries:
        return f"{path / STATE_FILE}: not in the manifest"
    return None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint directories in output_dir (complete or not: see latest_valid_checkpoint), oldest first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def latest_valid_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest checkpoint whose manifest verifies; damaged ones are skipped with a warning naming the file.

    None when there is no checkpoint at all; an error when there are some and none is valid."""
    found = checkpoints(output_dir)
    problems = []
    for ckpt in reversed(found):
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        problems.append(problem)
        warnings.warn(f"skipping damaged checkpoint {ckpt.name}: {problem}", stacklevel=2)
        print(f"warning: skipping damaged checkpoint {ckpt.name}: {problem}", flush=True)
    if found:
        raise UserError(f"{output_dir}: no valid checkpoint to resume from ({len(found)} damaged: "
                        f"{'; '.join(problems)}); remove them, or run without resume to start over")
    return None


def write_aside(path: Path, steps: list[tuple[str, Callable[[Path], None]]], what: str, intact: str) -> Path:
    """Run each ``(name, write)`` step as ``write(tmp)`` into ``path.tmp``, then rename it to ``path``: never
    half of it under the real name.

    On any failure the .tmp directory is removed (on a full disk it would keep the space it took); a
    write that ran out of space becomes an OutputError naming the file (the one the OSError names, else
    the step's, with the file it wrote last: safetensors deletes its partial file), that ``what`` was not
    saved and ``intact`` (what is still there), with the original error as its ``__cause__``."""
    tmp = path.with_name(path.name + ".tmp")
    step, kind = "its directory", path.name.split("-")[0]  # "checkpoint" or "final": the fault points' prefix
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for step, write in steps:
            write(tmp)
            faults.point(f"{kind}:{step}")
        faults.point(f"{kind}:rename")
    except BaseException as e:
        full = disk_full(e)
        failed = _failed_file(tmp, full[1] if full else None, step)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is None:
            raise
        raise OutputError(f"{path}: {what} not saved: writing {failed} failed: {full[0]}; nothing of it is left "
                          f"on disk, {intact}") from e
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _failed_file(tmp: Path, named: str | None, step: str) -> str:
    """What a failed write was writing: the file the OSError names, else the step (and its newest file)."""
    if named:
        p = Path(named)
        return str(p.relative_to(tmp)) if p.is_relative_to(tmp) else str(p)
    try:
        files = [p for p in tmp.rglob("*") if p.is_file()]
        newest = str(max(files, key=lambda p: p.stat().st_mtime_ns).relative_to(tmp)) if files else None
    except OSError:
        newest = None
    return step if newest is None or newest == step else f"{step} (last written: {newest})"


def save_checkpoint(path: Path, save_weights: Callable[[Path], None], optimizer, scheduler, step: int, config,
                    extra: dict | None = None, keep: int = 0) -> Path:
    """``checkpoint-STEP/``: what save_weights writes + trainer_state.pt + manifest.json (module docstring).

    With ``keep`` > 0 only the newest ``keep`` complete checkpoints stay afterwards. A full disk raises an
    OutputError and leaves the earlier checkpoints as they were (write_aside)."""
    def save_state(tmp: Path) -> None:
        # through a Python file: torch's own file writer reports a failed write without its errno
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                        "rng": rng_state(),
                        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
                        **(extra or {})}, f)

    write_aside(path, [("the weights", save_weights), (STATE_FILE, save_state), (MANIFEST, write_manifest)],
                f"checkpoint {path.name}",
                "and the earlier checkpoints are untouched (resume uses the newest valid one)")
    if keep:  # the one just written is among the newest `keep`
        for old in checkpoints(path.parent)[:-keep]:
            shutil.rmtree(old)
    return path


def load_trainer_state(path: Path) -> dict:
    # our own file (its sha256 was just verified against the manifest), so unpickling it is safe
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)


def trim_metrics(path: Path, step: int) -> None:
    # lines written after the checkpoint we resume from would otherwise appear twice; a line that does not
    # parse is the torn end of a write the disk had no room for
    if path.exists():
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if _step_of(ln) <= step]
        path.write_text("".join(ln + "\n" for ln in lines))


def _step_of(line: str) -> float:
    try:
        row = json.loads(line)
    except ValueError:
        return math.inf
    return row.get("step", 0) if isinstance(row, dict) and isinstance(row.get("step", 0), int) else math.inf
