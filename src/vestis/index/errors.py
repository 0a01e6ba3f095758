"""Errors of the index layer. Every one is a `VestisError`, so the CLI reports it without a traceback.

Filtering on an attribute the index has never heard of raises the catalogue's
`vestis.errors.UnknownAttributeError`, so callers catch one type for both layers.
"""

from __future__ import annotations

from vestis.errors import VestisError


class VectorIndexError(VestisError):
    """Base class of everything the index layer raises on bad input or bad files."""


class UnsupportedIndexError(VectorIndexError, ValueError):
    """Unknown backend / kind / metric / option, or a kind the chosen backend cannot build."""


class MissingDependencyError(VectorIndexError, ImportError):
    """An optional dependency (pymilvus, milvus-lite) is not installed."""


class InvalidVectorError(VectorIndexError, ValueError):
    """Vectors of the wrong shape or embedding size, or containing NaN / infinity."""


class InvalidIdError(VectorIndexError, ValueError):
    """An item id that is not a non-empty string, or one given twice in the same call."""


class UnknownIdError(VectorIndexError, KeyError):
    """`remove()` was asked for ids the index does not hold."""

    def __init__(self, missing: list[str], total: int | None = None):
        self.missing = list(missing)
        n = len(self.missing) if total is None else total
        shown = ", ".join(repr(i) for i in self.missing[:5]) + (", ..." if n > 5 else "")
        super().__init__(f"{n} id(s) not in the index: {shown}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class IndexNotTrainedError(VectorIndexError):
    """An IVF-PQ index got vectors before it was trained and too few to train on."""


class IndexNotFoundError(VectorIndexError, FileNotFoundError):
    """The directory holds no index: `manifest.json` is missing."""


class CorruptIndexError(VectorIndexError):
    """An index file is missing, truncated or altered (checksum mismatch), or the manifest is unreadable."""


class IndexMismatchError(VectorIndexError):
    """The index is valid but was built for something else: another model run, attribute schema,
    embedding size or backend. `field`, `expected` and `found` say what differs."""

    def __init__(self, field: str, expected, found, index_dir=None):
        self.field, self.expected, self.found = field, expected, found
        where = f" at {index_dir}" if index_dir is not None else ""
        super().__init__(f"index{where} has {field} {found!r}, expected {expected!r}")
