"""Index directories: the manifest, atomic saves and verified loads, shared by every backend.

Layout of an index directory::

    index_dir/
      manifest.json               <- the commit point: format, backend, kind, metric, dim, count,
                                     run id, schema digest, times, options, and the sha256 and size
                                     of every data file
      data-20260101T120000-1a2b3c4d/   <- the data files of the committed save (backend specific)

Saving is atomic. The data files go into a fresh ``data-*`` folder (written under a ``.tmp-*`` name
and renamed when complete), then the new manifest is written to a temporary file and moved over
``manifest.json`` with `os.replace`, which is atomic on POSIX and Windows; only then are the
previous data folder and any leftovers removed. A crash at any point leaves either the old manifest
(whose data folder is untouched) or the new one (whose data folder is complete): never a
half-written index where a valid one was. A manifest-commit is used rather than renaming a whole
directory over another because a non-empty directory cannot be replaced atomically.

Loading reads the manifest, checks the expected run id / schema digest / embedding size, then
verifies the size and sha256 of every listed file before any backend reads one. Nothing is ever
unpickled: backends store ids and attributes as JSON or `.npy` (loaded with ``allow_pickle=False``)
and FAISS indexes with `faiss.write_index`.

One writer at a time per directory; a reader racing a writer may see `CorruptIndexError` for the
files the writer just removed and should retry.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from vestis.index.errors import CorruptIndexError, IndexMismatchError, IndexNotFoundError, VectorIndexError
from vestis.fsutil import fsync_dir

FORMAT = "vestis-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATA_PREFIX = "data-"
TMP_PREFIX = ".tmp-"


@dataclass
class Manifest:
    backend: str
    kind: str
    metric: str
    dim: int
    count: int
    run_id: str | None
    schema_digest: str | None
    created_at: str
    saved_at: str = ""
    options: dict = field(default_factory=dict)
    attributes: list[str] = field(default_factory=list)
    state: dict = field(default_factory=dict)  # backend-specific bookkeeping
    data_dir: str = ""
    files: dict[str, dict] = field(default_factory=dict)  # path relative to index_dir -> {sha256, bytes}
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    vestis_version: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        # readable order: identity first, files last
        order = ["format", "format_version", "vestis_version", "backend", "kind", "metric", "dim", "count",
                 "run_id", "schema_digest", "created_at", "saved_at", "attributes", "options", "state",
                 "data_dir", "files"]
        return {k: d[k] for k in order}

    @classmethod
    def from_json(cls, d: Mapping, where: Path) -> "Manifest":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise CorruptIndexError(f"{where / MANIFEST} is not a vestis index manifest")
        if d.get("format_version") != FORMAT_VERSION:
            raise CorruptIndexError(
                f"{where / MANIFEST} has format version {d.get('format_version')!r}; this vestis reads "
                f"version {FORMAT_VERSION}")
        known = set(cls.__dataclass_fields__)
        try:
            m = cls(**{k: v for k, v in d.items() if k in known})
        except TypeError as e:
            raise CorruptIndexError(f"{where / MANIFEST} lacks a required field: {e}") from None
        if not isinstance(m.files, dict) or not isinstance(m.dim, int):
            raise CorruptIndexError(f"{where / MANIFEST} is malformed")
        return m

    def data_path(self, index_dir: Path) -> Path:
        return Path(index_dir) / self.data_dir


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _list_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _check_target(index_dir: Path) -> None:
    """Refuse to write into a directory that holds something other than a vestis index."""
    if not index_dir.exists():
        return
    if not index_dir.is_dir():
        raise VectorIndexError(f"cannot save an index to {index_dir}: it is a file")
    foreign = [p.name for p in index_dir.iterdir()
               if not (p.name == MANIFEST or p.name.startswith((DATA_PREFIX, TMP_PREFIX, ".manifest")))]
    if foreign:
        raise VectorIndexError(
            f"refusing to save an index into {index_dir}: it holds other files ({', '.join(sorted(foreign)[:5])})")


def write_index_dir(index_dir: str | Path, manifest: Manifest, write_data: Callable[[Path], dict | None]) -> Manifest:
    """Atomically (re)place the index at `index_dir`.

    `write_data(folder)` writes the backend's files into `folder` and may return a dict merged into
    `manifest.state`. The manifest's `data_dir`, `files` and `saved_at` are filled in here.
    """
    index_dir = Path(index_dir)
    _check_target(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc)
    name = f"{DATA_PREFIX}{stamp.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    tmp = index_dir / f"{TMP_PREFIX}{name}"
    tmp.mkdir()
    try:
        extra = write_data(tmp)
        for p in _list_files(tmp):
            _fsync_file(p)
        fsync_dir(tmp)
        final = index_dir / name
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.state = {**manifest.state, **(extra or {})}
    manifest.data_dir = name
    manifest.saved_at = stamp.isoformat(timespec="seconds")
    manifest.files = {
        p.relative_to(index_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in _list_files(final)
    }
    if not manifest.vestis_version:
        from vestis import __version__
        manifest.vestis_version = __version__
    tmp_manifest = index_dir / f".manifest.json.{secrets.token_hex(4)}"
    try:
        tmp_manifest.write_text(json.dumps(manifest.to_json(), indent=1) + "\n", encoding="utf-8")
        _fsync_file(tmp_manifest)
        os.replace(tmp_manifest, index_dir / MANIFEST)  # the commit point
    except BaseException:
        tmp_manifest.unlink(missing_ok=True)
        shutil.rmtree(final, ignore_errors=True)
        raise
    fsync_dir(index_dir)
    # the previous save's data and any leftovers of crashed saves are garbage now
    for p in index_dir.iterdir():
        if p.name != name and p.name != MANIFEST and p.name.startswith((DATA_PREFIX, TMP_PREFIX, ".manifest")):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return manifest


def read_manifest(index_dir: str | Path) -> Manifest:
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    if not index_dir.is_dir():
        raise IndexNotFoundError(f"no index at {index_dir}: the directory does not exist")
    if not path.is_file():
        raise IndexNotFoundError(f"no index at {index_dir}: {MANIFEST} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptIndexError(f"{path} is not valid JSON (truncated or corrupt): {e}") from None
    return Manifest.from_json(data, index_dir)


def check_expectations(manifest: Manifest, index_dir: Path, expect_run_id: str | None = None,
                       expect_schema_digest: str | None = None, expect_dim: int | None = None,
                       expect_backend: str | None = None) -> None:
    """Raise `IndexMismatchError` naming the first field that differs from what the caller expects."""
    checks = [("backend", expect_backend, manifest.backend),
              ("model run id", expect_run_id, manifest.run_id),
              ("schema digest", expect_schema_digest, manifest.schema_digest),
              ("embedding size", expect_dim, manifest.dim)]
    for name, expected, found in checks:
        if expected is not None and expected != found:
            raise IndexMismatchError(name, expected, found, index_dir)


def verify_files(manifest: Manifest, index_dir: str | Path) -> None:
    """Every listed file exists with the recorded size and sha256 (raises `CorruptIndexError`)."""
    index_dir = Path(index_dir)
    if not manifest.files:
        raise CorruptIndexError(f"{index_dir / MANIFEST} lists no data files")
    for rel, info in manifest.files.items():
        p = index_dir / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise CorruptIndexError(f"{index_dir / MANIFEST} lists a file outside the index: {rel!r}")
        if not p.is_file():
            raise CorruptIndexError(f"index file {p} is missing")
        size = p.stat().st_size
        if size != info.get("bytes"):
            raise CorruptIndexError(
                f"index file {p} has {size} bytes, the manifest records {info.get('bytes')} (truncated or altered)")
        if sha256_file(p) != info.get("sha256"):
            raise CorruptIndexError(f"index file {p} fails its sha256 checksum (corrupt or altered)")
