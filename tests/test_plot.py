"""Learning-curve plots: metrics.jsonl parsing, smoothing, PNG output, --run parsing."""

import json

import matplotlib.image
import numpy as np
import pytest

from searchrl.eval.plot import curve_figure, moving_average, parse_run_args, plot_runs, read_metrics, series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(path, rows, tail=""):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def train_rows(n, eval_every=5, reward=True):
    # the trainers' format: eval metrics merged into the row of the step they were taken at
    rows = []
    for s in range(1, n + 1):
        row = {"step": s, "loss": 1.0 / s, "lr": 1e-5}
        if reward:
            row["reward_mean"] = 0.5 + 0.4 * ((s * 7) % 5) / 4
        if s % eval_every == 0:
            row["valid_macro_f1"] = 0.3 + 0.01 * s
        rows.append(row)
    return rows


# ---------------------------------------------------------------- smoothing

def test_moving_average_by_hand():
    assert moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert moving_average([1, 2, 3, 4], 3) == [1, 1.5, 2, 3]
    assert moving_average([1, 2, 3], 1) == [1, 2, 3]
    assert moving_average([2, 4], 10) == [2, 3]
    assert moving_average([], 3) == []
    with pytest.raises(ValueError, match=">= 1"):
        moving_average([1], 0)


# ---------------------------------------------------------------- reading

def test_read_metrics_dir_or_file(tmp_path):
    run = write_run(tmp_path / "a", train_rows(3))
    assert read_metrics(run) == read_metrics(run / "metrics.jsonl") == train_rows(3)
    with pytest.raises(FileNotFoundError, match="metrics"):
        read_metrics(tmp_path / "missing")


def test_truncated_last_line_skipped(tmp_path, capsys):
    run = write_run(tmp_path / "a", train_rows(3), tail='{"step": 4, "loss": 0.2')
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]
    assert "truncated" in capsys.readouterr().err
    # blank lines after the half-written one do not make it a "middle" line
    write_run(run, train_rows(3), tail='{"step": 4, "lo\n\n')
    assert len(read_metrics(run)) == 3


def test_bad_middle_line_names_file_and_line(tmp_path):
    run = tmp_path / "a"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\n{"step": 2, "lo\n{"step": 3, "loss": 1}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: malformed"):
        read_metrics(run)
    (run / "metrics.jsonl").write_text('{"step": 1}\n{"loss": 1}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: .*'step'"):
        read_metrics(run)


def test_series_sorted_later_row_wins_non_numbers_dropped():
    rows = [{"step": 2, "x": 5}, {"step": 1, "x": 1}, {"step": 2, "x": 7},
            {"step": 3, "x": True}, {"step": 4, "x": None}, {"step": 5}]
    assert series(rows, "x") == ([1, 2], [1.0, 7.0])


# ---------------------------------------------------------------- plotting

def load_png(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return img


def test_plot_two_runs_two_keys(tmp_path):
    runs = {"grpo": write_run(tmp_path / "r1", train_rows(20)),
            "dpo": write_run(tmp_path / "r2", train_rows(12, eval_every=4)) / "metrics.jsonl"}
    out = tmp_path / "plots"
    paths = plot_runs(runs, ["reward_mean", "valid_macro_f1"], out, smooth=3, title="ablation")
    assert paths == [out / "reward_mean.png", out / "valid_macro_f1.png"]
    assert sorted(p.name for p in out.iterdir()) == ["reward_mean.png", "valid_macro_f1.png"]
    for p in paths:
        load_png(p)


def test_smoothing_train_series_not_eval_series():
    rows = train_rows(20)
    ax = curve_figure({"a": rows}, "reward_mean", smooth=4).axes[0]
    smoothed, raw = ax.lines  # the smoothed line, then the raw one drawn faint behind it
    steps, values = series(rows, "reward_mean")
    assert list(smoothed.get_xdata()) == steps and list(raw.get_xdata()) == steps
    assert np.allclose(smoothed.get_ydata(), moving_average(values, 4))
    assert list(raw.get_ydata()) == values and raw.get_alpha() == 0.25 and smoothed.get_label() == "a"
    assert "moving average of 4" in ax.get_title()
    # eval metrics (one row in five) are drawn as logged, with markers, and not called smoothed
    ax = curve_figure({"a": rows}, "valid_macro_f1", smooth=4).axes[0]
    [line] = ax.lines
    assert list(line.get_ydata()) == series(rows, "valid_macro_f1")[1] and line.get_marker() == "o"
    assert ax.get_title() == "valid_macro_f1"
    # smooth=1 draws the raw series only
    [line] = curve_figure({"a": rows}, "reward_mean").axes[0].lines
    assert list(line.get_ydata()) == values


def test_run_without_key_is_skipped_with_note(tmp_path, capsys):
    runs = {"grpo": write_run(tmp_path / "a", train_rows(10)),
            "sft": write_run(tmp_path / "b", train_rows(10, reward=False))}
    [path] = plot_runs(runs, ["reward_mean"], tmp_path / "out")
    load_png(path)
    err = capsys.readouterr().err
    assert "'sft'" in err and "reward_mean" in err and "'grpo'" not in err


def test_key_no_run_has_raises_and_writes_nothing(tmp_path):
    runs = {"a": write_run(tmp_path / "a", train_rows(5))}
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        plot_runs(runs, ["loss", "eval_macro_f1"], out)
    msg = str(e.value)
    assert "'eval_macro_f1'" in msg
    assert "loss, lr, reward_mean, valid_macro_f1" in msg  # the available keys, sorted, no "step"
    assert not out.exists()


def test_plot_argument_errors(tmp_path):
    run = write_run(tmp_path / "a", train_rows(5))
    with pytest.raises(ValueError, match="no runs"):
        plot_runs({}, ["loss"], tmp_path / "o")
    with pytest.raises(ValueError, match="no metric keys"):
        plot_runs({"a": run}, [], tmp_path / "o")
    with pytest.raises(ValueError, match="smooth"):
        plot_runs({"a": run}, ["loss"], tmp_path / "o", smooth=0)


# ---------------------------------------------------------------- --run parsing

def test_parse_run_args(tmp_path):
    assert parse_run_args(["grpo=runs/x/grpo", "dpo = runs/y"]) == {"grpo": "runs/x/grpo", "dpo": "runs/y"}
    assert parse_run_args(["a=dir=with=eq"]) == {"a": "dir=with=eq"}  # split on the first "=" only
    # a bare DIR is labelled by the directory's name, also when given as its metrics.jsonl
    assert parse_run_args(["runs/ablation/grpo/"]) == {"grpo": "runs/ablation/grpo/"}
    assert parse_run_args(["runs/dpo/metrics.jsonl"]) == {"dpo": "runs/dpo/metrics.jsonl"}
    assert parse_run_args([]) == {}


@pytest.mark.parametrize("items, match", [
    (["=runs/a"], "LABEL=DIR"),
    (["grpo="], "LABEL=DIR"),
    (["/"], "use LABEL=DIR"),
    (["a=runs/1", "a=runs/2"], "given twice"),
    (["runs/x/grpo", "grpo=runs/y"], "given twice"),
])
def test_parse_run_args_errors(items, match):
    with pytest.raises(ValueError, match=match):
        parse_run_args(items)
