"""On-disk feature cache: float16 trunk maps at every level of the spec per image, keyed by the sha256 of
the image file's bytes, under `<root>/<spec.key>/` (so another trunk, weights file, resolution, preprocessing
or set of levels never mixes with these features, and a changed image gets a new entry while a
renamed/duplicated one is reused).

Layout (chosen by measurement: reading 35,000 entries of 69 KB took 0.85-1.2 s from 137 shard files vs
1.7 s warm / 10.5 s cold from 35,000 per-image files, and writing was 8.4 s vs 13.9 s; `load` of the whole
fashion-product-images catalogue - hashing 35k images, crc-checking and copying 2.3 GB - takes 3-6 s warm
on the shared 2-core machine, 3.3 s without the crc check):

    <root>/<spec.key>/
        spec.json                         what produced these features (informational)
        shards/<time_ns>-<pid>-<n>.vfs    up to `shard_size` (256) entries each, ~18 MB at 160x128 (s16+s32)
        trunk.onnx, trunk.onnx.json       the exported trunk for this spec (see extract.py)
        corrupt/                          shards found structurally broken are moved here by `quarantine`

A shard file is  b"VFS1" | u32 header length | u32 crc32(header) | JSON header | zero pad to 64 bytes |
n entries, each the C-order float16 bytes of every level of the spec in order (shallow to deep, e.g. "s16"
then "s32"). The header holds the level shapes, the entry hashes, a crc32 per entry, and the hashes of images
found undecodable.

Atomicity: entries are buffered in memory and a shard is written to a temp file, fsynced and os.replace()d
into place, so a killed run leaves either a whole shard or none (at most `shard_size` - 1 encoded images
are lost). Leftover temp files of dead processes are removed on open. Integrity: a shard whose header,
magic or size is wrong is reported and skipped (its entries count as not cached); an entry whose crc32
does not match is reported as corrupt and treated as not cached, so `extract_catalog` re-encodes it.
The same hash may live in several shards (re-extracted entries, concurrent runs); the newest valid wins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
import zlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vestis.vision.trunk import PREPROCESS_VERSION, TrunkSpec, file_sha256
from vestis.fsutil import fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"VFS1"
_PREFIX = struct.Struct("<4sII")
ALIGN = 64
DTYPE = np.dtype("<f2")
DEFAULT_SHARD_SIZE = 256


def content_hash(path: str | Path) -> str:
    """sha256 of the file's bytes (raises OSError if unreadable)."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def chunked_map(fn, seq, workers: int = 4, chunk: int = 512) -> list:
    """[fn(x) for x in seq] on a thread pool, in chunks (one future per item costs more than hashing a small file)."""
    seq = list(seq)
    if len(seq) <= chunk or workers <= 1:
        return [fn(x) for x in seq]
    with ThreadPoolExecutor(workers) as pool:
        parts = pool.map(lambda i: [fn(x) for x in seq[i:i + chunk]], range(0, len(seq), chunk))
        return [y for part in parts for y in part]


def _hash_or_none(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return content_hash(path)
    except OSError:
        return None


@dataclass
class _Shard:
    path: Path
    shapes: dict[str, tuple[int, ...]]
    hashes: list[str]
    crcs: list[int]
    unreadable: list[str]
    data_offset: int

    @property
    def entry_bytes(self) -> int:
        return sum(int(np.prod(s)) for s in self.shapes.values()) * DTYPE.itemsize


class CorruptShardError(Exception):
    pass


def _read_header(path: Path) -> _Shard:
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(_PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise CorruptShardError("shorter than its header")
        magic, hlen, hcrc = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise CorruptShardError(f"bad magic {magic!r}")
        raw = f.read(hlen)
    if len(raw) != hlen or zlib.crc32(raw) != hcrc:
        raise CorruptShardError("header checksum mismatch")
    try:
        h = json.loads(raw)
        shapes = {lv: tuple(int(v) for v in shape) for lv, shape in h["levels"]}
        shard = _Shard(path, shapes, list(h["hashes"]), [int(c) for c in h["crc"]], list(h.get("unreadable", [])),
                       _data_offset(hlen))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptShardError(f"bad header: {e}") from None
    if len(shard.crcs) != len(shard.hashes):
        raise CorruptShardError("header lists differ in length")
    expected = shard.data_offset + len(shard.hashes) * shard.entry_bytes
    if size != expected:
        raise CorruptShardError(f"size {size} bytes, expected {expected} (truncated?)")
    return shard


def _data_offset(hlen: int) -> int:
    return -(-(_PREFIX.size + hlen) // ALIGN) * ALIGN


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class FeatureSet:
    """Cached features of a catalogue, rows in catalogue order.

    `ids[i]` owns row i of every `maps[level]` (float16, N x C x H x W). Items without features are listed by
    reason: `missing` (no image file), `unreadable` (image could not be decoded), `not_extracted` (image is
    there but has no valid cached entry: run `vestis extract`), of which `corrupt` failed verification.
    """

    ids: list[str]
    maps: dict[str, np.ndarray]
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    not_extracted: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def without_features(self) -> list[str]:
        return self.missing + self.unreadable + self.not_extracted

    def row(self, item_id: str) -> int:
        if not hasattr(self, "_rows"):
            self._rows = {i: r for r, i in enumerate(self.ids)}
        return self._rows[item_id]

    def describe(self) -> str:
        shapes = ", ".join(f"{lv} {tuple(a.shape[1:])}" for lv, a in self.maps.items())
        return (f"{len(self.ids)} items with features ({shapes}); without: {len(self.missing)} missing, "
                f"{len(self.unreadable)} unreadable, {len(self.not_extracted)} not extracted"
                + (f" ({len(self.corrupt)} corrupt)" if self.corrupt else ""))


class FeatureCache:
    """Feature maps per image content hash for one TrunkSpec. Use as a context manager (or call `flush`)."""

    def __init__(self, root: Path, spec: TrunkSpec, *, shard_size: int = DEFAULT_SHARD_SIZE):
        self.root = Path(root)
        self.spec = spec
        self.path = self.root / spec.key
        self.shard_dir = self.path / "shards"
        self.shard_size = int(shard_size)
        self.problems: list[str] = []  # structurally broken shards seen (reported, skipped)
        self._pending: dict[str, dict[str, np.ndarray]] = {}
        self._pending_unreadable: set[str] = set()
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._index: dict[str, list[tuple[_Shard, int]]] | None = None
        self._unreadable: set[str] = set()
        self._shards: list[_Shard] = []
        self._broken: list[Path] = []
        self._counter = 0
        self._buf = bytearray(0)

    # --- index ----------------------------------------------------------------------------------
    def _clean_temp(self) -> None:
        for p in self.shard_dir.glob(".*.tmp"):
            try:
                pid = int(p.name.split(".")[-2])
            except (ValueError, IndexError):
                continue
            if not _pid_alive(pid):
                p.unlink(missing_ok=True)

    def refresh(self) -> None:
        """(Re)read every shard header; broken shards are reported in `problems` and skipped."""
        self._index, self._shards, self._broken, self._unreadable = defaultdict(list), [], [], set()
        self.problems = []
        if not self.shard_dir.is_dir():
            return
        self._clean_temp()
        for p in sorted(self.shard_dir.glob("*.vfs"), reverse=True):  # newest first
            try:
                shard = _read_header(p)
            except (CorruptShardError, OSError) as e:
                self.problems.append(f"{p.name}: {e}")
                self._broken.append(p)
                log.warning("feature cache: skipping broken shard %s: %s", p, e)
                continue
            if not shard.hashes:  # only records of unreadable images
                pass
            elif tuple(shard.shapes) != self.spec.levels:
                self.problems.append(f"{p.name}: levels {', '.join(shard.shapes)} are not this cache's "
                                     f"{', '.join(self.spec.levels)}")
                self._broken.append(p)
                continue
            elif self._shapes is None:
                self._shapes = shard.shapes
            elif shard.shapes != self._shapes:
                self.problems.append(f"{p.name}: level shapes {shard.shapes} differ from {self._shapes}")
                self._broken.append(p)
                continue
            self._shards.append(shard)
            self._unreadable.update(shard.unreadable)
            for row, h in enumerate(shard.hashes):
                self._index[h].append((shard, row))

    @property
    def index(self) -> dict[str, list[tuple[_Shard, int]]]:
        if self._index is None:
            self.refresh()
        return self._index

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, h: str) -> bool:
        return self.has(h)

    def has(self, h: str) -> bool:
        """Whether an entry for this content hash exists (pending or on disk; not verified - see `verify`)."""
        return h in self._pending or h in self.index

    def is_unreadable(self, h: str) -> bool:
        index = self.index  # reads the shard headers (and with them the unreadable records) if needed
        return h in self._pending_unreadable or (h in self._unreadable and h not in index)

    def quarantine(self) -> list[Path]:
        """Move structurally broken shards into `corrupt/` so they are not reported again. Returns new paths."""
        self.index  # noqa: B018 - make sure headers were read
        moved = []
        for p in self._broken:
            dest = self.path / "corrupt" / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(p, dest)
                moved.append(dest)
            except OSError as e:
                log.warning("feature cache: cannot move %s aside: %s", p, e)
        self._broken = []
        return moved

    # --- reading --------------------------------------------------------------------------------
    def _entry(self, shard: _Shard, row: int, raw: bytes | memoryview | None = None) -> dict[str, np.ndarray] | None:
        eb = shard.entry_bytes
        if raw is None:
            with open(shard.path, "rb") as f:
                f.seek(shard.data_offset + row * eb)
                raw = f.read(eb)
        if len(raw) != eb or zlib.crc32(raw) != shard.crcs[row]:
            return None
        flat = np.frombuffer(raw, dtype=DTYPE)
        out, off = {}, 0
        for lv, shape in shard.shapes.items():
            n = int(np.prod(shape))
            out[lv] = flat[off:off + n].reshape(shape)
            off += n
        return out

    def get(self, h: str, copy: bool = True) -> dict[str, np.ndarray] | None:
        """The maps of one image ({level: float16 C x H x W}), or None if absent or corrupt (logged); copy=False:
        read-only arrays over the bytes read (for a caller that converts them anyway)."""
        if h in self._pending:
            return self._pending[h]
        for shard, row in self.index.get(h, ()):
            try:
                out = self._entry(shard, row)
            except OSError as e:
                out = None
                log.warning("feature cache: cannot read %s: %s", shard.path, e)
            if out is not None:
                return {lv: a.copy() for lv, a in out.items()} if copy else out
            log.warning("feature cache: corrupt entry %s in %s (checksum mismatch)", h[:12], shard.path.name)
        return None

    def verify(self, hashes) -> tuple[set[str], set[str]]:
        """Check the crc32 of the newest entry of each hash. Returns (valid, corrupt); corrupt entries are dropped
        from the index so `has` is False for them (an older valid copy, if any, is used instead)."""
        wanted = {h for h in hashes if h in self.index}
        valid, corrupt = set(), set()
        todo = dict.fromkeys(wanted, 0)  # hash -> which location to try
        while todo:
            by_shard: dict[Path, list[tuple[str, _Shard, int]]] = defaultdict(list)
            for h, k in todo.items():
                shard, row = self.index[h][k]
                by_shard[shard.path].append((h, shard, row))
            retry = {}
            for path, entries in by_shard.items():
                ok = self._check_rows(entries[0][1], [r for _, _, r in entries])
                for (h, _, _), good in zip(entries, ok):
                    if good:
                        valid.add(h)
                        continue
                    corrupt.add(h)
                    if todo[h] + 1 < len(self.index[h]):
                        retry[h] = todo[h] + 1
            todo = retry
        for h in corrupt - valid:
            log.warning("feature cache: corrupt entry %s (checksum mismatch), will be re-extracted", h[:12])
            self.index.pop(h, None)
        for h in corrupt & valid:  # keep only the good locations
            self.index[h] = [loc for loc in self.index[h] if self._check_rows(loc[0], [loc[1]])[0]]
        return valid, corrupt - valid

    def _check_rows(self, shard: _Shard, rows: list[int]) -> list[bool]:
        ok = [False] * len(rows)
        try:
            for i, entry in self._iter_rows(shard, rows):
                ok[i] = zlib.crc32(entry) == shard.crcs[rows[i]]
        except OSError:
            pass
        return ok

    def _iter_rows(self, shard: _Shard, rows: list[int]):
        """Yield (i, bytes of entry rows[i]) as memoryviews into one reused buffer (valid until the next item).
        Reads the whole shard once when many rows are wanted, else seeks row by row. Raises OSError."""
        eb, n_rows = shard.entry_bytes, len(shard.hashes)
        whole = len(rows) * 4 >= n_rows
        need = n_rows * eb if whole else eb
        if len(self._buf) < need:  # reused across shards: fresh multi-MB buffers page-fault on every shard
            self._buf = bytearray(need)
        mv = memoryview(self._buf)
        with open(shard.path, "rb") as f:
            if whole:
                f.seek(shard.data_offset)
                if f.readinto(mv[:need]) != need:
                    raise OSError(f"short read from {shard.path}")
            for i, r in enumerate(rows):
                if whole:
                    yield i, mv[r * eb:(r + 1) * eb]
                else:
                    f.seek(shard.data_offset + r * eb)
                    if f.readinto(mv[:eb]) != eb:
                        raise OSError(f"short read from {shard.path}")
                    yield i, mv[:eb]

    def load(self, catalog, *, verify: bool = True, workers: int = 4) -> FeatureSet:
        """Features of every catalogue item, in catalogue order (see FeatureSet for items without)."""
        items = list(catalog)
        hashes = chunked_map(lambda it: _hash_or_none(it.image), items, workers)
        fs = FeatureSet(ids=[], maps={})
        found: list[tuple[int, str]] = []  # (item position, hash)
        for pos, (it, h) in enumerate(zip(items, hashes)):
            if h is None:
                fs.missing.append(it.id)
            elif h in self._pending or h in self.index:
                found.append((pos, h))
            elif self.is_unreadable(h):
                fs.unreadable.append(it.id)
            else:
                fs.not_extracted.append(it.id)
        shapes = self._shapes  # known whenever anything is cached or pending
        if not found:
            fs.maps = {lv: np.empty((0, *shapes[lv]) if shapes else (0, 0, 0, 0), DTYPE) for lv in self.spec.levels}
            return fs
        out = {lv: np.empty((len(found), *shapes[lv]), DTYPE) for lv in shapes}
        ok = np.zeros(len(found), dtype=bool)
        # group rows by shard (newest location of each hash), read each shard once
        by_shard: dict[Path, list[tuple[int, _Shard, int]]] = defaultdict(list)
        for k, (_, h) in enumerate(found):
            if h in self._pending:
                for lv, a in self._pending[h].items():
                    out[lv][k] = a
                ok[k] = True
            else:
                shard, row = self.index[h][0]
                by_shard[shard.path].append((k, shard, row))
        # Copy row by row from one reused read buffer straight into the outputs: no per-shard temporaries
        # (fresh multi-MB allocations page-fault on every shard; this keeps loading 35k entries to seconds).
        dests = [(out[lv].reshape(len(found), -1), int(np.prod(s))) for lv, s in shapes.items()]
        for entries in by_shard.values():
            shard = entries[0][1]
            try:
                for i, entry in self._iter_rows(shard, [r for _, _, r in entries]):
                    k, _, r = entries[i]
                    if verify and zlib.crc32(entry) != shard.crcs[r]:
                        continue
                    values = np.frombuffer(entry, dtype=DTYPE)
                    off = 0
                    for dest, n in dests:
                        dest[k] = values[off:off + n]
                        off += n
                    ok[k] = True
            except OSError as e:
                log.warning("feature cache: cannot read %s: %s", shard.path, e)
        positions = [pos for pos, _ in found]
        if not ok.all():
            for k in np.flatnonzero(~ok):
                iid = items[positions[k]].id
                fs.corrupt.append(iid)
                fs.not_extracted.append(iid)
            log.warning("feature cache: %d corrupt entries (run `vestis extract` to re-encode them)", len(fs.corrupt))
            out = {lv: a[ok] for lv, a in out.items()}
        order = {it.id: i for i, it in enumerate(items)}
        fs.not_extracted.sort(key=order.__getitem__)
        fs.ids = [items[positions[k]].id for k in np.flatnonzero(ok)]
        fs.maps = out
        return fs

    # --- writing --------------------------------------------------------------------------------
    def put(self, h: str, maps: dict[str, np.ndarray]) -> None:
        """Add one image's maps ({level: C x H x W}, every level of the spec); stored as float16 when the buffer
        reaches a shard or on flush."""
        lacking = [lv for lv in self.spec.levels if lv not in maps]
        if lacking:
            raise ValueError(f"maps lack level(s) {', '.join(lacking)} of this cache ({', '.join(self.spec.levels)})")
        entry = {lv: np.ascontiguousarray(maps[lv], dtype=DTYPE) for lv in self.spec.levels}
        shapes = {lv: a.shape for lv, a in entry.items()}
        if self._shapes is None:
            self.index  # noqa: B018 - learn the shapes from existing shards
        if self._shapes is None:
            self._shapes = shapes
        elif shapes != self._shapes:
            raise ValueError(f"feature shapes {shapes} differ from this cache's {self._shapes}")
        self._pending[h] = entry
        self._pending_unreadable.discard(h)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def put_unreadable(self, h: str) -> None:
        """Remember that the image with this hash cannot be decoded (reported by `load`)."""
        if h not in self._pending:
            self._pending_unreadable.add(h)

    def flush(self) -> Path | None:
        """Write the buffered entries as one shard, atomically. Returns its path (None if nothing to write)."""
        if not self._pending and not self._pending_unreadable:
            return None
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._write_spec()
        hashes = list(self._pending)
        shapes = self._shapes or {}
        levels = self.spec.levels
        blobs = [b"".join(self._pending[h][lv].tobytes() for lv in levels) for h in hashes]
        header = json.dumps({"version": 1, "spec": self.spec.key, "dtype": "float16",
                             "levels": [[lv, list(shapes[lv])] for lv in levels] if shapes else [],
                             "hashes": hashes, "crc": [zlib.crc32(b) for b in blobs],
                             "unreadable": sorted(self._pending_unreadable)}).encode()
        self._counter += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._counter:05d}.vfs"
        final = self.shard_dir / name
        tmp = self.shard_dir / f".{name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, len(header), zlib.crc32(header)))
            f.write(header)
            f.write(b"\0" * (_data_offset(len(header)) - _PREFIX.size - len(header)))
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.shard_dir)
        if self._index is not None:
            shard = _read_header(final)
            self._shards.insert(0, shard)
            for row, h in enumerate(shard.hashes):
                self._index[h].insert(0, (shard, row))
            self._unreadable.update(shard.unreadable)
        self._pending.clear()
        self._pending_unreadable.clear()
        return final

    def _write_spec(self) -> None:
        p = self.path / "spec.json"
        if p.is_file():
            return
        s = self.spec
        info = {"key": s.key, "trunk": s.name, "weights": str(s.weights_path), "weights_sha256": s.weights_sha256,
                "resolution": list(s.resolution), "preprocess_version": PREPROCESS_VERSION,
                "levels": {lv: list(v) for lv, v in (self._shapes or {}).items()}, "dtype": "float16"}
        if s.s32_stages is not None:  # s32 re-encoded from the frozen trunk's cached s16 maps (vision.s32_stages)
            info["s32_stages"], info["s32_stages_sha256"] = str(s.s32_stages), file_sha256(s.s32_stages)
        tmp = p.with_name(f".spec.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, p)

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()
