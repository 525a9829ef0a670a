"""Results pages: the header names the command, date, machine and wall time; the pipeline's pages carry its tables."""

import datetime

from searchrl.eval.report_example import example_report
from searchrl.eval.results_page import ResultsPage, markdown_table
from searchrl.pipeline.results import write_results_pages


def test_a_page_states_command_date_machine_and_wall_time_and_escapes_cells(tmp_path):
    page = ResultsPage("demo", "Demo", command="python make_it.py --fast")
    page.table(["system", "score"], [["a|b", 0.12345], ["c", 0.001234], ["d", None]], caption="cap")
    path = page.write(tmp_path, wall_seconds=90)
    text = path.read_text()
    assert path.name == "demo.md" and text.startswith("# Demo\n")
    assert "`python make_it.py --fast`" in text and datetime.date.today().isoformat() in text
    assert "wall time 1.5 min" in text and "cores" in text
    assert "| a\\|b | 0.123 |" in text and "| c | 0.0012 |" in text and "| d |  |" in text
    assert not list(tmp_path.glob("*.tmp"))


def test_markdown_table_has_a_separator_per_column():
    lines = markdown_table(["x", "y", "z"], [[1, 2, 3]]).splitlines()
    assert lines[1] == "|---|---|---|" and lines[2] == "| 1 | 2 | 3 |"


def test_the_pipeline_writes_its_relevance_retrieval_and_timing_pages(tmp_path):
    doc = example_report()
    paths = write_results_pages(doc, tmp_path)
    assert sorted(p.name for p in paths) == ["relevance.md", "retrieval.md", "timing.md"]
    relevance = (tmp_path / "relevance.md").read_text()
    for row in doc["relevance"]["rows"]:
        assert f"| {row['system']} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} |" in relevance
    retrieval = (tmp_path / "retrieval.md").read_text()
    assert all(f"| {r['system']} |" in retrieval for r in doc["retrieval"]["rows"])
    timing = (tmp_path / "timing.md").read_text()
    assert "| relevance_sft | ran | 23.5 min |" in timing
    assert doc["run"]["command"] in timing
    doc["stages"].append({"name": "report", "status": "running", "message": "writing this report",
                          "wall_seconds": None})  # as collect._stages gives the stage rendering the page
    write_results_pages(doc, tmp_path)
    timing = (tmp_path / "timing.md").read_text()  # any config's page, each status with its record's message
    assert timing.startswith("# Timing of the pipeline's stages")
    assert "| report | running (writing this report) |  |" in timing


def test_the_speed_page_renders_every_benchmarks_figures(tmp_path):
    import importlib.util
    import json
    from pathlib import Path
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("speed_page", bench / "speed_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.main(["--from-json", "--out", str(tmp_path)]).read_text()
    for path in bench.glob("results_*.json"):
        figures = json.loads(path.read_text())["figures"]
        assert f"## bench_{path.stem.removeprefix('results_')}" in text
        assert all(f"| {k} |" in text for k, v in figures.items() if not isinstance(v, (dict, list)))
    if (bench / "results_scoring_llm.json").exists():  # a variant names the arguments that made it
        assert "`python benchmarks/bench_scoring.py --model runs/llm/export/model --no-server --quick" in text
    module.ROOT = tmp_path  # no runs/llm here: the variant is skipped, not run on the default model
    assert module.run_bench("scoring_llm", quick=False) == 0.0
