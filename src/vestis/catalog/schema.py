"""Attribute schema: each attribute's ordered values; a missing label is the "unspecified" state."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from vestis.errors import CatalogError, UnknownAttributeError, UnknownValueError

UNSPECIFIED = "unspecified"


class AttributeSchema:
    """attribute -> ordered tuple of known values.

    "unspecified" is never one of the values: it is the state of an item with no label, which can be
    matched but never manipulated from or to (PROTOCOLS.md section 1). Index `len(values)` stands for it
    where a model needs an integer per attribute.
    """

    def __init__(self, attributes: Mapping[str, Iterable[str]]):
        self._values: dict[str, tuple[str, ...]] = {}
        for name, values in attributes.items():
            vals = tuple(str(v) for v in values)
            if UNSPECIFIED in vals:
                raise ValueError(f"attribute {name!r}: {UNSPECIFIED!r} is a state, not a value")
            if len(set(vals)) != len(vals):
                raise ValueError(f"attribute {name!r} lists a value twice")
            self._values[str(name)] = vals
        self._index = {a: {v: i for i, v in enumerate(vs)} for a, vs in self._values.items()}

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def infer(cls, labels: Iterable[Mapping[str, str]], attributes: Iterable[str] | None = None,
              order: str = "frequency") -> "AttributeSchema":
        """Build a schema from item labels. Values are ordered by descending count (ties by name),
        or by name with order="name"; `attributes` fixes which attributes and their order."""
        counts: dict[str, Counter] = {}
        for lab in labels:
            for a, v in lab.items():
                counts.setdefault(a, Counter())[v] += 1
        names = list(attributes) if attributes is not None else sorted(counts)
        out = {}
        for a in names:
            c = counts.get(a, Counter())
            key = (lambda kv: (-kv[1], kv[0])) if order == "frequency" else (lambda kv: kv[0])
            out[a] = [v for v, _ in sorted(c.items(), key=key)]
        return cls(out)

    def to_json(self) -> dict:
        return {"attributes": {a: list(vs) for a, vs in self._values.items()}}

    @classmethod
    def from_json(cls, d: Mapping) -> "AttributeSchema":
        return cls(d["attributes"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "AttributeSchema":
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # truncated, not JSON, or not a schema
            raise CatalogError(f"{path} is not a readable attribute schema ({type(e).__name__}: {str(e)[:200]}); "
                               f'it should be {{"attributes": {{attribute: [values]}}}}') from None

    def digest(self) -> str:
        """A stable hash of attributes and their ordered values (an index or run records it)."""
        blob = json.dumps(self.to_json(), sort_keys=False, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def subset(self, attributes: Iterable[str]) -> "AttributeSchema":
        return AttributeSchema({a: self.values(a) for a in attributes})

    # --- queries ------------------------------------------------------------------------------
    @property
    def attributes(self) -> list[str]:
        return list(self._values)

    def __contains__(self, attribute: str) -> bool:
        return attribute in self._values

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other) -> bool:
        return isinstance(other, AttributeSchema) and self._values == other._values

    def __repr__(self) -> str:
        return "AttributeSchema(" + ", ".join(f"{a}[{len(v)}]" for a, v in self._values.items()) + ")"

    def values(self, attribute: str) -> tuple[str, ...]:
        self.check_attribute(attribute)
        return self._values[attribute]

    def check_attribute(self, attribute: str) -> None:
        if attribute not in self._values:
            raise UnknownAttributeError(attribute, self.attributes)

    def check_value(self, attribute: str, value: str) -> None:
        """Raise a clear error unless `value` is a known value of `attribute` (never "unspecified")."""
        self.check_attribute(attribute)
        if value not in self._index[attribute]:
            raise UnknownValueError(attribute, value, list(self._values[attribute]))

    def index(self, attribute: str, value: str | None) -> int:
        """Integer code of a value; None / "unspecified" -> len(values)."""
        self.check_attribute(attribute)
        if value is None or value == UNSPECIFIED:
            return len(self._values[attribute])
        self.check_value(attribute, value)
        return self._index[attribute][value]

    def encode(self, labels: Mapping[str, str]) -> list[int]:
        """Codes over all attributes in schema order (unspecified where absent)."""
        return [self.index(a, labels.get(a)) for a in self._values]
