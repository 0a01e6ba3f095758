"""Vector indexes: embeddings -> nearest neighbours, with exact-match attribute filters.

One interface (`VectorIndex`), two backends:

- ``"faiss"`` (embedded, the default): ``flat`` (exact), ``hnsw`` (graph) and ``ivfpq`` (compressed,
  needs training). Filters run inside FAISS through ID selectors.
- ``"milvus"``: through pymilvus - a Milvus Lite database (embedded, no server) by default, or any
  Milvus server / cluster given ``uri=...`` for catalogues that outgrow one machine. Optional:
  ``pip install 'vestis[milvus]'``.

    >>> index = create_index("faiss", "hnsw", dim=128, run_id="run-1", schema_digest=schema.digest())
    >>> index.add(item_ids, vectors, attributes=[item.labels for item in items])
    >>> result = index.search(query_vectors, k=30, filters={"gender": "women", "baseColour": ["Blue", "Navy Blue"]})
    >>> index.save("indexes/run-1")
    >>> index = load_index("indexes/run-1", expect_run_id="run-1", expect_schema_digest=schema.digest())

``kind="auto"`` (what `vestis index` builds by default) picks the kind from the catalogue's size
when the index is created (`auto_kind`): exact ``flat`` while items x dimensions <= `AUTO_FLAT_MAX_CELLS`
(5 million: 17,700 items of 282-d, ~2 ms per exact query on 2 cores), else ``hnsw`` with the options in
`AUTO_HNSW` (tuned by `vestis bench search` on 200,000 real-distribution vectors: p50 well under
5 ms at recall@30 >= 0.95). The choice is made once; the index directory's manifest records the chosen
kind and its options, and items added later do not change it (rebuild with `vestis index` to choose again).

Scores are always "higher is better": inner products for ``metric="ip"`` (normalise vectors first
for cosine similarity), negated squared Euclidean distances for ``metric="l2"``.
"""

from __future__ import annotations

import os
from numbers import Integral
from pathlib import Path

# FAISS (and the OpenBLAS it bundles) use OpenMP, whose idle threads spin at barriers by default.
# On a 2-core machine shared with other work, spinning threads fight the busy cores: IVF-PQ
# training measured 16x slower (4.9 s vs 0.3 s) with 2 spinning threads under load, and 0.12 s
# with passive waiting. libgomp reads this once, when FAISS is first imported; a value the user
# set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from vestis.index.base import KINDS, METRICS, UNSPECIFIED, SearchResult, VectorIndex
from vestis.index.errors import (
    CorruptIndexError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexNotTrainedError,
    InvalidIdError,
    InvalidVectorError,
    MissingDependencyError,
    UnknownIdError,
    UnsupportedIndexError,
    VectorIndexError,
)
from vestis.index.manifest import Manifest, check_expectations, read_manifest, verify_files

BACKENDS = ("faiss", "milvus")
DEFAULT_BACKEND = "faiss"
DEFAULT_KIND = "hnsw"
DEFAULT_METRIC = "ip"
AUTO = "auto"
AUTO_FLAT_MAX_CELLS = 5_000_000  # items x dimensions below which exact search is cheap (~2 ms on 2 cores)
AUTO_HNSW = {"M": 32, "ef_construction": 80, "ef_search": 256}
# Above this many items the graph needs a wider search for the same recall: over 1,000,000 real-distribution
# vectors efSearch 256 returned recall@30 0.933, 512 0.966 at p50 2.6 ms (README, "One million vectors"); at
# 200,000, 256 gave 0.985.
AUTO_HNSW_LARGE_ITEMS = 200_000
AUTO_HNSW_LARGE_EF_SEARCH = 512

__all__ = [
    "BACKENDS", "KINDS", "METRICS", "UNSPECIFIED", "DEFAULT_BACKEND", "DEFAULT_KIND", "DEFAULT_METRIC",
    "AUTO", "AUTO_FLAT_MAX_CELLS", "AUTO_HNSW", "AUTO_HNSW_LARGE_ITEMS", "AUTO_HNSW_LARGE_EF_SEARCH", "auto_kind",
    "VectorIndex", "SearchResult", "Manifest", "create_index", "load_index", "read_manifest",
    "VectorIndexError", "CorruptIndexError", "IndexMismatchError", "IndexNotFoundError", "IndexNotTrainedError",
    "InvalidIdError", "InvalidVectorError", "MissingDependencyError", "UnknownIdError", "UnsupportedIndexError",
]


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise UnsupportedIndexError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def auto_kind(n_items: int, dim: int, max_flat_cells: int = AUTO_FLAT_MAX_CELLS) -> tuple[str, dict]:
    """The kind (and its options) that ``kind="auto"`` builds for `n_items` vectors of size `dim`:
    ``("flat", {})`` while n_items * dim <= `max_flat_cells`, else ``("hnsw", AUTO_HNSW)``, with efSearch
    `AUTO_HNSW_LARGE_EF_SEARCH` above `AUTO_HNSW_LARGE_ITEMS` items."""
    if isinstance(n_items, bool) or not isinstance(n_items, Integral) or n_items < 0:
        raise UnsupportedIndexError(f"kind 'auto' needs the number of items (an integer >= 0), got {n_items!r}")
    if n_items * dim <= max_flat_cells:
        return "flat", {}
    if n_items > AUTO_HNSW_LARGE_ITEMS:
        return "hnsw", {**AUTO_HNSW, "ef_search": AUTO_HNSW_LARGE_EF_SEARCH}
    return "hnsw", dict(AUTO_HNSW)


def create_index(backend: str = DEFAULT_BACKEND, kind: str = DEFAULT_KIND, dim: int | None = None,
                 metric: str = DEFAULT_METRIC, *, run_id: str | None = None, schema_digest: str | None = None,
                 attributes=None, n_items: int | None = None, **options) -> VectorIndex:
    """A new, empty index.

    backend: "faiss" | "milvus"; kind: "flat" | "hnsw" | "ivfpq", or "auto" with `n_items` (the number
    of items it will hold; see `auto_kind`; `options` given here override the chosen ones); dim: embedding size;
    metric: "ip" | "l2". `run_id` (the model run whose embeddings it holds) and `schema_digest`
    (`AttributeSchema.digest()`) are stored and checked by `load_index`. `attributes` declares the
    attribute names filters may use before any item carries them. `options` are the backend's and
    kind's options (see `vestis.index.faiss_index.DEFAULTS` and `vestis.index.milvus_index`);
    unknown ones raise `UnsupportedIndexError`.
    """
    _check_choice("backend", backend, BACKENDS)
    _check_choice("index kind", kind, KINDS + (AUTO,))
    _check_choice("metric", metric, METRICS)
    if dim is None:
        raise InvalidVectorError("create_index needs dim, the embedding size")
    if kind == AUTO:
        if n_items is None:
            raise UnsupportedIndexError("kind 'auto' needs n_items, the number of items the index will hold")
        kind, chosen = auto_kind(n_items, dim)
        options = {**chosen, **options}
    common = dict(run_id=run_id, schema_digest=schema_digest, attributes=attributes)
    if backend == "faiss":
        from vestis.index.faiss_index import FaissIndex
        return FaissIndex(kind, dim, metric, **common, **options)
    from vestis.index.milvus_index import MilvusIndex
    return MilvusIndex(kind, dim, metric, **common, **options)


def load_index(index_dir: str | Path, expect_run_id: str | None = None, expect_schema_digest: str | None = None,
               expect_dim: int | None = None, expect_backend: str | None = None, **options) -> VectorIndex:
    """Open a saved index after checking it.

    Raises `IndexNotFoundError` (no manifest), `IndexMismatchError` (another model run, schema,
    embedding size or backend than expected; `.field` names which), `CorruptIndexError` (a file
    missing, truncated or failing its sha256). `options` override search-time defaults (e.g.
    ``ef_search``, ``nprobe``, ``threads``) or, for Milvus, connection settings (``token``,
    ``uri``, ``work_dir``).
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    check_expectations(manifest, index_dir, expect_run_id=expect_run_id, expect_schema_digest=expect_schema_digest,
                       expect_dim=expect_dim, expect_backend=expect_backend)
    if manifest.backend not in BACKENDS or manifest.kind not in KINDS or manifest.metric not in METRICS:
        raise CorruptIndexError(f"{index_dir}/manifest.json names an unknown backend / kind / metric: "
                                f"{manifest.backend!r} / {manifest.kind!r} / {manifest.metric!r}")
    verify_files(manifest, index_dir)
    if manifest.backend == "faiss":
        from vestis.index.faiss_index import FaissIndex
        return FaissIndex._load(manifest, index_dir, **options)
    from vestis.index.milvus_index import MilvusIndex
    return MilvusIndex._load(manifest, index_dir, **options)
