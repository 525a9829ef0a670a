import hashlib
import shutil

import pytest

from searchrl.data import registry
from searchrl.data.registry import ChecksumError, fetch
from searchrl.errors import UserError


def test_fetch_from_mirror_verifies_and_fills_cache(mirror, isolated_cache):
    files = fetch("chorus", mirror=mirror, download=False)
    assert set(files) == {f.name for f in registry.DATASETS["chorus"].files}
    for f in registry.DATASETS["chorus"].files:
        path = files[f.name]
        assert path.parent == isolated_cache / "chorus"
        assert registry.sha256_file(path) == f.sha256
    # Second call: served from the cache even with the mirror gone.
    again = fetch("chorus", mirror=None, download=False)
    assert again == files


def test_mirror_env_variable_is_used(mirror, monkeypatch):
    monkeypatch.setenv("SEARCHRL_DATA_MIRROR", str(mirror))
    files = fetch("esci-sample", download=False)
    assert files["test-sample.parquet"].exists()


def _fake_mirror(mirror, tmp_path, corrupt: str):
    fake = tmp_path / "mirror"
    for f in registry.DATASETS["chorus"].files:
        dst = fake / f.mirror_path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mirror / f.mirror_path, dst)
    (fake / "chorus" / corrupt).write_bytes(b"not the real bytes")
    return fake


def test_mirror_checksum_mismatch_names_file_and_both_sums(mirror, tmp_path, isolated_cache):
    fake = _fake_mirror(mirror, tmp_path, "Broad_Query_Set_rated.csv")
    with pytest.raises(ChecksumError) as e:
        fetch("chorus", mirror=fake, download=False)
    msg = str(e.value)
    expected = next(f.sha256 for f in registry.DATASETS["chorus"].files if f.name == "Broad_Query_Set_rated.csv")
    assert "Broad_Query_Set_rated.csv" in msg and expected in msg
    assert hashlib.sha256(b"not the real bytes").hexdigest() in msg
    assert not (isolated_cache / "chorus" / "Broad_Query_Set_rated.csv").exists()  # never cached


def test_corrupted_cache_is_an_error(mirror, isolated_cache):
    fetch("esci-sample", mirror=mirror, download=False)
    cached = isolated_cache / "esci-sample" / "test-sample.parquet"
    cached.write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match="test-sample.parquet"):
        fetch("esci-sample", mirror=mirror, download=False)


def test_missing_everywhere_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="not in cache"):
        fetch("chorus", mirror=tmp_path, download=False)


def test_unpinned_files_are_refused_before_any_fetch(isolated_cache):
    with pytest.raises(ChecksumError, match="product.csv.*--pin"):
        fetch("wands", download=False)
    assert not (isolated_cache / "wands").exists()


def test_download_path_verifies(monkeypatch, tmp_path, isolated_cache):
    """The download route streams a URL; a wrong payload is refused, the right one cached."""
    payload = b"query_id\tquery\tquery_class\n0\tsalon chair\tMassage Chairs\n"
    src = tmp_path / "query.csv"
    src.write_bytes(payload)
    good = registry.RemoteFile("query.csv", src.as_uri(), hashlib.sha256(payload).hexdigest(), "nowhere/query.csv")
    bad = registry.RemoteFile("query.csv", src.as_uri(), "0" * 64, "nowhere/query.csv")
    spec = registry.DatasetSpec("toy", (bad,), "toy", "MIT")
    monkeypatch.setitem(registry.DATASETS, "toy", spec)
    with pytest.raises(ChecksumError, match="0000"):
        fetch("toy")
    assert not (isolated_cache / "toy" / "query.csv").exists()
    monkeypatch.setitem(registry.DATASETS, "toy", registry.DatasetSpec("toy", (good,), "toy", "MIT"))
    assert fetch("toy")["query.csv"].read_bytes() == payload


def test_unknown_dataset():
    with pytest.raises(UserError, match="known"):
        fetch("nope")
