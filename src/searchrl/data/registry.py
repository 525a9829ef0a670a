"""Datasets by name: pinned upstream files, sha256-verified, cached.

Like torchvision or ir_datasets, a dataset is a list of upstream files at a fixed
commit with their sha256 sums written here in code. ``fetch`` resolves each file
in this order and never hands out unverified bytes:

1. the cache (``$SEARCHRL_HOME``, default ``~/.cache/searchrl``), filled only by
   atomic renames of verified files;
2. a mirror directory (``--mirror`` or ``$SEARCHRL_DATA_MIRROR``) laid out like
   ``../shared/data`` (``chorus/1.json.zip``, ...), copied into the cache once verified;
3. the upstream URL, streamed to a temporary file while hashing.

A checksum mismatch anywhere is an error naming the file and both sums.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from searchrl.errors import ConfigError, InputError, MissingFileError, OutputError, UserError, disk_full

CHORUS_COMMIT = "96edf8b536e521be06cab910e0f6a9b25e3016fc"
ESCI_COMMIT = "7e0e3073f5ca36c0b5ff79e847cf99a74597645d"
WANDS_COMMIT = "3b74dcf4ba29ab8ff3e6a50b5b09fc627cb882b5"
VESPA_COMMIT = "529d524065668569fa28e1dca9c7caaa5e184b15"

_CHORUS = f"https://raw.githubusercontent.com/querqy/chorus/{CHORUS_COMMIT}"
# ESCI's parquet files are Git LFS objects: the sums are the LFS pointers' oids.
_ESCI = f"https://media.githubusercontent.com/media/amazon-science/esci-data/{ESCI_COMMIT}/shopping_queries_dataset"
_WANDS = f"https://raw.githubusercontent.com/wayfair/WANDS/{WANDS_COMMIT}/dataset"
_VESPA = f"https://raw.githubusercontent.com/vespa-engine/sample-apps/{VESPA_COMMIT}/commerce-product-ranking/sample-data"


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name in the cache and the key loaders use
    url: str
    sha256: str | None  # None: upstream publishes none and we hold no copy to pin (see `pins`)
    mirror_path: str  # path relative to a mirror directory
    size: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    files: tuple[RemoteFile, ...]
    description: str
    licence: str


DATASETS: dict[str, DatasetSpec] = {
    "chorus": DatasetSpec(
        "chorus",
        tuple(
            [RemoteFile(f"{i}.json.zip", f"{_CHORUS}/data-encoder/ecommerce/vectors/data/{i}.json.zip", s,
                        f"chorus/{i}.json.zip") for i, s in enumerate([
                "15b622a11a6267aa0c450919a84b0fc41d7748db552f4c9c0e04167bbc7c38cb",
                "17d95160289440d03ca50af65c1363d9edd1d5e82678ddb874b27aeac1f87c33",
                "d4d088908fa648da7e79682872a77771ba42f065b253c4fb0f333e630d94f45a",
                "533329e5173eac349ce61512fc86a352d5f6651e31694e03aa6e8428cbeaf3c0"], start=1)]
            + [RemoteFile("Broad_Query_Set_rated.csv", f"{_CHORUS}/katas/Broad_Query_Set_rated.csv",
                          "065b79c6c19b9ea8fa2dc2b0b8dae3f40c6389454a1f26aac3d3f8a7d43731b2",
                          "chorus/Broad_Query_Set_rated.csv"),
               RemoteFile("Broad_Query_Set_individual_ratings.csv",
                          f"{_CHORUS}/katas/Broad_Query_Set_individual_ratings.csv",
                          "cdaaa60503c87450730ad86b614fcd0026cdd6069ac1b7a5189b1b44ca785e30",
                          "chorus/Broad_Query_Set_individual_ratings.csv")]),
        "Chorus e-commerce demo (querqy/chorus): 19,406 Icecat electronics products, 135 queries, "
        "3,668 human judgments on a 0-3 scale, three raters each for most pairs.",
        "Apache-2.0 (repository); Icecat Open Content Licence (product data)"),
    "esci": DatasetSpec(
        "esci",
        (RemoteFile("shopping_queries_dataset_examples.parquet", f"{_ESCI}/shopping_queries_dataset_examples.parquet",
                    "4a735b693b4a424a6fc67f5be6e4c811495c488bbf66d02a602d308b2744263a",
                    "esci/shopping_queries_dataset_examples.parquet", 51286808),
         RemoteFile("shopping_queries_dataset_products.parquet", f"{_ESCI}/shopping_queries_dataset_products.parquet",
                    "25124442d064d64b26f74082d6fa09438d679efc0c183cf28d19064a2b65a265",
                    "esci/shopping_queries_dataset_products.parquet", 1108857465)),
        "Amazon Shopping Queries (ESCI): Exact/Substitute/Complement/Irrelevant judgments.",
        "Apache-2.0"),
    "esci-sample": DatasetSpec(
        "esci-sample",
        (RemoteFile("test-sample.parquet", f"{_VESPA}/test-sample.parquet",
                    "eaa98d99d55c7d2ed4ccc0a10d27492e3e662656e52dd2fbab6e6ead2369b362",
                    "fixtures/esci-vespa/test-sample.parquet"),
         # Upstream ships this file zstd-compressed; the mirror and the sum are of the decompressed
         # bytes, so this file is mirror-only (a download would not verify and is refused).
         RemoteFile("sample-products.jsonl", f"{_VESPA}/sample-products.jsonl.zst",
                    "8c735c06295c8405f313ccea01f1dae0c3c70baec58a1a37f9509ae2aca859db",
                    "fixtures/esci-vespa/sample-products.jsonl")),
        "A 16-example ESCI sample (Vespa sample-apps), in the ESCI examples format with Vespa-feed products.",
        "Apache-2.0"),
    "wands": DatasetSpec(
        "wands",
        (RemoteFile("query.csv", f"{_WANDS}/query.csv",
                    "63b61660560fecc33ec490804c7e2b81402ee3e7c31a9cbb5e03736639f68e95", "wands/query.csv"),
         # No copy of these two was available to pin a sum from; pass --pin NAME=SHA256 once verified.
         RemoteFile("product.csv", f"{_WANDS}/product.csv", None, "wands/product.csv"),
         RemoteFile("label.csv", f"{_WANDS}/label.csv", None, "wands/label.csv")),
        "Wayfair ANnotation DataSet (WANDS): 42,994 products, 480 queries, Exact/Partial/Irrelevant labels.",
        "MIT"),
}

# Files in the shared mirror sometimes sit under fixtures/ (wands/query.csv is fixtures/wands/query.csv).
_MIRROR_ALIASES = {"wands/query.csv": "fixtures/wands/query.csv"}


class ChecksumError(UserError, ValueError):
    """A file's sha256 differs from the pinned one: its bytes are never used."""


def cache_dir() -> Path:
    return Path(os.environ.get("SEARCHRL_HOME", Path.home() / ".cache" / "searchrl"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, expected: str, origin: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(f"{origin}: sha256 mismatch for {path.name}: expected {expected}, got {got}; "
                            "refusing unverified bytes")


def _cache_fill(dst: Path, fill, how: str) -> None:
    """``fill(tmp)`` into a temporary file beside ``dst``, renamed to ``dst`` when complete: the cache
    never holds a partial file under its real name, and on failure none under a temporary one either (a
    full disk would keep its space). A full disk becomes an OutputError naming the file."""
    tmp = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
        os.close(fd)
        fill(tmp)
        os.replace(tmp, dst)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        full = disk_full(e)
        if full is None:
            raise
        raise OutputError(f"{dst}: not cached: {how} failed: {full[0]} (the cache is $SEARCHRL_HOME, now "
                          f"{cache_dir()}); no partial file is left") from e


def _atomic_copy(src: Path, dst: Path) -> None:
    _cache_fill(dst, lambda tmp: shutil.copyfile(src, tmp), f"copying {src}")


def _download(url: str, dst: Path, expected: str) -> None:
    def fill(tmp):
        h = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dst.name, leave=False) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        if h.hexdigest() != expected:
            raise ChecksumError(f"{url}: sha256 mismatch for {dst.name}: expected {expected}, "
                                f"got {h.hexdigest()}; refusing unverified bytes")
    _cache_fill(dst, fill, f"downloading {url}")


def fetch(name: str, mirror: str | Path | None = None, download: bool = True,
          pins: dict[str, str] | None = None) -> dict[str, Path]:
    """Return {file name: verified local path} for every file of dataset ``name``.

    ``pins`` supplies sums for files the registry cannot pin (WANDS product/label).
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    mirror = mirror or os.environ.get("SEARCHRL_DATA_MIRROR") or None
    pins = pins or {}
    unknown = set(pins) - {f.name for f in DATASETS[name].files}
    if unknown:
        raise ConfigError(f"--pin names files not in {name}: {sorted(unknown)}")
    for f in DATASETS[name].files:  # refuse before fetching anything
        if (f.sha256 or pins.get(f.name)) is None:
            raise ChecksumError(
                f"{name}/{f.name}: no sha256 is pinned for this file (none is published upstream). Verify a copy "
                f"of {f.url} yourself and pass --pin {f.name}=<sha256>; unverified bytes are never used.")
    out = {}
    for f in DATASETS[name].files:
        expected = f.sha256 or pins[f.name]
        dst = cache_dir() / name / f.name
        if dst.exists():
            _check(dst, expected, f"cache {dst}")
        elif mirror and (src := _mirror_file(Path(mirror), f)) is not None:
            _check(src, expected, f"mirror {src}")
            _atomic_copy(src, dst)
        elif download:
            if f.url.endswith(".zst") and not f.name.endswith(".zst"):
                raise MissingFileError(f"{name}/{f.name}: only available from a mirror (upstream is compressed)")
            _download(f.url, dst, expected)
        else:
            raise MissingFileError(f"{name}/{f.name}: not in cache {dst.parent} nor mirror {mirror}, "
                                    "and downloads are off")
        out[f.name] = dst
    return out


def _mirror_file(mirror: Path, f: RemoteFile) -> Path | None:
    for rel in (f.mirror_path, _MIRROR_ALIASES.get(f.mirror_path)):
        if rel and (mirror / rel).exists():
            return mirror / rel
    return None
