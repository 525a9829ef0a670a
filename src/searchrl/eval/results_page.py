"""A results page under docs/results/: written by the command that measures it, never by hand.

Every page states the command that wrote it, the date, the machine (CPU, cores, torch threads, GPU),
the wall time, then its tables and notes. Re-running the command regenerates the page whole.

    page = ResultsPage("retrieval", "Dense retrieval on Chorus", command="bash scripts/quickstart.sh")
    page.table(["system", "nDCG@10"], [["BM25", 0.770], ["SFT", 0.666]], caption="test split")
    page.write("docs/results")  # -> docs/results/retrieval.md

Simplifies: numbers are formatted with 3 decimals (4 for values below 0.01); a table is a list of rows.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path


def machine() -> str:
    """One line: CPU model, cores, torch threads, and the GPU when there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu, f"{os.cpu_count()} cores"]
    try:
        import torch
        parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    return ", ".join(parts)


def cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if 0 < abs(value) < 0.01 else f"{value:.3f}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class ResultsPage:
    name: str  # file stem: docs/results/<name>.md
    title: str
    command: str  # the command a reader runs to regenerate the page
    started: float = field(default_factory=time.time)
    blocks: list[str] = field(default_factory=list)

    def section(self, heading: str, text: str = "") -> None:
        self.blocks.append(f"## {heading}" + (f"\n\n{text.strip()}" if text else ""))

    def text(self, text: str) -> None:
        self.blocks.append(text.strip())

    def table(self, columns: list[str], rows: list[list], caption: str = "") -> None:
        self.blocks.append((f"{caption.strip()}\n\n" if caption else "") + markdown_table(columns, rows))

    def render(self, wall_seconds: float | None = None) -> str:
        wall = time.time() - self.started if wall_seconds is None else wall_seconds
        head = [f"# {self.title}", "",
                f"Written by `{self.command}` on {datetime.date.today().isoformat()}; "
                f"wall time {wall / 60:.1f} min; machine: {machine()}.",
                "Regenerate it with the same command; do not edit it by hand."]
        return "\n".join(head) + "\n\n" + "\n\n".join(self.blocks) + "\n"

    def write(self, directory: str | Path, wall_seconds: float | None = None) -> Path:
        path = Path(directory) / f"{self.name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".md.tmp")
        tmp.write_text(self.render(wall_seconds))
        tmp.replace(path)  # a crash mid-write leaves the previous page whole
        return path
