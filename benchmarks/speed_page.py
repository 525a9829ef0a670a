"""Run every benchmark and write docs/results/speed.md from their figures.

Each ``bench_*.py`` writes ``{"figures": {...}}`` to ``benchmarks/results_<name>.json``; this runs
them one after another (nothing else should run on the machine: their figures are speeds) and
renders one page with a table per benchmark, each naming the command that produced it.

Usage: ``python benchmarks/speed_page.py [--quick] [--only scoring server ...] [--from-json]``.
``--from-json`` renders the page from the JSON files already there (each bench's last run) without
running anything; the page says so. A full run takes about 30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))  # the page writer, when run without an installed searchrl

from searchrl.eval.results_page import ResultsPage  # noqa: E402

BENCHES = ["scoring", "server", "grpo", "retriever", "pretrained", "scoring_llm", "sft"]
# entries that run another entry's script with arguments of their own; scoring_llm: the scoring figures for
# SmolLM2-135M as `searchrl pipeline --config llm` trained it (skipped where runs/llm/export/model is absent), at
# --quick size on one thread (its decode runs at under one pair/s), without the server
LLM_MODEL = "runs/llm/export/model"
VARIANTS = {"scoring_llm": ("scoring", ["--model", LLM_MODEL, "--no-server", "--quick", "--threads", "1"], LLM_MODEL)}


def first_line(path: Path) -> str:
    text = path.read_text()
    doc = text.split('"""')[1] if text.startswith('"""') else ""
    return doc.strip().splitlines()[0] if doc.strip() else path.stem


def bench_command(name: str) -> list[str]:
    """The script and arguments that write results_NAME.json, relative to the repository root."""
    script, args, _ = VARIANTS.get(name, (name, [], None))
    return [f"benchmarks/bench_{script}.py", *args, "--json", f"benchmarks/results_{name}.json"]


def run_bench(name: str, quick: bool) -> float:
    cmd = [sys.executable, *bench_command(name)]
    needs = VARIANTS.get(name, (None, None, None))[2]
    if needs and not (ROOT / needs).exists():
        print(f"[speed] {name}: skipped, {needs} is not there")
        return 0.0
    if quick and name != "pretrained" and "--quick" not in cmd:  # bench_pretrained has no --quick: small already
        cmd.append("--quick")
    started = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.time() - started


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each benchmark's --quick setting")
    ap.add_argument("--only", nargs="+", choices=BENCHES, default=BENCHES)
    ap.add_argument("--from-json", action="store_true", help="render from the JSON files already there")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results"))
    a = ap.parse_args(argv)
    command = "python benchmarks/speed_page.py" + (" --quick" if a.quick else "")
    page = ResultsPage("speed", "Speed: scoring, serving, SFT, GRPO, retriever and model loading", command)
    if a.from_json:
        page.text("Rendered from each benchmark's last run (benchmarks/results_*.json, written by the command "
                  "named above each table); the date above is the rendering's.")
    seconds = {} if a.from_json else {name: run_bench(name, a.quick) for name in a.only}
    for name in a.only:
        path = HERE / f"results_{name}.json"
        if not path.exists():
            continue
        figures = json.loads(path.read_text())["figures"]
        wall = f"; wall time {seconds[name] / 60:.1f} min" if name in seconds else ""
        script = VARIANTS.get(name, (name,))[0]
        page.section(f"bench_{name}", f"{first_line(HERE / f'bench_{script}.py')} "
                     f"(`python {' '.join(bench_command(name))}`{wall})")
        page.table(["figure", "value"], [[k, v] for k, v in figures.items() if not isinstance(v, (dict, list))])
    out = page.write(a.out, sum(seconds.values()) if seconds else 0.0)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
