"""Shared fixtures: the read-only data mirror beside the checkout, and an isolated cache."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("SEARCHRL_DATA_MIRROR", REPO.parent / "shared" / "data"))
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def mirror() -> Path:
    if not (MIRROR / "chorus" / "1.json.zip").exists():
        pytest.skip(f"no data mirror at {MIRROR}")
    return MIRROR


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own empty cache; the mirror must be passed explicitly."""
    home = tmp_path_factory.mktemp("searchrl_home")
    monkeypatch.setenv("SEARCHRL_HOME", str(home))
    monkeypatch.delenv("SEARCHRL_DATA_MIRROR", raising=False)
    return home


@pytest.fixture(scope="session")
def chorus_dir(tmp_path_factory):
    """Chorus prepared once per session (shared read-only by the tests that need it)."""
    if not (MIRROR / "chorus" / "1.json.zip").exists():
        pytest.skip(f"no data mirror at {MIRROR}")
    from searchrl.data.prepare import prepare
    out = tmp_path_factory.mktemp("chorus")
    os.environ.setdefault("SEARCHRL_HOME", str(tmp_path_factory.mktemp("session_home")))
    prepare("chorus", out, MIRROR)
    return out
