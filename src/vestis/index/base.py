"""The one `VectorIndex` interface every backend implements, its `SearchResult`, and input checks.

Conventions shared by every backend:

- **Ids** are non-empty strings (the catalogue's item ids). Adding an id the index already holds
  replaces its vector and attributes (upsert). The same id twice in one call is an error.
  `set_attributes` replaces the attributes of held items and keeps their vectors.
- **Attributes** are the item's labels, `{attribute: value}` with string values. An absent key,
  `None`, or the value ``"unspecified"`` all mean the label is unspecified.
- **Filters** are `{attribute: value | [values]}`: exact matches, a list means "any of", and
  several attributes must all match. The value ``"unspecified"`` matches items without a label for
  that attribute. An attribute the index has never seen (neither declared at creation with
  `attributes=[...]` nor present on any added item) raises `UnknownAttributeError`; a known
  attribute with a value no item has simply matches nothing.
- **Scores are always "higher is better"**: the inner product for ``metric="ip"`` and the
  *negated squared* Euclidean distance for ``metric="l2"`` (so ``-score`` is the squared distance).
- **Fewer than k**: when fewer than `k` items exist or match the filters, fewer are returned; no
  padding ever leaks out.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from vestis.errors import UnknownAttributeError
from vestis.index.errors import InvalidIdError, InvalidVectorError, UnsupportedIndexError

UNSPECIFIED = "unspecified"  # same state name as vestis.catalog.schema.UNSPECIFIED
METRICS = ("ip", "l2")
KINDS = ("flat", "hnsw", "ivfpq")

Filters = Mapping[str, "str | Sequence[str]"]


@dataclass(frozen=True)
class SearchResult:
    """Per query: item ids best first, and their scores (float32, higher is better)."""

    ids: list[list[str]]
    scores: list[np.ndarray]
    metric: str = "ip"

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[list[str], np.ndarray]:
        return self.ids[i], self.scores[i]

    def __iter__(self) -> Iterator[tuple[list[str], np.ndarray]]:
        return iter(zip(self.ids, self.scores))

    @classmethod
    def empty(cls, n_queries: int, metric: str) -> "SearchResult":
        return cls([[] for _ in range(n_queries)], [np.zeros(0, np.float32) for _ in range(n_queries)], metric)


@dataclass
class IndexMeta:
    """What every index carries and its manifest records."""

    kind: str
    dim: int
    metric: str
    run_id: str | None = None
    schema_digest: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


class VectorIndex(ABC):
    """Nearest-neighbour index over item embeddings with exact-match attribute filters.

    Build one with `vestis.index.create_index`, reopen a saved one with `vestis.index.load_index`.
    """

    backend: str = ""

    def __init__(self, meta: IndexMeta, attributes: Iterable[str] | None = None):
        if meta.metric not in METRICS:
            raise UnsupportedIndexError(f"unknown metric {meta.metric!r}; valid metrics: {', '.join(METRICS)}")
        if meta.kind not in KINDS:
            raise UnsupportedIndexError(f"unknown index kind {meta.kind!r}; valid kinds: {', '.join(KINDS)}")
        if not isinstance(meta.dim, (int, np.integer)) or isinstance(meta.dim, bool) or meta.dim < 1:
            raise InvalidVectorError(f"dim must be a positive integer, got {meta.dim!r}")
        meta.dim = int(meta.dim)
        self._meta = meta
        self._attribute_names: dict[str, None] = {}  # ordered set
        for a in attributes or ():
            self._declare_attribute(a)

    # --- identity ---------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self._meta.kind

    @property
    def dim(self) -> int:
        return self._meta.dim

    @property
    def metric(self) -> str:
        return self._meta.metric

    @property
    def run_id(self) -> str | None:
        return self._meta.run_id

    @property
    def schema_digest(self) -> str | None:
        return self._meta.schema_digest

    @property
    def created_at(self) -> str:
        return self._meta.created_at

    @property
    def attribute_names(self) -> list[str]:
        """Attributes filters may name: declared at creation or seen on an added item."""
        return list(self._attribute_names)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kind={self.kind!r}, dim={self.dim}, metric={self.metric!r}, "
                f"count={len(self)})")

    # --- the interface ----------------------------------------------------------------------
    @abstractmethod
    def add(self, ids: Sequence[str], vectors: np.ndarray,
            attributes: Sequence[Mapping[str, str]] | None = None) -> None:
        """Add items (or replace those whose id is already present). `vectors` is (N, dim) float32."""

    @abstractmethod
    def remove(self, ids: Sequence[str], missing: str = "error") -> int:
        """Remove items by id and return how many were removed. With ``missing="error"`` (default)
        an id the index does not hold raises `UnknownIdError` and nothing is removed; with
        ``missing="ignore"`` such ids are skipped."""

    @abstractmethod
    def set_attributes(self, ids: Sequence[str], attributes: Sequence[Mapping[str, str]]) -> None:
        """Replace the stored attributes of items the index holds (each item's whole mapping; `None` or
        ``"unspecified"`` values are dropped), keeping their vectors: what filters see changes, nothing is
        re-embedded. An id the index does not hold raises `UnknownIdError` and nothing changes."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None, **params) -> SearchResult:
        """The `k` best items for each query row (a single (dim,) vector is one query), restricted to
        items matching `filters`. `params` are per-call search options of the kind (e.g. ``ef_search``
        for HNSW, ``nprobe`` for IVF-PQ)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of items held."""

    @abstractmethod
    def ids(self) -> list[str]:
        """The ids of all items held (order unspecified)."""

    @abstractmethod
    def save(self, index_dir: str | Path) -> Path:
        """Write the index atomically to `index_dir` (see `vestis.index.manifest`)."""

    def __contains__(self, item_id: object) -> bool:
        return item_id in set(self.ids())

    def train(self, vectors: np.ndarray) -> None:
        """Train the index on sample vectors (IVF-PQ); a no-op for kinds that need no training."""

    def set_search_threads(self, n: int) -> None:
        """Search several queries on at most `n` threads of this process (a server process: 1); a no-op for
        backends that search elsewhere."""

    @property
    def is_trained(self) -> bool:
        return True

    def close(self) -> None:
        """Release resources (files, servers). The index is unusable afterwards."""

    def __enter__(self) -> "VectorIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def options(self) -> dict:
        """Construction and default search options, as stored in the manifest."""
        return {}

    # --- shared helpers ---------------------------------------------------------------------
    def _declare_attribute(self, name: object) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidIdError(f"attribute names must be non-empty strings, got {name!r}")
        self._attribute_names.setdefault(name, None)

    def _check_filters(self, filters: Filters | None) -> dict[str, tuple[str, ...]] | None:
        """Normalise filters to {attribute: (values...)}; unknown attributes raise."""
        if not filters:
            return None
        if not isinstance(filters, Mapping):
            raise UnsupportedIndexError(f"filters must be a mapping attribute -> value(s), got {type(filters).__name__}")
        out: dict[str, tuple[str, ...]] = {}
        for attr, value in filters.items():
            if attr not in self._attribute_names:
                raise UnknownAttributeError(attr, sorted(self._attribute_names))
            vals = (value,) if isinstance(value, str) else value
            if not isinstance(vals, Iterable) or isinstance(vals, (bytes, Mapping)):
                raise UnsupportedIndexError(
                    f"filter on {attr!r}: expected a string or a list of strings, got {value!r}")
            vals = tuple(vals)
            for v in vals:
                if not isinstance(v, str):
                    raise UnsupportedIndexError(f"filter on {attr!r}: values must be strings, got {v!r}")
            out[attr] = tuple(dict.fromkeys(vals))
        return out


# --- input checks shared by backends -----------------------------------------------------------
def check_vectors(vectors, dim: int, what: str = "vectors", allow_1d: bool = False) -> np.ndarray:
    """(N, dim) finite float32, C-contiguous. Raises `InvalidVectorError` naming what is wrong."""
    try:
        arr = np.asarray(vectors)
    except Exception as e:  # ragged lists etc.
        raise InvalidVectorError(f"{what} must be a numeric array of shape (N, {dim}): {e}") from None
    if allow_1d and arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidVectorError(f"{what} must have shape (N, {dim}), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise InvalidVectorError(f"{what} have embedding size {arr.shape[1]}, but the index holds size {dim}")
    if arr.dtype.kind not in "fiu":
        raise InvalidVectorError(f"{what} must be numeric (float32), got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise InvalidVectorError(
            f"{what} contain NaN or infinite values (rows {', '.join(map(str, bad[:5]))}"
            f"{', ...' if len(bad) > 5 else ''})")
    return arr


def check_ids(ids, n: int | None = None) -> list[str]:
    if isinstance(ids, str):
        raise InvalidIdError("ids must be a sequence of strings, not a single string")
    out = list(ids)
    for i in out:
        if not isinstance(i, str) or not i:
            raise InvalidIdError(f"item ids must be non-empty strings, got {i!r}")
    if n is not None and len(out) != n:
        raise InvalidVectorError(f"got {len(out)} ids but {n} vectors")
    if len(set(out)) != len(out):
        seen, dup = set(), []
        for i in out:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise InvalidIdError(f"id(s) given more than once in one call: {', '.join(map(repr, dup[:5]))}")
    return out


def check_attributes(attributes, n: int) -> list[dict[str, str]]:
    """One {attribute: value} per item; None / "unspecified" values are dropped (unspecified)."""
    if attributes is None:
        return [{} for _ in range(n)]
    attrs = list(attributes)
    if len(attrs) != n:
        raise InvalidVectorError(f"got {len(attrs)} attribute mappings but {n} items")
    out = []
    for a in attrs:
        if a is None:
            out.append({})
            continue
        if not isinstance(a, Mapping):
            raise InvalidIdError(f"attributes must be mappings attribute -> value, got {a!r}")
        d = {}
        for key, value in a.items():
            if not isinstance(key, str) or not key:
                raise InvalidIdError(f"attribute names must be non-empty strings, got {key!r}")
            if value is None or value == UNSPECIFIED:
                continue
            if not isinstance(value, str):
                raise InvalidIdError(f"attribute {key!r}: values must be strings, got {value!r}")
            d[key] = value
        out.append(d)
    return out


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UnsupportedIndexError(f"k must be a positive integer, got {k!r}")
    return int(k)


def check_options(given: Mapping, allowed: Mapping, where: str) -> dict:
    """Defaults updated with `given`; unknown option names raise (typos must not pass silently)."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise UnsupportedIndexError(
            f"unknown option(s) for {where}: {', '.join(unknown)}; valid options: {', '.join(sorted(allowed))}")
    out = dict(allowed)
    out.update(given)
    return out


def positive_int(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UnsupportedIndexError(f"option {name} must be a positive integer, got {value!r}")
    return int(value)


def fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 1) or math.isnan(value):
        raise UnsupportedIndexError(f"option {name} must be a number between 0 and 1, got {value!r}")
    return float(value)
