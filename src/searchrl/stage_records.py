"""Stage records: how every multi-stage run (the pipeline, the retriever's three stages) knows what it can reuse.

A stage's directory holds ``stage.json``: its status (running / done / skipped / failed), the fingerprint
of what it was run with (a sha256 of its config and of its inputs' fingerprints), its wall time and a
summary. A stage whose record says done with the same fingerprint is reused; any other record means
run it (again). Records are written aside and renamed, so a kill leaves the previous one whole.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

RECORD = "stage.json"


def fingerprint(parts: dict) -> str:
    """16 hex digits of the sha256 of ``parts`` (JSON, keys sorted; non-JSON values by str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_record(stage_dir: str | Path) -> dict:
    path = Path(stage_dir) / RECORD
    return json.loads(path.read_text()) if path.exists() else {}


def write_record(stage_dir: str | Path, **fields) -> None:
    d = Path(stage_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{RECORD}.tmp"
    tmp.write_text(json.dumps(fields, indent=1, default=str) + "\n")
    tmp.replace(d / RECORD)


def reusable(stage_dir: str | Path, fp: str) -> dict | None:
    """The record when the stage is done with this fingerprint (reuse it), else None (run it)."""
    rec = read_record(stage_dir)
    return rec if rec.get("status") == "done" and rec.get("fingerprint") == fp else None
