"""FAISS backend: exact (flat), HNSW and IVF-PQ indexes with in-search attribute filters.

Labels. Every item gets an int64 *label* (a counter, never reused) that FAISS stores; the index
keeps `label -> id`, `id -> label`, an `alive` flag per label and, per attribute, a column of value
codes per label (-1 = unspecified). A column is the dense form of that attribute's inverted lists:
the list of value v is ``labels where column == code(v)``.

Filters run inside FAISS. A filter becomes a boolean mask over labels (per attribute: a list of
values is OR-ed, attributes are AND-ed, dead labels dropped), packed into a `faiss.IDSelectorBitmap`
and passed as ``params=SearchParameters(sel=...)`` (`SearchParametersHNSW` / `SearchParametersIVF`
with the kind's efSearch / nprobe) so FAISS skips non-matching items while it searches - no
over-fetching. A selective filter makes graph and IVF searches meet fewer matching items, so:

- when a share s of the items matches, efSearch (HNSW) and nprobe (IVF) are divided by s (capped),
  so the walk / the probed lists meet about as many matching items as an unfiltered search;
- when s <= ``exact_filter_fraction`` (HNSW 0.2, IVF-PQ 0.05), the search is an exact scan of the
  matching items instead (still a FAISS search with the same selector, on the flat vector storage):
  measured on 200k x 128-d with a random attribute, the HNSW walk's recall@30 fell to 0.89-0.94 at
  s <= 0.2 while the exact scan costs ~1 ms + 8 ms * s; IVF-PQ kept 0.93-0.99 down to s = 0.01;
- any query that comes back with fewer than min(k, matching) results is re-run exactly.
- an exact search (a flat index, or HNSW's exact scan of a selective filter) keeps, per filter it has seen
  (each matching at most half of the items), the matching rows copied into an `IndexFlat` of their own, and
  searches that instead of scanning every row behind the selector: the same inner products in the same row
  order, so the same results, ~4-6x faster for one query (the diverse mode's label groups: 0.58 -> 0.09 ms for
  2,268 of 35,068 part rows, 1.53 -> 0.36 ms for 13,119), and a filter seen before skips building its mask
  over every item. The copies hold at most ``SUBSET_ROWS`` times the index's rows and ``SUBSET_BYTES`` in all,
  least recently used dropped first (catalogue-aware ranking filters on one requested value or "unspecified" per
  query: after 3,050 of `vestis bench serve`'s queries, 176 filters holding 3.7x the 8,767-item label space, 65 MB;
  at 1M items the byte cap keeps the copies under 1 GiB beside the 1.5 GB graph). Any change to the rows or their
  attributes drops them.

So a filtered search returns min(k, number of matching items) results.

Value graphs (HNSW, option ``value_graphs``: a list of attribute names; default none). A broad filter that walks the
whole graph fails where the query's neighbourhood holds no matching item (a query asking for men's items filtered
to women's: recall@30 0.845 at 1M). With ``value_graphs=["gender"]`` every value of gender gets an HNSW graph of
its own items (`vestis.index.value_graphs`), and a filter above the exact-scan share whose attribute is one of
them searches its values' graphs instead (several values: each graph, merged by score), with the bitmap selector
only where the filter names further attributes or a graph holds stale entries. Each attribute costs about the
index's memory and build time again (one more copy of every vector and a graph over it), so none is the default.
The search option ``value_graphs=False`` walks the main graph as before (to compare).

Kinds:

- ``flat``: `IndexIDMap2(IndexFlatIP | IndexFlatL2)`; exact; removal is `remove_ids`.
- ``hnsw``: `IndexIDMap2(IndexHNSWFlat)`. HNSW graphs cannot delete, so `remove` (and the old
  version of an upserted item) leaves a *tombstone*: the label is marked dead and excluded from
  every search by the same ID-selector mechanism. When tombstones exceed ``max_tombstone_fraction``
  of the stored vectors the graph is rebuilt from the live vectors (`compact()`, also callable by
  hand; labels are kept). Saves store the tombstones as they are (no rebuild on save).
- ``ivfpq``: `IndexIVFPQ` (ids stored natively, `remove_ids` supported) needing training: call
  `train(sample)` or the first `add` trains on its own vectors when there are enough. With
  ``refine_factor > 0`` (default) the raw vectors are also kept in an `IndexIDMap2(IndexFlat)` and
  the max(k * refine_factor, 32) best PQ candidates are re-scored exactly, so scores are exact and
  recall is high; ``refine_factor=0`` keeps only the compressed codes (scores approximate).

Threads: FAISS uses ``threads`` OpenMP threads (default: all cores) for adding, training and
batched searches, and ``single_query_threads`` (default 1) for a single query: HNSW and IVF
parallelise over queries, so a second thread only adds fork/join overhead there (measured by
`vestis.bench.index`).

Thread safety: one lock serialises every call on an index object, searches included.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import faiss
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
    fraction,
    positive_int,
)
from vestis.index.errors import (
    CorruptIndexError,
    IndexNotTrainedError,
    UnknownIdError,
    UnsupportedIndexError,
)
from vestis.index.manifest import Manifest, write_index_dir
from vestis.index.value_graphs import GRAPHS_FILE, ValueGraphs, ef_for_share
from vestis.machine import cpu_count

# Defaults measured on 200,000 x 128-d clustered vectors, 2 cores (see vestis.bench.index); HNSW's
# ef_search 256 from `vestis bench search` on 200,000 attribute_baseline vectors (README, search speed):
# recall@30 0.947 at ef 128 is on the goal's edge (0.95), 0.985 at 256, where manipulation + search
# still took a p50 of 1.7-2.2 ms on the loaded 2-core machine.
DEFAULTS: dict[str, dict] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 256, "max_tombstone_fraction": 0.2,
             "exact_filter_fraction": 0.2},
    "ivfpq": {"nlist": None, "m": None, "nbits": 8, "nprobe": 64, "refine_factor": 4,
              "max_train_size": 65536, "exact_filter_fraction": 0.05},
}
# value_graphs: attribute names whose values each get an HNSW graph of their own (hnsw only; see value_graphs.py).
# Accepted by every kind, so `kind="auto"` may pass it whatever it picks: a flat index is exact without them.
COMMON = {"threads": None, "single_query_threads": 1, "value_graphs": ()}
SEARCH_PARAMS = {"flat": (), "hnsw": ("ef_search", "value_graphs"), "ivfpq": ("nprobe", "refine_factor")}

_METRIC = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
INDEX_FILE, REFINE_FILE = "index.faiss", "refine.faiss"
IDS_FILE, LABELS_FILE, CODES_FILE, ATTRS_FILE, TOMB_FILE = (
    "ids.json", "labels.npy", "attribute_codes.npy", "attributes.json", "tombstones.npy")


def default_nlist(n: int) -> int:
    """Power of two near 4*sqrt(n) (2048 for 200k items), with >= 39 training points per list.
    (2*sqrt(n), i.e. 1024 lists at 200k, measured recall@30 0.78 instead of 0.96 on the harder
    benchmark set: longer lists mean larger PQ residuals, and the re-ranked candidates miss.)"""
    target = 4 * math.sqrt(max(n, 1))
    nlist = 2 ** max(0, round(math.log2(target)))
    while nlist > 1 and nlist * 39 > n:
        nlist //= 2
    return max(1, min(nlist, 65536))


def default_pq_m(dim: int) -> int:
    """Largest divisor of dim that is <= dim/4 and <= 64 (>= 4 dims per sub-quantizer)."""
    for m in range(min(64, max(1, dim // 4)), 0, -1):
        if dim % m == 0:
            return m
    return 1


class _Items:
    """label -> id / alive / attribute value codes, id -> label (see module docstring)."""

    def __init__(self):
        self.label_of: dict[str, int] = {}
        self.id_of: list[str | None] = []
        self._alive = np.zeros(0, dtype=bool)
        self._cols: dict[str, np.ndarray] = {}
        self.values: dict[str, list[str]] = {}
        self.codes: dict[str, dict[str, int]] = {}

    @property
    def next_label(self) -> int:
        return len(self.id_of)

    @property
    def alive(self) -> np.ndarray:
        return self._alive[: self.next_label]

    def col(self, attr: str) -> np.ndarray:
        return self._cols[attr][: self.next_label]

    def codes_of(self, attr: str, labels: np.ndarray) -> np.ndarray:
        """The value codes of `attr` for `labels` (-1: unspecified, also when no item has the attribute)."""
        col = self._cols.get(attr)
        return col[labels] if col is not None else np.full(len(labels), -1, dtype=np.int32)

    def _reserve(self, n: int) -> None:
        cap = len(self._alive)
        if n <= cap:
            return
        new = max(n, 2 * cap, 1024)
        alive = np.zeros(new, dtype=bool)
        alive[:cap] = self._alive
        self._alive = alive
        for a, c in self._cols.items():
            col = np.full(new, -1, dtype=np.int32)
            col[:cap] = c
            self._cols[a] = col

    def add_attribute(self, attr: str) -> None:
        if attr not in self._cols:
            self._cols[attr] = np.full(len(self._alive), -1, dtype=np.int32)
            self.values[attr] = []
            self.codes[attr] = {}

    def code(self, attr: str, value: str) -> int:
        c = self.codes[attr].get(value)
        if c is None:
            c = self.codes[attr][value] = len(self.values[attr])
            self.values[attr].append(value)
        return c

    def append(self, ids: list[str], attrs: list[dict[str, str]]) -> np.ndarray:
        start = self.next_label
        self._reserve(start + len(ids))
        labels = np.arange(start, start + len(ids), dtype=np.int64)
        for item_id, lab, a in zip(ids, labels.tolist(), attrs):
            self.id_of.append(item_id)
            self.label_of[item_id] = lab
            for k, v in a.items():
                self.add_attribute(k)
                self._cols[k][lab] = self.code(k, v)
        self._alive[start: start + len(ids)] = True
        return labels

    def relabel(self, labels: Sequence[int], attrs: list[dict[str, str]]) -> None:
        """Replace the attribute codes of live labels (every column: absent = unspecified)."""
        for a in attrs:
            for k in a:
                self.add_attribute(k)
        for lab, a in zip(labels, attrs):
            for k, col in self._cols.items():
                col[lab] = self.code(k, a[k]) if k in a else -1

    def kill(self, labels: Sequence[int]) -> None:
        for lab in labels:
            item_id = self.id_of[lab]
            if item_id is not None and self.label_of.get(item_id) == lab:
                del self.label_of[item_id]
            self.id_of[lab] = None
        self._alive[np.asarray(labels, dtype=np.int64)] = False

    def mask(self, filters: Mapping[str, tuple[str, ...]]) -> np.ndarray:
        m = self.alive.copy()
        for attr, vals in filters.items():
            if attr not in self._cols:  # declared, but no item has it: everything is unspecified
                if UNSPECIFIED not in vals:
                    m[:] = False
                continue
            col = self.col(attr)
            codes = [self.codes[attr][v] for v in vals if v in self.codes[attr]]
            if UNSPECIFIED in vals:
                codes.append(-1)
            if not codes:
                m[:] = False
                return m
            if len(codes) <= 8:  # a few codes: OR-ed comparisons, ~10x faster than np.isin over 200k rows
                hit = col == codes[0]
                for c in codes[1:]:
                    hit |= col == c
                m &= hit
            else:
                m &= np.isin(col, codes)
        return m

    # persistence: rows of live labels only
    def export(self, labels: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
        names = list(self._cols)
        codes = np.stack([self._cols[a][labels] for a in names], axis=1) if names else \
            np.zeros((len(labels), 0), dtype=np.int32)
        return [self.id_of[i] for i in labels.tolist()], names, codes.astype(np.int32)

    @classmethod
    def restore(cls, next_label: int, labels: np.ndarray, ids: list[str], names: list[str],
                values: dict[str, list[str]], codes: np.ndarray) -> "_Items":
        t = cls()
        t.id_of = [None] * next_label
        t._reserve(next_label)
        for a in names:
            t.add_attribute(a)
            t.values[a] = list(values[a])
            t.codes[a] = {v: i for i, v in enumerate(t.values[a])}
        t._reserve(next_label)
        for j, a in enumerate(names):
            t._cols[a][labels] = codes[:, j]
        for lab, item_id in zip(labels.tolist(), ids):
            t.id_of[lab] = item_id
            t.label_of[item_id] = lab
        t._alive[labels] = True
        return t


SUBSET_ROWS = 4  # the filters' own IndexFlat copies hold at most this many times the index's rows, in all,
SUBSET_BYTES = 2**30  # and at most this many bytes of vectors


def _filter_key(filt: Mapping[str, tuple[str, ...]]) -> tuple:
    return tuple(sorted((a, tuple(sorted(v))) for a, v in filt.items()))


def _selector(mask: np.ndarray):
    """IDSelectorBitmap over labels 0..len(mask)-1; returns (selector, buffer to keep alive)."""
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits


class FaissIndex(VectorIndex):
    backend = "faiss"

    def __init__(self, kind: str, dim: int, metric: str = "ip", *, run_id: str | None = None,
                 schema_digest: str | None = None, attributes: Sequence[str] | None = None,
                 _meta: IndexMeta | None = None, _build: bool = True, **options):
        meta = _meta or IndexMeta(kind=kind, dim=dim, metric=metric, run_id=run_id, schema_digest=schema_digest)
        super().__init__(meta, attributes)
        opts = check_options(options, {**COMMON, **DEFAULTS[self.kind]}, f"faiss {self.kind} index")
        self._opts = self._validate(opts)
        self._threads = self._opts["threads"] or cpu_count()
        self._items = _Items()
        self._tombstones = 0  # hnsw: dead labels still stored in the graph
        self._pos_labels: np.ndarray | None = None  # hnsw, flat subsets: storage position -> label (cache)
        # exact searches: filter key -> (IndexFlat of its rows, their labels), least recently used first
        self._subsets: OrderedDict[tuple, tuple] = OrderedDict()
        self._lock = threading.RLock()
        self._index = None
        self._refine = None
        self._graphs = ValueGraphs(self._opts["value_graphs"] if self.kind == "hnsw" else (), self.dim,
                                   _METRIC[self.metric], self._opts.get("M", 32), self._opts.get("ef_construction", 40))
        if _build:
            self._index = self._new_index()
            if self.kind == "ivfpq" and self._opts["refine_factor"]:
                self._refine = faiss.IndexIDMap2(self._flat())

    # --- construction ---------------------------------------------------------------------
    def _validate(self, o: dict) -> dict:
        o["threads"] = positive_int("threads", o["threads"], allow_none=True)
        o["single_query_threads"] = positive_int("single_query_threads", o["single_query_threads"])
        vg = o["value_graphs"]
        if isinstance(vg, str) or not isinstance(vg, (list, tuple)) or not all(isinstance(a, str) and a for a in vg) \
                or len(set(vg)) != len(vg):
            raise UnsupportedIndexError(f"option value_graphs must be a list of distinct attribute names, got {vg!r}")
        o["value_graphs"] = list(vg)
        if self.kind == "hnsw":
            for n in ("M", "ef_construction", "ef_search"):
                o[n] = positive_int(n, o[n])
            o["max_tombstone_fraction"] = fraction("max_tombstone_fraction", o["max_tombstone_fraction"])
        if self.kind == "ivfpq":
            o["nlist"] = positive_int("nlist", o["nlist"], allow_none=True)
            o["m"] = positive_int("m", o["m"], allow_none=True)
            o["nbits"] = positive_int("nbits", o["nbits"])
            o["nprobe"] = positive_int("nprobe", o["nprobe"])
            o["max_train_size"] = positive_int("max_train_size", o["max_train_size"])
            rf = o["refine_factor"]
            if isinstance(rf, bool) or not isinstance(rf, int) or rf < 0:
                raise UnsupportedIndexError(f"option refine_factor must be an integer >= 0, got {rf!r}")
            if o["m"] is not None and self.dim % o["m"]:
                raise UnsupportedIndexError(f"option m={o['m']} must divide the embedding size {self.dim}")
            if o["nbits"] > 16:
                raise UnsupportedIndexError(f"option nbits must be <= 16, got {o['nbits']}")
        if "exact_filter_fraction" in o:
            o["exact_filter_fraction"] = fraction("exact_filter_fraction", o["exact_filter_fraction"])
        return o

    def set_search_threads(self, n: int) -> None:
        with self._lock:
            n = positive_int("threads", n)
            self._threads = n
            self._opts["single_query_threads"] = min(self._opts["single_query_threads"], n)

    def _flat(self):
        return faiss.IndexFlatIP(self.dim) if self.metric == "ip" else faiss.IndexFlatL2(self.dim)

    def _new_index(self):
        if self.kind == "flat":
            return faiss.IndexIDMap2(self._flat())
        if self.kind == "hnsw":
            h = faiss.IndexHNSWFlat(self.dim, self._opts["M"], _METRIC[self.metric])
            h.hnsw.efConstruction = self._opts["ef_construction"]
            h.hnsw.efSearch = self._opts["ef_search"]
            return faiss.IndexIDMap2(h)  # the python wrapper keeps `h` referenced
        return None  # ivfpq: built by train(), when nlist is known

    def options(self) -> dict:
        return dict(self._opts)

    @property
    def is_trained(self) -> bool:
        return self._index is not None and self._index.is_trained

    # --- training ---------------------------------------------------------------------------
    def _min_train(self) -> int:
        return max(self._opts["nlist"] or 1, 2 ** self._opts["nbits"])

    def train(self, vectors: np.ndarray) -> None:
        """IVF-PQ: learn the coarse quantizer and PQ codebooks; other kinds need no training.

        ``nlist`` (unless given) is a power of two near 4*sqrt(len(vectors)), so pass the whole
        catalogue (k-means then runs on a random sample of max(max_train_size, 40*nlist) rows), or
        pass ``nlist`` when training on a small sample. An index that holds items cannot be retrained."""
        if self.kind != "ivfpq":
            return
        x = check_vectors(vectors, self.dim, "training vectors")
        with self._lock:
            if len(self._items.label_of):
                raise UnsupportedIndexError("this IVF-PQ index already holds items; train a new index instead")
            if len(x) < self._min_train():
                raise IndexNotTrainedError(
                    f"IVF-PQ needs at least {self._min_train()} training vectors (nlist={self._opts['nlist']}, "
                    f"nbits={self._opts['nbits']}), got {len(x)}; train on more vectors, or lower nlist / nbits")
            nlist = self._opts["nlist"] or default_nlist(len(x))
            # k-means wants >= 39 points per centroid; more adds training time, not quality
            n_train = max(self._opts["max_train_size"], 40 * nlist, 40 * 2 ** self._opts["nbits"])
            if len(x) > n_train:
                rng = np.random.default_rng(0)
                x = x[np.sort(rng.choice(len(x), n_train, replace=False))]
            m = self._opts["m"] or default_pq_m(self.dim)
            quantizer = self._flat()
            idx = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, self._opts["nbits"], _METRIC[self.metric])
            faiss.omp_set_num_threads(self._threads)
            idx.train(x)
            self._index = idx
            self._opts["nlist"], self._opts["m"] = nlist, m

    # --- add / remove -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items.label_of)

    def ids(self) -> list[str]:
        return list(self._items.label_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items.label_of

    def add(self, ids, vectors, attributes=None) -> None:
        x = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(x))
        attrs = check_attributes(attributes, len(x))
        if not ids:
            return
        with self._lock:
            if self.kind == "ivfpq" and not self.is_trained:
                if len(x) < self._min_train():
                    raise IndexNotTrainedError(
                        f"the IVF-PQ index is not trained and {len(x)} vectors are too few to train on "
                        f"(at least {self._min_train()}); call train(sample) first")
                self.train(x)
            old = [self._items.label_of[i] for i in ids if i in self._items.label_of]
            if old:
                self._drop_labels(old)
            for a in attrs:
                for k in a:
                    self._declare_attribute(k)
            labels = self._items.append(ids, attrs)
            faiss.omp_set_num_threads(self._threads)
            self._index.add_with_ids(x, labels)
            if self._refine is not None:
                self._refine.add_with_ids(x, labels)
            if self._graphs:
                self._graphs.add(labels, x, self._items.codes_of)
            self._pos_labels = None
            self._subsets.clear()
            self._maybe_compact()

    def set_attributes(self, ids, attributes) -> None:
        ids = check_ids(ids)
        attrs = check_attributes(attributes, len(ids))
        with self._lock:
            unknown = [i for i in ids if i not in self._items.label_of]
            if unknown:
                raise UnknownIdError(unknown)
            for a in attrs:
                for k in a:
                    self._declare_attribute(k)
            labels = np.fromiter((self._items.label_of[i] for i in ids), dtype=np.int64, count=len(ids))
            old = {a: self._items.codes_of(a, labels).copy() for a in self._graphs.attributes}
            self._items.relabel(labels.tolist(), attrs)
            if self._graphs:  # items whose value changed move to that value's graph (vectors from the main graph)
                self._graphs.moved(labels, old, self._items.codes_of, self._index.reconstruct_batch)
                self._maybe_compact()
            self._subsets.clear()

    def remove(self, ids, missing: str = "error") -> int:
        if missing not in ("error", "ignore"):
            raise UnsupportedIndexError(f"missing must be 'error' or 'ignore', got {missing!r}")
        ids = check_ids(ids)
        with self._lock:
            unknown = [i for i in ids if i not in self._items.label_of]
            if unknown and missing == "error":
                raise UnknownIdError(unknown)
            labels = [self._items.label_of[i] for i in ids if i in self._items.label_of]
            if labels:
                self._drop_labels(labels)
                self._maybe_compact()
            return len(labels)

    def _drop_labels(self, labels: list[int]) -> None:
        if self._graphs:
            self._graphs.removing(labels, self._items.codes_of)
        self._items.kill(labels)
        self._subsets.clear()
        if self.kind == "hnsw":
            self._tombstones += len(labels)
            return
        sel = faiss.IDSelectorBatch(np.asarray(labels, dtype=np.int64))
        self._index.remove_ids(sel)
        self._pos_labels = None
        if self._refine is not None:
            self._refine.remove_ids(sel)

    def _maybe_compact(self) -> None:
        if self.kind == "hnsw" and self._tombstones and \
                self._tombstones > self._opts["max_tombstone_fraction"] * self._index.ntotal:
            self.compact()
        if self._graphs:  # each value graph by the same rule, on its own entries
            faiss.omp_set_num_threads(self._threads)
            self._graphs.compact(self._items.alive, self._items.codes_of, self._opts["max_tombstone_fraction"])

    def compact(self) -> int:
        """HNSW: rebuild the graph from the live vectors, dropping tombstones (labels are kept).
        Returns the number of tombstones dropped; other kinds hold none."""
        with self._lock:
            if self._graphs:
                faiss.omp_set_num_threads(self._threads)
                self._graphs.compact(self._items.alive, self._items.codes_of)
            if self.kind != "hnsw" or not self._tombstones:
                return 0
            pos_labels = self._position_labels()
            keep = self._items.alive[pos_labels]
            storage = faiss.downcast_index(faiss.downcast_index(self._index.index).storage)
            x = storage.reconstruct_n(0, storage.ntotal)[keep]
            new = self._new_index()
            faiss.omp_set_num_threads(self._threads)
            if len(x):
                new.add_with_ids(np.ascontiguousarray(x), pos_labels[keep])
            dropped = self._tombstones
            self._index, self._tombstones, self._pos_labels = new, 0, None
            return dropped

    def _position_labels(self) -> np.ndarray:
        if self._pos_labels is None:
            self._pos_labels = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        return self._pos_labels

    # --- search -----------------------------------------------------------------------------
    def search(self, queries, k, filters=None, **params) -> SearchResult:
        q = check_vectors(queries, self.dim, "queries", allow_1d=True)
        k = check_k(k)
        filt = self._check_filters(filters)
        unknown = set(params) - set(SEARCH_PARAMS[self.kind]) - {"exact"}
        if unknown:
            raise UnsupportedIndexError(
                f"unknown search option(s) for a faiss {self.kind} index: {', '.join(sorted(unknown))}; "
                f"valid: {', '.join(SEARCH_PARAMS[self.kind] + ('exact',))}")
        use_graphs = params.pop("value_graphs", True)
        if not isinstance(use_graphs, bool):
            raise UnsupportedIndexError(f"value_graphs must be true or false, got {use_graphs!r}")
        with self._lock:
            if len(self) == 0 or len(q) == 0 or (self.kind == "ivfpq" and not self.is_trained):
                return SearchResult.empty(len(q), self.metric)
            key = _filter_key(filt) if filt is not None else None
            seen = self._subsets.get(key) if key is not None else None
            plan = self._value_graph_plan(filt) if use_graphs and filt is not None and self._graphs \
                and not params.get("exact") else None
            if seen is not None:  # a filter searched before as its own rows: no mask over every item needed
                mask, n_match = None, len(seen[1])
            elif plan is not None and len(filt) == 1 and not any(g.stale for g in plan):
                mask, n_match = None, sum(g.entries for g in plan)  # the graphs hold exactly the matching items
            elif filt is not None:
                mask = self._items.mask(filt)
                n_match = int(mask.sum())
            else:
                mask = self._items.alive if self._tombstones else None
                n_match = len(self)
            if n_match == 0:
                return SearchResult.empty(len(q), self.metric)
            k = min(k, n_match)  # never more than can match (a huge k must not allocate huge arrays)
            faiss.omp_set_num_threads(self._opts["single_query_threads"] if len(q) == 1 else self._threads)
            exact = bool(params.get("exact", False)) or self.kind == "flat" or (
                filt is not None and n_match <= self._opts["exact_filter_fraction"] * len(self))
            if mask is None and filt is not None and (
                    (seen is None) if exact else (plan is None or len(filt) > 1 or any(g.stale for g in plan))):
                # an exact scan not cached yet, or a walk that needs the selector (an explicit ef_search or a
                # changed threshold turns a cached exact filter into a walk)
                mask = self._items.mask(filt)
            if exact:
                D, L = self._search_exact(q, k, mask, key)
            elif plan is not None:
                share = n_match / sum(g.entries for g in plan)
                ef = ef_for_share(positive_int("ef_search", params.get("ef_search", self._opts["ef_search"])), k, share)
                sel = bits = None  # both must outlive the search
                if mask is not None:
                    sel, bits = _selector(mask)
                D, L = self._graphs.search(plan, q, k, ef, sel, self.metric == "ip")
                short = np.flatnonzero((L >= 0).sum(axis=1) < k)
                if len(short):
                    if mask is None:
                        mask = self._items.mask(filt)
                    D2, L2 = self._search_exact(q[short], k, mask)
                    D[short], L[short] = D2, L2
            else:
                share = n_match / len(self) if filt is not None else 1.0
                D, L = self._search_approx(q, k, mask, params, share)
                want = min(k, n_match)
                short = np.flatnonzero((L >= 0).sum(axis=1) < want)
                if len(short):  # the graph walk / probed lists held too few matches
                    D2, L2 = self._search_exact(q[short], k, mask)
                    D[short], L[short] = D2, L2
            return self._result(D, L)

    def _value_graph_plan(self, filt: Mapping[str, tuple[str, ...]]) -> list | None:
        """The value graphs that hold a filter's matches: those of its values of one `value_graphs` attribute (the one
        with the fewest entries, when it names several); None when it names none. A value no item has has no graph
        and matches nothing."""
        best = None
        for attr, vals in filt.items():
            if attr not in self._graphs.attributes:
                continue
            known = self._items.codes.get(attr, {})
            codes = {known[v] for v in vals if v in known} | ({-1} if UNSPECIFIED in vals else set())
            graphs = [g for g in (self._graphs.graph(attr, c) for c in sorted(codes)) if g is not None]
            if best is None or sum(g.entries for g in graphs) < sum(g.entries for g in best):
                best = graphs
        return best

    def _search_exact(self, q, k, mask, key: tuple | None = None):
        """Exhaustive search over the matching items (a FAISS search with the bitmap selector; a flat index's
        filter `key` seen before: a search of its matching rows' own IndexFlat)."""
        sub = self._subset(key, mask) if key is not None and self.kind in ("flat", "hnsw") else None
        if sub is not None:
            D, P = sub[0].search(q, k)
            return D, np.where(P >= 0, sub[1][np.maximum(P, 0)], -1)
        if self.kind == "flat" or (self.kind == "ivfpq" and self._refine is not None):
            target = self._index if self.kind == "flat" else self._refine
            if mask is None:
                return target.search(q, k)
            sel, bits = _selector(mask)  # both must outlive the search
            return target.search(q, k, params=faiss.SearchParameters(sel=sel))
        if self.kind == "hnsw":
            pos_labels = self._position_labels()
            storage = faiss.downcast_index(faiss.downcast_index(self._index.index).storage)
            pos_mask = self._items.alive[pos_labels] if mask is None else mask[pos_labels]
            sel, bits = _selector(pos_mask)
            D, P = storage.search(q, k, params=faiss.SearchParameters(sel=sel))
            L = np.where(P >= 0, pos_labels[np.maximum(P, 0)], -1)
            return D, L
        # ivfpq without raw vectors: scan every list
        return self._search_approx(q, k, mask, {"nprobe": self._index.nlist, "refine_factor": 0})

    def _subset(self, key: tuple, mask: np.ndarray | None):
        """The (IndexFlat, labels) of the rows `mask` keeps, in storage order, cached under `key` (mask None: only
        a cached one); None when they are more than half the index or over the budget (`SUBSET_ROWS`,
        `SUBSET_BYTES`) alone."""
        sub = self._subsets.get(key)
        if sub is not None:
            self._subsets.move_to_end(key)
            return sub
        if mask is None:
            return None
        n = int(mask.sum())
        budget = min(SUBSET_ROWS * len(self), SUBSET_BYTES // (4 * self.dim))
        if not 0 < n <= min(len(self) // 2, budget):
            return None
        while self._subsets and sum(len(labels) for _, labels in self._subsets.values()) + n > budget:
            self._subsets.popitem(last=False)
        pos_labels = self._position_labels()
        rows = np.flatnonzero(mask[pos_labels])
        stored = faiss.downcast_index(self._index.index)
        if self.kind == "hnsw":
            stored = faiss.downcast_index(stored.storage)
        index = self._flat()
        index.add(stored.reconstruct_batch(rows))
        sub = self._subsets[key] = (index, pos_labels[rows])
        return sub

    def _search_approx(self, q, k, mask, params, share: float = 1.0):
        """HNSW / IVF search with the selector. With a filter matching a share s of the items,
        efSearch and nprobe are divided by s, so the walk / the probed lists meet about as many
        matching items as an unfiltered search would."""
        sel = bits = None  # the selector and its bitmap must outlive the search
        if mask is not None:
            sel, bits = _selector(mask)
        if self.kind == "hnsw":
            ef = ef_for_share(positive_int("ef_search", params.get("ef_search", self._opts["ef_search"])), k, share)
            sp = faiss.SearchParametersHNSW(efSearch=ef)
            if sel is not None:
                sp = faiss.SearchParametersHNSW(efSearch=ef, sel=sel)
            return self._index.search(q, k, params=sp)
        nprobe = positive_int("nprobe", params.get("nprobe", self._opts["nprobe"]))
        rf = params.get("refine_factor", self._opts["refine_factor"])
        if isinstance(rf, bool) or not isinstance(rf, int) or rf < 0:
            raise UnsupportedIndexError(f"refine_factor must be an integer >= 0, got {rf!r}")
        if rf and self._refine is None:
            raise UnsupportedIndexError("this IVF-PQ index keeps no raw vectors (refine_factor=0 at creation)")
        nprobe = min(math.ceil(nprobe / share), self._index.nlist)
        sp = faiss.SearchParametersIVF(nprobe=nprobe)
        if sel is not None:
            sp = faiss.SearchParametersIVF(nprobe=nprobe, sel=sel)
        kk = max(k * rf, 32) if rf else k  # re-scoring 32 raw vectors costs next to nothing
        D, L = self._index.search(q, kk, params=sp)
        if not rf:
            return D, L
        return self._rerank(q, k, L)

    def _rerank(self, q, k, cand):
        """Exact scores for the PQ candidates, from the raw vectors of the refine store."""
        D = np.full((len(q), k), np.nan, dtype=np.float32)
        L = np.full((len(q), k), -1, dtype=np.int64)
        for i in range(len(q)):
            c = cand[i][cand[i] >= 0]
            if not len(c):
                continue
            x = self._refine.reconstruct_batch(c)
            s = x @ q[i] if self.metric == "ip" else ((x - q[i]) ** 2).sum(axis=1)
            order = np.argsort(-s if self.metric == "ip" else s, kind="stable")[:k]
            D[i, : len(order)], L[i, : len(order)] = s[order], c[order]
        return D, L

    def _result(self, D, L) -> SearchResult:
        ids, scores = [], []
        id_of = self._items.id_of
        alive = self._items.alive
        for d, lab in zip(D, L):
            ok = lab >= 0
            ok[ok] = alive[lab[ok]]
            labs = lab[ok]
            ids.append([id_of[j] for j in labs.tolist()])
            s = d[ok].astype(np.float32)
            scores.append(s if self.metric == "ip" else -s + np.float32(0))  # + 0: no "-0.0"
        return SearchResult(ids, scores, self.metric)

    # --- persistence ------------------------------------------------------------------------
    def _manifest(self) -> Manifest:
        return Manifest(backend=self.backend, kind=self.kind, metric=self.metric, dim=self.dim, count=len(self),
                        run_id=self.run_id, schema_digest=self.schema_digest, created_at=self.created_at,
                        options=self.options(), attributes=self.attribute_names)

    def save(self, index_dir) -> Path:
        with self._lock:
            def write(folder: Path) -> dict:
                labels = np.fromiter(self._items.label_of.values(), dtype=np.int64, count=len(self))
                ids, names, codes = self._items.export(labels)
                (folder / IDS_FILE).write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
                np.save(folder / LABELS_FILE, labels)
                np.save(folder / CODES_FILE, codes)
                (folder / ATTRS_FILE).write_text(json.dumps(
                    {"names": names, "values": {a: self._items.values[a] for a in names}}, ensure_ascii=False),
                    encoding="utf-8")
                if self.kind == "hnsw":
                    dead = np.flatnonzero(~self._items.alive[self._position_labels()])
                    np.save(folder / TOMB_FILE, self._position_labels()[dead])
                if self._index is not None:
                    faiss.write_index(self._index, str(folder / INDEX_FILE))
                if self._refine is not None:
                    faiss.write_index(self._refine, str(folder / REFINE_FILE))
                if self._graphs:
                    self._graphs.save(folder, lambda a, c: None if c < 0 else self._items.values[a][c])
                return {"next_label": self._items.next_label, "trained": self.is_trained,
                        "tombstones": self._tombstones}

            write_index_dir(index_dir, self._manifest(), write)
            return Path(index_dir)

    @classmethod
    def _load(cls, manifest: Manifest, index_dir: Path, **options) -> "FaissIndex":
        folder = manifest.data_path(index_dir)
        saved = dict(manifest.options)
        # search-time defaults and threads may be overridden when loading
        overridable = {"threads", "single_query_threads", "ef_search", "nprobe", "exact_filter_fraction", "max_tombstone_fraction"}
        bad = set(options) - overridable
        if bad:
            raise UnsupportedIndexError(
                f"option(s) {', '.join(sorted(bad))} cannot change when loading; valid: {', '.join(sorted(overridable))}")
        saved.update(options)
        meta = IndexMeta(kind=manifest.kind, dim=manifest.dim, metric=manifest.metric, run_id=manifest.run_id,
                         schema_digest=manifest.schema_digest, created_at=manifest.created_at)
        self = cls(manifest.kind, manifest.dim, manifest.metric, attributes=manifest.attributes,
                   _meta=meta, _build=False, **saved)
        try:
            ids = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
            labels = np.load(folder / LABELS_FILE, allow_pickle=False)
            codes = np.load(folder / CODES_FILE, allow_pickle=False)
            attrs = json.loads((folder / ATTRS_FILE).read_text(encoding="utf-8"))
            next_label = int(manifest.state["next_label"])
            if (folder / INDEX_FILE).exists():
                self._index = faiss.read_index(str(folder / INDEX_FILE))
            if (folder / REFINE_FILE).exists():
                self._refine = faiss.read_index(str(folder / REFINE_FILE))
            tomb = np.load(folder / TOMB_FILE, allow_pickle=False) if manifest.kind == "hnsw" else None
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise CorruptIndexError(f"cannot read the faiss index at {index_dir}: {e}") from None
        n = len(ids)
        if labels.shape != (n,) or codes.shape != (n, len(attrs["names"])) or n != manifest.count:
            raise CorruptIndexError(f"faiss index at {index_dir}: item files disagree ({n} ids, "
                                    f"{labels.shape[0]} labels, manifest count {manifest.count})")
        if self._index is not None:
            if self._index.d != manifest.dim:
                raise CorruptIndexError(f"faiss index at {index_dir} has dim {self._index.d}, "
                                        f"the manifest says {manifest.dim}")
            stored = n + (len(tomb) if tomb is not None else 0)
            if self._index.ntotal != stored:
                raise CorruptIndexError(f"faiss index at {index_dir} stores {self._index.ntotal} vectors, "
                                        f"the item files {stored}")
            if manifest.kind == "ivfpq":
                ivf = faiss.extract_index_ivf(self._index)
                self._opts["nlist"] = ivf.nlist
        elif manifest.kind != "ivfpq" or n:
            raise CorruptIndexError(f"faiss index at {index_dir} lacks {INDEX_FILE}")
        if self._refine is None and manifest.kind == "ivfpq" and self._opts["refine_factor"]:
            if n:
                raise CorruptIndexError(f"faiss index at {index_dir} lacks {REFINE_FILE}")
            self._refine = faiss.IndexIDMap2(self._flat())
        self._items = _Items.restore(next_label, labels, ids, attrs["names"], attrs["values"], codes)
        if tomb is not None:  # tombstoned labels stay dead (id None, alive False)
            self._tombstones = len(tomb)
        if self._graphs:
            self._graphs.load(folder, lambda a, v: -1 if v is None else self._items.codes.get(a, {}).get(v),
                              self._items.alive, self._items.codes_of, f"faiss index at {index_dir}")
        elif (folder / GRAPHS_FILE).exists():
            raise CorruptIndexError(f"faiss index at {index_dir} holds value graphs, but its manifest's value_graphs "
                                    f"option is {self._opts['value_graphs']!r}")
        return self
