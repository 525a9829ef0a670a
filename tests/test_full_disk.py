"""Nothing is lost when the disk fills up: checkpoints, the final model, metrics, ``data prepare`` /
``data import`` output and the registry's cache.

A failing write is simulated by monkeypatching the writer to put part of a file down and then raise
OSError(ENOSPC), and for real in a subprocess under a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored:
every write past the limit fails with EFBIG, inside torch, safetensors, pyarrow and shutil alike).
Each time: what was there before is intact (the previous checkpoint verifies and resume uses it; a
dataset prepared before loads unchanged; the cache holds no partial file), nothing half-written
stays under a real name or a temporary one, and the error is one OutputError that names the file and
says "no space left on device" (or the limit), with the OSError as its ``__cause__``.
"""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_training import run_toy

from searchrl.checkpoint import checkpoints, latest_valid_checkpoint, save_checkpoint, trim_metrics, verify_checkpoint
from searchrl.cli import main
from searchrl.data import registry
from searchrl.data.importer import import_dataset, parse_mapping
from searchrl.data.prepare import prepare
from searchrl.data.schema import load_dataset
from searchrl.errors import OutputError, UserError, disk_full


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _listing(d: Path) -> list[str]:
    """Every path under ``d``, hidden ones included (a leftover temporary file must show up)."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _assert_full_disk_error(err: OutputError, *names: str) -> None:
    msg = str(err)
    assert "no space left on device" in msg and "\n" not in msg, msg
    for name in names:
        assert name in msg, msg
    assert isinstance(err, UserError)
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC


# ----------------------------------------------------------------------------- checkpoints


def _fail_on_call(monkeypatch, n: int, suffix: str):
    """torch.save fails on its ``n``-th write of a file named ``*suffix``, after writing part of it."""
    real, calls = torch.save, {"n": 0}

    def save(obj, f, *a, **kw):
        if str(getattr(f, "name", f)).endswith(suffix):
            calls["n"] += 1
            if calls["n"] == n:
                if isinstance(f, (str, Path)):
                    Path(f).write_bytes(b"half a file")
                else:
                    f.write(b"half a file")
                raise _enospc()
        return real(obj, f, *a, **kw)
    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_while_writing_trainer_state_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _, w_full, seen_full = run_toy(tmp_path / "full")
    _fail_on_call(monkeypatch, 2, "trainer_state.pt")  # checkpoint-2 is written, checkpoint-4 is not
    with pytest.raises(OutputError) as e:
        run_toy(tmp_path / "run")
    _assert_full_disk_error(e.value, "checkpoint-4", "trainer_state.pt")
    monkeypatch.undo()
    out = tmp_path / "run"
    assert [p.name for p in checkpoints(out)] == ["checkpoint-2"]
    assert not (out / "checkpoint-4.tmp").exists() and not (out / "checkpoint-4").exists()
    assert verify_checkpoint(out / "checkpoint-2") is None
    assert latest_valid_checkpoint(out).name == "checkpoint-2"
    # once there is room again, resume continues from checkpoint-2 to the same result
    resumed, w_res, seen_res = run_toy(out, resume=True)
    assert resumed.step == 6 and w_res == pytest.approx(w_full, abs=1e-7) and seen_res == seen_full


@pytest.mark.parametrize("failure", ["oserror", "library_message"])
def test_a_full_disk_while_writing_weights(tmp_path, failure):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    def good(path):
        torch.save(model.state_dict(), path / "model.pt")

    def full(path):
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"part of the weights")
        if failure == "oserror":
            raise _enospc()
        # safetensors' Rust writer raises its own error type, with the OS's message in it
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    save_checkpoint(tmp_path / "checkpoint-1", good, optimizer, scheduler, 1, {})
    with pytest.raises(OutputError) as e:
        save_checkpoint(tmp_path / "checkpoint-2", full, optimizer, scheduler, 2, {})
    assert "checkpoint-2: checkpoint checkpoint-2 not saved: writing the weights (last written: model.safetensors) " \
        "failed: no space left on device" in str(e.value)
    assert "no space left on device" in str(e.value)
    assert _listing(tmp_path) == ["checkpoint-1", "checkpoint-1/manifest.json", "checkpoint-1/model.pt",
                                  "checkpoint-1/trainer_state.pt"]
    assert verify_checkpoint(tmp_path / "checkpoint-1") is None


def test_other_failures_still_clean_up_and_keep_their_traceback(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    def buggy(path):
        (path / "partial").write_bytes(b"x")
        raise KeyError("a bug, not the disk")
    with pytest.raises(KeyError):  # not turned into a UserError: a bug keeps its traceback
        save_checkpoint(tmp_path / "checkpoint-1", buggy, optimizer, scheduler, 1, {})
    assert _listing(tmp_path) == []


def test_a_full_disk_while_writing_final_keeps_the_checkpoints(tmp_path, monkeypatch):
    _fail_on_call(monkeypatch, 4, "weights.pt")  # the weights of checkpoint-2, -4, -6, then of final/
    with pytest.raises(OutputError) as e:
        run_toy(tmp_path, save_every=2)
    assert "final" in str(e.value) and "weights.pt" in str(e.value)
    monkeypatch.undo()
    assert not (tmp_path / "final").exists() and not (tmp_path / "final.tmp").exists()
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert verify_checkpoint(tmp_path / "checkpoint-6") is None


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    # the disk filled up in the middle of a metrics line: resume must not stumble over it
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    trim_metrics(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'


def test_disk_full_reads_the_whole_exception_chain():
    try:
        try:
            raise _enospc()
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # what torch.save raises
    except RuntimeError as e:
        assert disk_full(e) == ("no space left on device", None)
    assert disk_full(OSError(errno.EDQUOT, "quota")) == ("disk quota exceeded", None)
    assert disk_full(OSError(errno.EACCES, "denied")) is None and disk_full(ValueError("x")) is None


# ----------------------------------------------------------------------------- data prepare / import


def _fail_writing(monkeypatch, name: str):
    """The file ``name`` of a dataset gets half written, then the disk is full."""
    real_parquet, real_text = pd.DataFrame.to_parquet, Path.write_text

    def to_parquet(self, path, *a, **kw):
        if Path(path).name == name:
            Path(path).write_bytes(b"PAR1 half")
            raise _enospc()
        return real_parquet(self, path, *a, **kw)

    def write_text(self, data, *a, **kw):
        if self.name == name:
            real_text(self, data[:10], *a, **kw)
            raise _enospc()
        return real_text(self, data, *a, **kw)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", to_parquet)
    monkeypatch.setattr(Path, "write_text", write_text)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("failing", ["products.parquet", "queries.parquet", "judgments.parquet", "dataset.json"])
def test_a_full_disk_during_prepare_keeps_the_prepared_dataset(mirror, tmp_path, monkeypatch, failing):
    out = tmp_path / "esci"
    prepare("esci-sample", out, mirror, download=False)
    before, tables = _snapshot(out), load_dataset(out)
    _fail_writing(monkeypatch, failing)
    with pytest.raises(OutputError) as e:
        prepare("esci-sample", out, mirror, download=False, seed=1)  # a different split: other bytes
    _assert_full_disk_error(e.value, str(out), failing, "is as it was")
    monkeypatch.undo()
    assert _snapshot(out) == before  # byte for byte, and no temporary directory left inside it
    assert _listing(tmp_path) == ["esci"] + [f"esci/{n}" for n in before]
    assert load_dataset(out).judgments.equals(tables.judgments)


def test_a_full_disk_during_a_first_import_leaves_no_directory(tmp_path, monkeypatch, capsys):
    (tmp_path / "j.csv").write_text("query,product_id,title,label\nlaptop,P1,a laptop,4\nmouse,P2,a mouse,1\n")
    _fail_writing(monkeypatch, "judgments.parquet")
    out = tmp_path / "data" / "new"
    with pytest.raises(OutputError) as e:
        import_dataset(parse_mapping(files={"judgments": str(tmp_path / "j.csv")}), out)
    _assert_full_disk_error(e.value, "judgments.parquet", "was not created")
    assert not out.exists() and _listing(tmp_path / "data") == []
    # the command line: one error line naming the file, exit status 2, no traceback
    assert main(["data", "import", "--judgments", str(tmp_path / "j.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "judgments.parquet" in err
    assert "no space left on device" in err and not out.exists()


def test_a_full_disk_while_filling_the_cache(mirror, isolated_cache, monkeypatch, tmp_path):
    real = registry.shutil.copyfile

    def copyfile(src, dst, *a, **kw):
        if Path(src).name == "sample-products.jsonl":
            Path(dst).write_bytes(Path(src).read_bytes()[:100])
            raise _enospc()
        return real(src, dst, *a, **kw)
    monkeypatch.setattr(registry.shutil, "copyfile", copyfile)
    with pytest.raises(OutputError) as e:
        prepare("esci-sample", tmp_path / "out", mirror, download=False)
    _assert_full_disk_error(e.value, "sample-products.jsonl", "no partial file")
    # the file fetched before is there, verified; of the one that failed there is nothing, under any name
    assert _listing(isolated_cache) == ["esci-sample", "esci-sample/test-sample.parquet"]
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    prepare("esci-sample", tmp_path / "out", mirror, download=False)  # with room again, it completes
    assert len(load_dataset(tmp_path / "out").judgments) > 0


# ----------------------------------------------------------------------------- a real file-size limit

REAL_LIMIT = textwrap.dedent('''
    import json, os, resource, signal, sys
    from pathlib import Path
    import numpy as np, pandas as pd, torch
    from safetensors.torch import save_file
    from searchrl.checkpoint import save_checkpoint, verify_checkpoint
    from searchrl.data import registry
    from searchrl.data.schema import Dataset, load_dataset, write_dataset
    from searchrl.errors import OutputError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    root, report = Path(sys.argv[1]), {}

    def limited(name, fn):
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.RLIM_INFINITY))
        try:
            fn()
            report[name] = {"error": None}
        except OutputError as e:
            report[name] = {"error": str(e), "cause": type(e.__cause__).__name__}
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        report[name]["listing"] = sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    # checkpoints: safetensors weights (Rust writer), then torch.save's trainer_state.pt
    model = torch.nn.Linear(300, 300)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    weights = lambda p: save_file(model.state_dict(), str(p / "model.safetensors"))
    save_checkpoint(root / "run" / "checkpoint-1", weights, optimizer, scheduler, 1, {})
    limited("weights", lambda: save_checkpoint(root / "run" / "checkpoint-2", weights, optimizer, scheduler, 2, {}))
    tiny = lambda p: (p / "w.txt").write_text("w")
    limited("state", lambda: save_checkpoint(root / "run" / "checkpoint-3", tiny, optimizer, scheduler, 3, {},
                                             extra={"big": torch.randn(100_000)}))
    report["previous_checkpoint_verifies"] = verify_checkpoint(root / "run" / "checkpoint-1") is None

    # a dataset: the new products table is past the limit
    def ds(description):
        return Dataset(pd.DataFrame({"product_id": ["p1"], "title": ["t"], "brand": [""], "description": [description],
                                     "category": [""], "attributes": ["{}"], "price": [None], "quality": [None]}),
                       pd.DataFrame({"query_id": ["q1"], "text": ["q"], "split": ["train"]}),
                       pd.DataFrame({"query_id": ["q1"], "product_id": ["p1"], "grade": [4], "label": ["4"],
                                     "raters": pd.array([None], "Int64"), "agreement": [None]}), {"name": "x"})
    write_dataset(ds("small"), root / "data")
    before = {p.name: p.read_bytes() for p in (root / "data").iterdir()}
    limited("dataset", lambda: write_dataset(ds(os.urandom(400_000).hex()), root / "data"))
    report["dataset_unchanged"] = before == {p.name: p.read_bytes() for p in (root / "data").iterdir()}
    report["dataset_loads"] = load_dataset(root / "data").products["description"].tolist() == ["small"]

    # the cache
    (root / "big.bin").write_bytes(os.urandom(400_000))
    limited("cache", lambda: registry._atomic_copy(root / "big.bin", root / "cache" / "big.bin"))
    print(json.dumps(report))
''')


def test_a_real_file_size_limit(tmp_path):
    env = {**os.environ, "SEARCHRL_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", REAL_LIMIT, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    too_large = "file too large"
    w, s, d, c = r["weights"], r["state"], r["dataset"], r["cache"]
    # safetensors deletes its partial file, and its error names none: the step is named
    assert "checkpoint-2" in w["error"] and "writing the weights failed" in w["error"] and too_large in w["error"]
    assert "checkpoint-3" in s["error"] and "trainer_state.pt" in s["error"] and too_large in s["error"]
    assert s["cause"] == "RuntimeError"  # torch's error, whose __context__ holds the EFBIG
    for listing in (w["listing"], s["listing"]):
        assert [p for p in listing if p.startswith("run/")] == [
            "run/checkpoint-1", "run/checkpoint-1/manifest.json", "run/checkpoint-1/model.safetensors",
            "run/checkpoint-1/trainer_state.pt"]
    assert r["previous_checkpoint_verifies"]
    assert "products.parquet" in d["error"] and too_large in d["error"] and d["cause"] == "OSError"
    assert [p for p in d["listing"] if p.startswith("data/")] == [
        "data/dataset.json", "data/judgments.parquet", "data/products.parquet", "data/queries.parquet"]
    assert r["dataset_unchanged"] and r["dataset_loads"]
    assert "big.bin" in c["error"] and too_large in c["error"]
    assert "cache" in c["listing"] and not [p for p in c["listing"] if p.startswith("cache/")]


def test_a_new_dataset_directory_gets_the_usual_permissions(tmp_path):
    # it is the renamed temporary directory: it must not keep a private temporary directory's 0700
    (tmp_path / "j.csv").write_text("query,product_id,title,label\nlaptop,P1,a laptop,4\nmouse,P2,a mouse,1\n")
    (tmp_path / "ref").mkdir()
    import_dataset(parse_mapping(files={"judgments": str(tmp_path / "j.csv")}), tmp_path / "out")
    assert (tmp_path / "out").stat().st_mode & 0o777 == (tmp_path / "ref").stat().st_mode & 0o777
