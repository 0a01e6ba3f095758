"""Milvus backend, through pymilvus `MilvusClient`: Milvus Lite (embedded) by default, or a server.

Optional dependency: ``pip install 'vestis[milvus]'`` (pymilvus + milvus-lite); both are imported
lazily, so the rest of vestis works without them.

Where the data lives:

- default (``uri=None``): a Milvus Lite database ``milvus.db`` in a private working folder
  (``work_dir=...``, or a temporary folder removed by `close()`); `save(index_dir)` flushes it,
  stops its embedded server for a moment and copies it into the index directory
  (``<index_dir>/data-*/milvus.db``, every file checksummed in the manifest); `load_index` copies it
  back into a fresh working folder. Milvus Lite is single-process, and this keeps a saved index
  immutable while a loaded copy is modified.
- ``uri="path/to/file.db"``: a Milvus Lite database you manage; used in place, never deleted.
- ``uri="http://host:19530"`` (+ ``token=...``, ``db_name=...``): a Milvus server or cluster - the
  way to grow past one machine. The data stays on the server; `save` records the uri (without
  credentials), database and collection, and `load_index` reconnects (pass ``token=`` or set
  ``VESTIS_MILVUS_TOKEN``).

Collection schema: ``id`` VARCHAR primary key (the item id, at most ``max_id_length`` bytes),
``vector`` FLOAT_VECTOR(dim), ``attributes`` JSON holding the item's specified labels (all of them), and one
VARCHAR field per attribute declared when the index is created (``attributes=[...]``, as `vestis index` does with
the catalogue's attributes): ``attr_0``, ``attr_1``... in declared order (attribute names are free text; the
mapping is the index option ``attribute_fields``, recorded in the manifest). Filters on those attributes compare
the plain field (``attr_0 in ["Women", "Men"]``) instead of a JSON path, which a 2.3 server evaluates row by row
(157-216 ms per search at 1M items, measured); an item without the label holds ``"unspecified"`` there, a value no
stored label can have (`check_attributes` drops it), so ``"unspecified"`` in a filter is a plain value too.
Attributes first seen on items after creation, those past the first ``MAX_SCALAR_FIELDS``, and every attribute of
a collection made before these fields (``scalar_fields=False``, or a manifest without ``attribute_fields``) are
filtered through the JSON field as before. ``scalar_index="Trie"`` (a 2.3 server; Milvus Lite builds
``"INVERTED"``) adds a scalar index on every field: off by default, as it made no filter faster at 200,000 items.
``partition_attribute="gender"`` (off by default; one of the attributes with a field) keeps each value's items in a
partition of their own, named by `partition_name` from the value (``v_Women_<16 hex digits of its sha256>``, the
same for every client and every reload; a missing label is the value ``"unspecified"``; a new value gets its
partition when its first item arrives, at most ``MAX_VALUE_PARTITIONS``), so that a filter on that attribute searches
only its values' partitions (``partition_names``; further conditions stay the expression) - each partition has its own
segments and so its own graphs, which a broad filter the query contradicts needs (the filtered walk of a shared graph
finds few matches in its neighbourhood). Adds, upserts and attribute updates that change the value move the row:
deleted from the old partition, then written to the new one (see `_upsert`).
Consistency: the collection is created Strong (the look-ups behind add / remove / attribute updates see every
completed write), and searches run at ``consistency="Session"`` by default: they see every write made through this
index object at once and other clients' writes after the server's time tick (about 0.2 s). A Strong search waits for
that tick every time - p50 200 ms on a 2.3 server, measured, against 2 ms at Session - so it is an option
(``"Strong"``, ``"Session"``, ``"Bounded"``, ``"Eventually"``), not the default. `wait_for_index` flushes and waits
until a server has built the vector index of every sealed segment and its query node serves them (what a benchmark
of a freshly filled collection needs: until then searches scan raw or interim-indexed segments).

Filters become Milvus boolean expressions built here, never by pymilvus: every attribute name and
value is a double-quoted string literal with backslash, quote and \\n \\r \\t escaped (other control
characters are refused), e.g. ``{"colour": ["navy", 'say "hi"']}`` -> ``attr_1 in ["navy", "say \\"hi\\""]`` on
a scalar field, and on the JSON field
``(attributes["colour"] == "navy" or attributes["colour"] == "say \\"hi\\"")``, where ``"unspecified"``
becomes ``not (exists attributes["colour"])``. (`==`/`or` rather than `in [...]` because Milvus
Lite does not accept `in` on JSON paths.) Deletes and id look-ups build ``id in ["..."]`` the same
way (pymilvus's own `delete(ids=...)` / `get` / `query_iterator` do not escape string keys).

Kinds -> Milvus index types: flat -> FLAT, hnsw -> HNSW (M, efConstruction; search ``ef``), ivfpq ->
IVF_PQ (nlist, m, nbits; search ``nprobe``). Milvus Lite 3.2 builds FLAT, HNSW, HNSW_SQ, IVF_FLAT,
IVF_SQ8 (and BRUTE_FORCE, AUTOINDEX) but no product quantisation - it accepts IVF_PQ and then
silently falls back to a brute-force scan - so ``kind="ivfpq"`` on Milvus Lite is refused unless
``index_type=`` names one it builds (e.g. ``"IVF_SQ8"``, the compressed IVF it has).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from vestis.index.base import (
    UNSPECIFIED,
    IndexMeta,
    SearchResult,
    VectorIndex,
    check_attributes,
    check_ids,
    check_k,
    check_options,
    check_vectors,
    positive_int,
)
from vestis.index.errors import (
    CorruptIndexError,
    InvalidIdError,
    MissingDependencyError,
    UnknownIdError,
    UnsupportedIndexError,
    VectorIndexError,
)
from vestis.index.manifest import Manifest, write_index_dir

ID_FIELD, VECTOR_FIELD, ATTR_FIELD = "id", "vector", "attributes"
DB_NAME, DESCRIPTOR = "milvus.db", "milvus.json"
DEFAULT_COLLECTION = "vestis_items"
MAX_TOPK = 16384
TOKEN_ENV = "VESTIS_MILVUS_TOKEN"
INSTALL_HINT = "pip install 'vestis[milvus]'"

KIND_INDEX_TYPE = {"flat": "FLAT", "hnsw": "HNSW", "ivfpq": "IVF_PQ"}
LITE_INDEX_TYPES = ("FLAT", "BRUTE_FORCE", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX")
DEFAULTS: dict[str, dict] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 256},  # as the FAISS defaults
    "ivfpq": {"nlist": 1024, "m": None, "nbits": 8, "nprobe": 64},  # per segment; not measured (no server here)
}
COMMON = {"uri": None, "token": None, "db_name": None, "collection": DEFAULT_COLLECTION, "index_type": None,
          "work_dir": None, "max_id_length": 512, "overwrite": False, "batch_size": 1000, "consistency": "Session",
          "scalar_fields": True, "scalar_index": None, "partition_attribute": None}
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
FIELD_PREFIX = "attr_"
MISSING = UNSPECIFIED  # a scalar field's value for an item without the label: no stored label equals it
MAX_VALUE_LENGTH = 65535  # the longest VARCHAR Milvus holds (bytes); longer labels are refused on a field
MAX_SCALAR_FIELDS = 60  # Milvus allows 64 fields per collection (proxy.maxFieldNum); id, vector and JSON take 3
MIN_INDEXED_ROWS = 1024  # a Milvus 2.3 server indexes no segment below this many rows (minSegmentNumRowsToEnableIndex)
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
DEFAULT_PARTITION = "_default"
PARTITION_PREFIX = "v_"
# value partitions a collection may hold: a 2.3 server allows 4096 partitions per collection (rootCoord.maxPartitionNum),
# one of them `_default`; every partition has its own segments, so thousands of small ones cost more than they save
MAX_VALUE_PARTITIONS = 4095


def _pymilvus():
    try:
        import pymilvus
    except ImportError as e:
        raise MissingDependencyError(f"the Milvus backend needs pymilvus: {INSTALL_HINT}") from e
    return pymilvus


def _is_local(uri: str | None) -> bool:
    return uri is None or (str(uri).endswith(".db") and "://" not in str(uri))


def _strip_credentials(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = host + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def quote(value: str) -> str:
    """A Milvus expression string literal for `value` (double-quoted, escaped)."""
    out = ['"']
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ch == "\x7f":
            raise UnsupportedIndexError(f"cannot express {value!r} in a Milvus filter: control character {ch!r}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def filter_expression(filters: dict[str, tuple[str, ...]] | None, fields: dict[str, str] | None = None) -> str | None:
    """Milvus expression for normalised filters; "" never matches nothing - None means no filter,
    and a clause with no values makes the caller return no results (see `MilvusIndex.search`).
    `fields`: {attribute: scalar field} of the collection; other attributes are read from the JSON field."""
    if not filters:
        return None
    clauses = []
    for attr, values in filters.items():
        if not values:
            return "false"
        field = (fields or {}).get(attr)
        if field is not None:  # "unspecified" is the stored value of a missing label (MISSING)
            clauses.append(f"{field} == {quote(values[0])}" if len(values) == 1
                           else f"{field} in [{', '.join(quote(v) for v in values)}]")
            continue
        path = f"{ATTR_FIELD}[{quote(attr)}]"
        terms = [f"{path} == {quote(v)}" for v in values if v != UNSPECIFIED]
        if UNSPECIFIED in values:
            terms.append(f"not (exists {path})")
        clauses.append(terms[0] if len(terms) == 1 else "(" + " or ".join(terms) + ")")
    return " and ".join(clauses)


def partition_name(value: str) -> str:
    """The partition holding the items whose partition attribute has `value` ("unspecified" included): a pure function
    of the value (so every client and every reload agree without a stored mapping), readable where the value is
    ASCII, and a valid Milvus name whatever its characters: ``v_<ASCII letters and digits, at most 32>_<16 hex digits of
    its sha256>``, e.g. ``v_Women_81c511ebf87c040e``."""
    slug = re.sub(r"[^A-Za-z0-9]", "", value)[:32]
    return f"{PARTITION_PREFIX}{slug}_{hashlib.sha256(value.encode('utf-8')).hexdigest()[:16]}"


def _ids_expression(ids: Sequence[str]) -> str:
    return f"{ID_FIELD} in [{', '.join(quote(i) for i in ids)}]"


@contextlib.contextmanager
def _milvus_errors(what: str):
    try:
        yield
    except VectorIndexError:
        raise
    except Exception as e:
        pymilvus = _pymilvus()
        if isinstance(e, pymilvus.MilvusException):
            msg = getattr(e, "message", None) or str(e)
            raise VectorIndexError(f"Milvus could not {what}: {msg}") from e
        raise


def _release_lite(db_path: str | None) -> None:
    if not db_path:
        return
    try:
        from milvus_lite.server_manager import server_manager_instance
    except ImportError:
        return
    server_manager_instance.release_server(db_path)


def _cleanup(client, db_path, owned_dir) -> None:
    with contextlib.suppress(Exception):
        client.close()
    with contextlib.suppress(Exception):
        _release_lite(db_path)
    if owned_dir:
        shutil.rmtree(owned_dir, ignore_errors=True)


class MilvusIndex(VectorIndex):
    backend = "milvus"

    def __init__(self, kind: str, dim: int, metric: str = "ip", *, run_id: str | None = None,
                 schema_digest: str | None = None, attributes: Sequence[str] | None = None,
                 _meta: IndexMeta | None = None, _open: str | None = None, _fields: dict[str, str] | None = None,
                 **options):
        meta = _meta or IndexMeta(kind=kind, dim=dim, metric=metric, run_id=run_id, schema_digest=schema_digest)
        super().__init__(meta, attributes)
        o = check_options(options, {**COMMON, **DEFAULTS[self.kind]}, f"milvus {self.kind} index")
        self._opts = self._validate(o)
        self._pm = _pymilvus()
        self._lock = threading.RLock()
        self._client = None
        self._owned_dir: str | None = None
        self._db_path: str | None = None
        self._finalizer = None
        self._collection = self._opts["collection"]
        if _open is None:  # a field per declared attribute; an opened collection has the ones its manifest names
            names = self.attribute_names[:MAX_SCALAR_FIELDS] if self._opts["scalar_fields"] else []
            self._fields = {a: f"{FIELD_PREFIX}{i}" for i, a in enumerate(names)}
        else:
            self._fields = dict(_fields or {})
        self._pattr = self._opts["partition_attribute"]
        if self._pattr is not None and self._pattr not in self._fields:
            error = CorruptIndexError if _open is not None else UnsupportedIndexError
            raise error(f"partition_attribute {self._pattr!r} must be an attribute declared when the index is created "
                        f"(attributes=[...]) and stored in a scalar field (scalar_fields true, one of the first "
                        f"{MAX_SCALAR_FIELDS}); this index has fields for: {', '.join(map(repr, self._fields)) or 'none'}")
        self._partitions: set[str] = set()  # the collection's partitions as last listed or created here
        if self.local:
            self._setup_local(existing_db=_open)
        self._connect()
        if _open is None:
            self._create_collection()
        else:
            self._check_collection()

    # --- configuration ----------------------------------------------------------------------
    def _validate(self, o: dict) -> dict:
        if not isinstance(o["collection"], str) or not _NAME_RE.match(o["collection"]):
            raise UnsupportedIndexError(
                f"collection name {o['collection']!r} is not valid for Milvus (letters, digits, _; not starting "
                f"with a digit)")
        levels = {c.lower(): c for c in CONSISTENCY_LEVELS}
        if not isinstance(o["consistency"], str) or o["consistency"].lower() not in levels:
            raise UnsupportedIndexError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}, "
                                        f"got {o['consistency']!r}")
        o["consistency"] = levels[o["consistency"].lower()]
        o["max_id_length"] = positive_int("max_id_length", o["max_id_length"])
        o["batch_size"] = positive_int("batch_size", o["batch_size"])
        for n in ("M", "ef_construction", "ef_search", "nlist", "nbits", "nprobe"):
            if n in o:
                o[n] = positive_int(n, o[n])
        if "m" in o:
            o["m"] = positive_int("m", o["m"], allow_none=True)
            if o["m"] is not None and self.dim % o["m"]:
                raise UnsupportedIndexError(f"option m={o['m']} must divide the embedding size {self.dim}")
        itype = o["index_type"] or KIND_INDEX_TYPE[self.kind]
        if not isinstance(itype, str):
            raise UnsupportedIndexError(f"index_type must be a string, got {itype!r}")
        itype = itype.upper()
        if _is_local(o["uri"]) and itype not in LITE_INDEX_TYPES:
            raise UnsupportedIndexError(
                f"Milvus Lite cannot build a {itype} index (it has no product quantisation and would silently "
                f"scan everything); it builds {', '.join(LITE_INDEX_TYPES)}. Use kind='hnsw' or 'flat', pass "
                f"index_type='IVF_SQ8' for a compressed IVF index, or connect to a Milvus server with uri=...")
        o["index_type"] = itype
        if not isinstance(o["scalar_fields"], bool):
            raise UnsupportedIndexError(f"scalar_fields must be true or false, got {o['scalar_fields']!r}")
        if o["partition_attribute"] is not None and not (isinstance(o["partition_attribute"], str)
                                                         and o["partition_attribute"]):
            raise UnsupportedIndexError(f"partition_attribute must be an attribute name, got {o['partition_attribute']!r}")
        if o["scalar_index"] is not None and not (isinstance(o["scalar_index"], str) and _NAME_RE.match(o["scalar_index"])):
            raise UnsupportedIndexError(f"scalar_index must be a Milvus index type for VARCHAR fields (e.g. 'Trie'), "
                                        f"got {o['scalar_index']!r}")
        return o

    @property
    def local(self) -> bool:
        """True for Milvus Lite (a local .db), False for a Milvus server."""
        return _is_local(self._opts["uri"])

    @property
    def index_type(self) -> str:
        return self._opts["index_type"]

    @property
    def attribute_fields(self) -> dict[str, str]:
        """{attribute: the collection's scalar VARCHAR field holding it}; the others are filtered through JSON."""
        return dict(self._fields)

    def options(self) -> dict:
        o = {k: v for k, v in self._opts.items() if k not in ("token", "work_dir", "overwrite")}
        o["attribute_fields"] = dict(self._fields)
        # a Lite database travels inside the index directory; a server uri is kept without credentials
        o["uri"] = None if self.local else _strip_credentials(o["uri"])
        return o

    def _build_params(self) -> dict:
        t = self.index_type
        if t.startswith("HNSW"):
            return {"M": self._opts.get("M", 32), "efConstruction": self._opts.get("ef_construction", 80)}
        if t.startswith("IVF"):
            p = {"nlist": self._opts.get("nlist", 1024)}
            if t == "IVF_PQ":
                from vestis.index.faiss_index import default_pq_m
                p.update(m=self._opts.get("m") or default_pq_m(self.dim), nbits=self._opts.get("nbits", 8))
            return p
        return {}

    def _search_params(self, k: int, params: dict) -> dict:
        t = self.index_type
        p: dict = {}
        if t.startswith("HNSW"):
            ef = positive_int("ef_search", params.get("ef_search", self._opts.get("ef_search", 128)))
            p["ef"] = max(ef, k)
        elif t.startswith("IVF"):
            nprobe = positive_int("nprobe", params.get("nprobe", self._opts.get("nprobe", 64)))
            p["nprobe"] = min(nprobe, self._opts.get("nlist", 1024))  # Milvus requires nprobe <= nlist
        return {"metric_type": self.metric.upper(), "params": p}

    # --- connection -------------------------------------------------------------------------
    def _setup_local(self, existing_db: str | None) -> None:
        try:
            import milvus_lite  # noqa: F401
        except ImportError as e:
            raise MissingDependencyError(f"the embedded Milvus (Milvus Lite) needs milvus-lite: {INSTALL_HINT}") from e
        uri = self._opts["uri"]
        if uri is not None and existing_db is None:
            self._db_path = str(Path(uri).resolve())
            Path(self._db_path).parent.mkdir(parents=True, exist_ok=True)
            return
        work = self._opts["work_dir"]
        if work is None:
            work = self._owned_dir = tempfile.mkdtemp(prefix="vestis-milvus-")
        else:
            Path(work).mkdir(parents=True, exist_ok=True)
        self._db_path = str((Path(work) / DB_NAME).resolve())
        if existing_db is not None:
            if Path(self._db_path).exists():
                raise VectorIndexError(f"cannot open a saved Milvus index in {work}: it already holds {DB_NAME}")
            shutil.copytree(existing_db, self._db_path, ignore=shutil.ignore_patterns("LOCK"))

    def _connect(self) -> None:
        kwargs: dict = {"uri": self._db_path if self.local else self._opts["uri"]}
        token = self._opts["token"] or (None if self.local else os.environ.get(TOKEN_ENV))
        if token:
            kwargs["token"] = token
        if self._opts["db_name"]:
            kwargs["db_name"] = self._opts["db_name"]
        with _milvus_errors(f"connect to {kwargs['uri']}"):
            try:
                self._client = self._pm.MilvusClient(**kwargs)
            except self._pm.MilvusException:
                raise
            except Exception as e:  # e.g. Milvus Lite failing to start
                raise VectorIndexError(f"could not start / reach Milvus at {kwargs['uri']}: {e}") from e
        if self._finalizer is not None:
            self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _cleanup, self._client, self._db_path if self.local else None,
                                           self._owned_dir)

    def _create_collection(self) -> None:
        pm, c, name = self._pm, self._client, self._collection
        with _milvus_errors(f"create collection {name!r}"):
            if c.has_collection(name):
                if not self._opts["overwrite"]:
                    raise VectorIndexError(
                        f"Milvus collection {name!r} already exists; choose another collection=... or pass "
                        f"overwrite=True to replace it")
                c.drop_collection(name)
            schema = pm.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(ID_FIELD, pm.DataType.VARCHAR, is_primary=True, max_length=self._opts["max_id_length"])
            schema.add_field(VECTOR_FIELD, pm.DataType.FLOAT_VECTOR, dim=self.dim)
            schema.add_field(ATTR_FIELD, pm.DataType.JSON)
            for field in self._fields.values():
                schema.add_field(field, pm.DataType.VARCHAR, max_length=MAX_VALUE_LENGTH)
            ip = c.prepare_index_params()
            ip.add_index(field_name=VECTOR_FIELD, index_type=self.index_type, metric_type=self.metric.upper(),
                         params=self._build_params())
            for field in self._fields.values() if self._opts["scalar_index"] else ():
                ip.add_index(field_name=field, index_type=self._opts["scalar_index"])
            c.create_collection(name, schema=schema, index_params=ip, consistency_level="Strong")
            self._partitions = set(c.list_partitions(name))

    def _check_collection(self) -> None:
        name = self._collection
        with _milvus_errors(f"open collection {name!r}"):
            if not self._client.has_collection(name):
                raise CorruptIndexError(f"Milvus collection {name!r} does not exist at "
                                        f"{self._db_path if self.local else self._opts['uri']}")
            desc = self._client.describe_collection(name)
            self._client.load_collection(name)
        vec = [f for f in desc["fields"] if f["name"] == VECTOR_FIELD]
        dim = vec[0].get("params", {}).get("dim") if vec else None
        if dim is None or int(dim) != self.dim:
            raise CorruptIndexError(f"Milvus collection {name!r} holds vectors of size {dim}, the manifest says "
                                    f"{self.dim}")
        varchar = {f["name"] for f in desc["fields"] if f.get("type") == self._pm.DataType.VARCHAR}
        lacking = sorted(f for f in self._fields.values() if f not in varchar)
        if lacking:
            raise CorruptIndexError(f"Milvus collection {name!r} lacks the attribute field(s) {', '.join(lacking)} "
                                    f"its manifest names")
        self._check_partitions()

    def _check_partitions(self) -> None:
        """The manifest and the collection agree on partitions: with a partition attribute no row lies outside the
        value partitions; without one the collection has no value partitions (its upserts would land in `_default`
        and leave the old rows in theirs)."""
        name = self._collection
        with _milvus_errors(f"list the partitions of {name!r}"):
            self._partitions = set(self._client.list_partitions(name))
            values = sorted(p for p in self._partitions if p.startswith(PARTITION_PREFIX))
            if self._pattr is None and values:
                raise CorruptIndexError(
                    f"Milvus collection {name!r} holds {len(values)} value partition(s) ({', '.join(values[:3])}...), "
                    f"but its manifest names no partition_attribute: it was built with one, or by another tool")
            if self._pattr is not None:
                # (ids, not count(*): Milvus Lite counts the whole collection whatever partition_names says)
                rows = self._client.query(name, filter=f'{ID_FIELD} != ""', output_fields=[ID_FIELD], limit=1,
                                          partition_names=[DEFAULT_PARTITION], consistency_level="Strong")
                if rows:
                    raise CorruptIndexError(
                        f"Milvus collection {name!r} holds rows (e.g. {rows[0][ID_FIELD]!r}) outside the value "
                        f"partitions of {self._pattr!r} that its manifest names (partition_attribute): it was built "
                        f"without it")

    def close(self) -> None:
        with self._lock:
            if self._finalizer is not None:
                self._finalizer()
                self._finalizer = None
            self._client = None

    def _c(self):
        if self._client is None:
            raise VectorIndexError("this Milvus index is closed")
        return self._client

    # --- add / remove -----------------------------------------------------------------------
    def add(self, ids, vectors, attributes=None) -> None:
        x = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(x))
        attrs = check_attributes(attributes, len(x))
        limit = self._opts["max_id_length"]
        for i in ids:
            if len(i.encode("utf-8")) > limit:
                raise InvalidIdError(f"item id {i[:40]!r}... is longer than {limit} bytes (option max_id_length)")
        if not ids:
            return
        with self._lock:
            for a in attrs:
                for k in a:
                    self._declare_attribute(k)
            self._check_values(attrs)
            with _milvus_errors("add items"):
                previous = self._stored_partition_values(ids) if self._pattr is not None else {}
                self._upsert(((ids[j], x[j], attrs[j]) for j in range(len(ids))), len(ids), previous)

    def _stored_partition_values(self, ids: list[str]) -> dict[str, str]:
        """{id: its stored value of the partition attribute} for the ids the collection holds (a Strong query per
        4,096 ids: each waits for the server's time tick, about 0.2 s, so 500 a query cost a 200,000-item build 80 s)."""
        field, out = self._fields[self._pattr], {}
        for s in range(0, len(ids), 4096):
            chunk = ids[s: s + 4096]
            for r in self._c().query(self._collection, filter=_ids_expression(chunk), output_fields=[ID_FIELD, field],
                                     limit=len(chunk)):
                out[r[ID_FIELD]] = r[field]
        return out

    def _upsert(self, items, n: int, previous: dict[str, str]) -> None:
        """Write rows (id, vector, attributes) in batches. With a partition attribute each row goes to its value's
        partition, and a row whose stored value (`previous`) had another partition is first deleted from that one (a
        move). The index's lock keeps its own searches out until both are done, and the Strong read after the deletes
        makes every later search (Session) see them: no search through this index sees a moved item twice or misses
        it. Another client's search may miss it for the moment between the two writes (Milvus 2.3 has no
        transactions); it never sees it twice."""
        per_batch = max(1, min(self._opts["batch_size"], (32 << 20) // (self.dim * 16 + 256)))
        c = self._c()
        if self._pattr is None:
            batch: list[dict] = []
            for j, (i, v, a) in enumerate(items):
                batch.append(self._row(i, v, a))
                if len(batch) == per_batch or j == n - 1:
                    c.upsert(self._collection, batch)
                    batch = []
            return
        field = self._fields[self._pattr]
        items = list(items)  # (id, vector, attributes): references, the rows are made a batch at a time
        self._ensure_partitions({partition_name(a.get(self._pattr, MISSING)) for _, _, a in items})  # before any write
        moved_any = None
        for s in range(0, n, per_batch):
            groups: dict[str, list[dict]] = {}
            moved: dict[str, list[str]] = {}
            for i, v, a in items[s: s + per_batch]:
                row = self._row(i, v, a)
                part = partition_name(row[field])
                groups.setdefault(part, []).append(row)
                if i in previous and partition_name(previous[i]) != part:
                    moved.setdefault(partition_name(previous[i]), []).append(i)
            # the old rows go first, as a delete stamped before the upsert cannot touch the new row whatever the
            # engine does with partition_name (Milvus Lite deletes a key from every partition's unsealed rows, and its
            # upsert leaves the key's sealed rows in other partitions alone)
            for part, moved_ids in moved.items():
                c.delete(self._collection, filter=_ids_expression(moved_ids), partition_name=part)
                moved_any = moved_ids[0]
            if moved and self.local:
                # Milvus Lite, on a reopened database, brings a deleted sealed row back when its key is inserted again
                # before the delete is flushed (seen in the tests)
                c.flush(self._collection)
            for part, rows in groups.items():
                c.upsert(self._collection, rows, partition_name=part)
        if moved_any is not None and not self.local:  # as in `remove`: a 2.3 server's delete returns no timestamp
            c.query(self._collection, filter=_ids_expression([moved_any]), output_fields=[ID_FIELD], limit=1,
                    consistency_level="Strong")

    def _ensure_partitions(self, names) -> None:
        """Create the value partitions among `names` that the collection lacks, all or none: more than
        MAX_VALUE_PARTITIONS in all is refused before anything is written."""
        missing = [p for p in names if p not in self._partitions]
        if not missing:
            return
        c = self._c()
        self._partitions = set(c.list_partitions(self._collection))  # another client may have made them
        missing = [p for p in missing if p not in self._partitions]
        if not missing:
            return
        have = sum(p.startswith(PARTITION_PREFIX) for p in self._partitions)
        if have + len(missing) > MAX_VALUE_PARTITIONS:
            raise UnsupportedIndexError(
                f"partition_attribute {self._pattr!r} would need {have + len(missing)} partitions, one per value; Milvus "
                f"holds at most {MAX_VALUE_PARTITIONS} here (4096 per collection on a 2.3 server, one of them _default): "
                f"choose an attribute with fewer values, or build the index without partition_attribute")
        for p in missing:
            c.create_partition(self._collection, p)
            self._partitions.add(p)
        # a partition made after the collection was loaded is not searched until it is loaded (Milvus Lite after a
        # reopen, seen in the tests); Lite loads whole collections only, and loading a loaded one loads what it lacks
        c.load_collection(self._collection)

    def _row(self, item_id: str, vector, attrs: dict[str, str]) -> dict:
        """One row: the vector as a list (numpy rows from adds, lists read back for updates), the JSON field holds every
        label, each scalar field its attribute's label or MISSING."""
        row = {ID_FIELD: item_id, VECTOR_FIELD: vector.tolist() if isinstance(vector, np.ndarray) else vector,
               ATTR_FIELD: attrs}
        for attr, field in self._fields.items():
            row[field] = attrs.get(attr, MISSING)
        return row

    def _check_values(self, attrs: list[dict[str, str]]) -> None:
        for a in attrs:
            for attr in self._fields.keys() & a.keys():
                if len(a[attr].encode("utf-8")) > MAX_VALUE_LENGTH:
                    raise UnsupportedIndexError(f"attribute {attr!r}: value {a[attr][:40]!r}... is longer than "
                                                f"{MAX_VALUE_LENGTH} bytes, the most a Milvus VARCHAR field holds")

    def set_attributes(self, ids, attributes) -> None:
        """Milvus has no partial update here (a 2.3 server neither): each row is read back with its vector and
        upserted with the new attributes, after every id was found."""
        ids = check_ids(ids)
        attrs = check_attributes(attributes, len(ids))
        if not ids:
            return
        self._check_values(attrs)
        with self._lock, _milvus_errors("update attributes"):
            rows: dict[str, list] = {}
            previous: dict[str, str] = {}
            pfield = [self._fields[self._pattr]] if self._pattr is not None else []
            for s in range(0, len(ids), 500):
                chunk = ids[s: s + 500]
                for r in self._c().query(self._collection, filter=_ids_expression(chunk),
                                         output_fields=[ID_FIELD, VECTOR_FIELD, *pfield], limit=len(chunk)):
                    rows[r[ID_FIELD]] = list(r[VECTOR_FIELD])
                    if pfield:
                        previous[r[ID_FIELD]] = r[pfield[0]]
            unknown = [i for i in ids if i not in rows]
            if unknown:
                raise UnknownIdError(unknown)
            for a in attrs:
                for k in a:
                    self._declare_attribute(k)
            self._upsert(((i, rows[i], a) for i, a in zip(ids, attrs)), len(ids), previous)

    def _existing(self, ids: list[str]) -> set[str]:
        found: set[str] = set()
        for s in range(0, len(ids), 500):
            chunk = ids[s: s + 500]
            rows = self._c().query(self._collection, filter=_ids_expression(chunk), output_fields=[ID_FIELD],
                                   limit=len(chunk))
            found.update(r[ID_FIELD] for r in rows)
        return found

    def remove(self, ids, missing: str = "error") -> int:
        if missing not in ("error", "ignore"):
            raise UnsupportedIndexError(f"missing must be 'error' or 'ignore', got {missing!r}")
        ids = check_ids(ids)
        with self._lock, _milvus_errors("remove items"):
            present = self._existing(ids)
            unknown = [i for i in ids if i not in present]
            if unknown and missing == "error":
                raise UnknownIdError(unknown)
            todo = [i for i in ids if i in present]
            for s in range(0, len(todo), 500):
                self._c().delete(self._collection, filter=_ids_expression(todo[s: s + 500]))
            if todo and not self.local:
                # a 2.3 server's delete returns no timestamp, so a Session search would not wait for it: one Strong
                # read waits until the query node has applied it (every later search sees it)
                self._c().query(self._collection, filter=_ids_expression(todo[:1]), output_fields=[ID_FIELD], limit=1,
                                consistency_level="Strong")
            return len(todo)

    # --- queries ----------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock, _milvus_errors("count items"):
            rows = self._c().query(self._collection, filter="", output_fields=["count(*)"],
                                   consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def ids(self) -> list[str]:
        """All ids, paged in primary-key order (``id > last`` with the server's iterator ordering)."""
        out: list[str] = []
        last = None
        page = 4096
        with self._lock, _milvus_errors("list ids"):
            while True:
                expr = f'{ID_FIELD} != ""' if last is None else f"{ID_FIELD} > {quote(last)}"
                rows = self._c().query(self._collection, filter=expr, output_fields=[ID_FIELD], limit=page,
                                       iterator="True", reduce_stop_for_best="True")
                got = sorted(r[ID_FIELD] for r in rows)
                out.extend(got)
                if len(got) < page:
                    return out
                last = got[-1]

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str) or not item_id:
            return False
        with self._lock, _milvus_errors("look up an id"):
            return bool(self._existing([item_id]))

    def search(self, queries, k, filters=None, **params) -> SearchResult:
        q = check_vectors(queries, self.dim, "queries", allow_1d=True)
        k = check_k(k)
        if k > MAX_TOPK:
            raise UnsupportedIndexError(f"Milvus returns at most {MAX_TOPK} results per query, got k={k}")
        filt = self._check_filters(filters)
        valid = {"HNSW": ("ef_search",), "IVF": ("nprobe",)}
        allowed = next((v for p, v in valid.items() if self.index_type.startswith(p)), ())
        unknown = set(params) - set(allowed)
        if unknown:
            raise UnsupportedIndexError(
                f"unknown search option(s) for a Milvus {self.index_type} index: {', '.join(sorted(unknown))}; "
                f"valid: {', '.join(allowed) or 'none'}")
        partitions = None
        if filt and self._pattr in filt:  # its values' partitions, searched alone; the other clauses stay an expression
            wanted = [partition_name(v) for v in filt.pop(self._pattr)]
            with self._lock, _milvus_errors("list partitions"):
                if any(p not in self._partitions for p in wanted):  # another client may have made it since
                    self._partitions = set(self._c().list_partitions(self._collection))
                partitions = [p for p in wanted if p in self._partitions]
            if not partitions:  # no item has any of those values
                return SearchResult.empty(len(q), self.metric)
        expr = filter_expression(filt, self._fields)
        if expr == "false" or len(q) == 0:
            return SearchResult.empty(len(q), self.metric)
        sp = self._search_params(k, params)
        with self._lock, _milvus_errors("search"):
            res = self._c().search(self._collection, data=q.tolist(), limit=k, filter=expr or "",
                                   output_fields=[ID_FIELD], search_params=sp, anns_field=VECTOR_FIELD,
                                   consistency_level=self._opts["consistency"], partition_names=partitions)
        ids, scores = [], []
        for hits in res:
            ids.append([h[ID_FIELD] for h in hits])
            d = np.array([h["distance"] for h in hits], dtype=np.float32)
            scores.append(d if self.metric == "ip" else -d + np.float32(0))  # Milvus L2 = squared distance
        return SearchResult(ids, scores, self.metric)

    def wait_for_index(self, timeout: float = 3600.0, poll: float = 1.0) -> float:
        """Flush, then wait until the server has built the vector index (and the scalar ones, with `scalar_index`) of
        every segment big enough to get one and its query node serves those segments indexed; the seconds waited.
        Milvus Lite indexes as it inserts: a flush only. VectorIndexError after `timeout` seconds, with the progress
        seen."""
        import time

        t0 = time.monotonic()
        with self._lock, _milvus_errors("wait for the index build"):
            c = self._c()
            c.flush(self._collection)
            if self.local:
                return time.monotonic() - t0
            while True:
                info = c.describe_index(self._collection, VECTOR_FIELD)
                loaded = c.list_loaded_segments(self._collection)
                pending = int(info.get("pending_index_rows", 0))
                for field in self._fields.values() if self._opts["scalar_index"] else ():  # (its own index name)
                    scalar = c.describe_index(self._collection, field)
                    pending += int(scalar.get("pending_index_rows", 0))
                    pending += max(0, int(scalar.get("total_rows", 0)) - int(scalar.get("indexed_rows", 0)))
                unindexed = [s for s in loaded if not s.index_id and s.num_rows >= MIN_INDEXED_ROWS]
                total = int(info.get("total_rows", 0))
                # sealed segments reach the query node some seconds after the flush; until then it serves them growing
                # (a collection too small for any index is searched the same either way)
                served = total < MIN_INDEXED_ROWS or sum(s.num_rows for s in loaded) >= total
                if pending == 0 and int(info.get("indexed_rows", 0)) >= total and served and not unindexed:
                    return time.monotonic() - t0
                if time.monotonic() - t0 > timeout:
                    raise VectorIndexError(
                        f"the Milvus index of {self._collection!r} was not ready after {timeout:g} s: "
                        f"{info.get('indexed_rows')} of {info.get('total_rows')} rows indexed, {len(unindexed)} loaded "
                        f"segment(s) still served without it")
                time.sleep(poll)

    # --- persistence ------------------------------------------------------------------------
    def _manifest(self, count: int) -> Manifest:
        return Manifest(backend=self.backend, kind=self.kind, metric=self.metric, dim=self.dim, count=count,
                        run_id=self.run_id, schema_digest=self.schema_digest, created_at=self.created_at,
                        options=self.options(), attributes=self.attribute_names)

    def save(self, index_dir) -> Path:
        index_dir = Path(index_dir)
        with self._lock:
            with _milvus_errors("flush before saving"):
                self._c().flush(self._collection)
            count = len(self)
            descriptor = {"collection": self._collection, "index_type": self.index_type,
                          "mode": "lite" if self.local else "server"}
            if not self.local:
                descriptor.update(uri=_strip_credentials(self._opts["uri"]), db_name=self._opts["db_name"])

            def write(folder: Path) -> dict:
                (folder / DESCRIPTOR).write_text(json.dumps(descriptor, indent=1) + "\n", encoding="utf-8")
                if self.local:
                    # a consistent copy needs the embedded server stopped: close, copy, reopen
                    _cleanup(self._client, self._db_path, None)
                    self._client = None
                    try:
                        shutil.copytree(self._db_path, folder / DB_NAME, ignore=shutil.ignore_patterns("LOCK"))
                    finally:
                        self._connect()
                        self._c().load_collection(self._collection)
                return {"collection": self._collection, "index_type": self.index_type, "mode": descriptor["mode"]}

            write_index_dir(index_dir, self._manifest(count), write)
            return index_dir

    @classmethod
    def _load(cls, manifest: Manifest, index_dir: Path, **options) -> "MilvusIndex":
        folder = manifest.data_path(index_dir)
        try:
            desc = json.loads((folder / DESCRIPTOR).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CorruptIndexError(f"cannot read {folder / DESCRIPTOR}: {e}") from None
        overridable = {"uri", "token", "db_name", "work_dir", "ef_search", "nprobe", "batch_size", "consistency"}
        bad = set(options) - overridable
        if bad:
            raise UnsupportedIndexError(
                f"option(s) {', '.join(sorted(bad))} cannot change when loading; valid: {', '.join(sorted(overridable))}")
        opts = {k: v for k, v in manifest.options.items() if k in set(COMMON) | set(DEFAULTS[manifest.kind])}
        fields = manifest.options.get("attribute_fields")
        if fields is None:  # saved before scalar attribute fields: every filter reads the JSON field
            fields, opts["scalar_fields"] = {}, False
        if not isinstance(fields, dict) or not all(isinstance(a, str) and isinstance(f, str) and _NAME_RE.match(f)
                                                   for a, f in fields.items()):
            raise CorruptIndexError(f"Milvus index at {index_dir}: option attribute_fields must map attribute names "
                                    f"to field names, got {fields!r}")
        opts["collection"] = desc.get("collection", DEFAULT_COLLECTION)
        opts["index_type"] = desc.get("index_type", opts.get("index_type"))
        if desc.get("mode") == "lite":
            if "uri" in options or "db_name" in options:
                raise UnsupportedIndexError("a saved Milvus Lite index is opened in a working copy (work_dir=...); "
                                            "uri / db_name apply to indexes kept on a Milvus server")
            if not (folder / DB_NAME).is_dir():
                raise CorruptIndexError(f"Milvus index at {index_dir} lacks its database {folder / DB_NAME}")
            opts["uri"] = None
            existing = str(folder / DB_NAME)
        else:
            opts["uri"] = desc.get("uri")
            opts["db_name"] = desc.get("db_name")
            existing = "server"
        opts.update(options)
        meta = IndexMeta(kind=manifest.kind, dim=manifest.dim, metric=manifest.metric, run_id=manifest.run_id,
                         schema_digest=manifest.schema_digest, created_at=manifest.created_at)
        return cls(manifest.kind, manifest.dim, manifest.metric, attributes=manifest.attributes, _meta=meta,
                   _open=existing, _fields=fields, **opts)
