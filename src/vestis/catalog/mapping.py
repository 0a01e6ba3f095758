"""A declared mapping from one catalogue's labels onto another's: each value of a source attribute (e.g. the
clothing photos' `category`) to the *set* of values of a target attribute (fashion-product-images' `articleType`)
it may be. A JSON file:

    {"source_attribute": "category", "target_attribute": "articleType",
     "map": {"dress": ["Dresses", "Nightdress"], ...}, "about": "..."}

It scores consumer-to-shop queries (a hit is a gallery item whose target value is in the set) and gives a second
training domain its targets (`vestis train --mix`). The mapping is checked against the target schema when both
meet (`check`), so a misspelt value is an error, not a silently empty set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vestis.errors import CatalogError


@dataclass(frozen=True)
class LabelMapping:
    source_attribute: str
    target_attribute: str
    map: dict[str, tuple[str, ...]]
    path: str | None = None

    @classmethod
    def from_json(cls, d: Mapping, path: str | None = None) -> "LabelMapping":
        where = f"label mapping {path or ''}".strip()
        if not isinstance(d, Mapping):
            raise CatalogError(f"{where}: must be a JSON object")
        src, dst, m = d.get("source_attribute"), d.get("target_attribute"), d.get("map")
        if not isinstance(src, str) or not isinstance(dst, str) or not src or not dst:
            raise CatalogError(f"{where}: needs string \"source_attribute\" and \"target_attribute\"")
        if not isinstance(m, Mapping) or not m:
            raise CatalogError(f"{where}: needs a non-empty \"map\" object: source value -> list of target values")
        out = {}
        for k, vs in m.items():
            if isinstance(vs, str):
                vs = [vs]
            if not isinstance(vs, list) or not vs or not all(isinstance(v, str) and v for v in vs):
                raise CatalogError(f"{where}: {k!r} must map to a non-empty list of {dst} values")
            if len(set(vs)) != len(vs):
                raise CatalogError(f"{where}: {k!r} lists a value twice")
            out[str(k)] = tuple(vs)
        return cls(src, dst, out, path)

    @classmethod
    def load(cls, path: str | Path) -> "LabelMapping":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise CatalogError(f"cannot read label mapping {path}: {e.strerror or e}") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CatalogError(f"label mapping {path} is not valid JSON: {e}") from None
        return cls.from_json(d, str(path))

    def to_json(self) -> dict:
        return {"source_attribute": self.source_attribute, "target_attribute": self.target_attribute,
                "map": {k: list(v) for k, v in self.map.items()}}

    def targets(self, source_value: str | None) -> tuple[str, ...] | None:
        """The accepted target values of a source value; None where the mapping does not name it."""
        return self.map.get(source_value) if source_value is not None else None

    def check(self, target_values, source_values=None) -> None:
        """Every mapped value must exist in the target attribute's values (and, given, every source value must be
        mapped), else a CatalogError naming the first offenders."""
        known = set(target_values)
        bad = sorted({v for vs in self.map.values() for v in vs if v not in known})
        if bad:
            raise CatalogError(f"label mapping {self.path or ''}: {self.target_attribute} has no value(s) "
                               f"{', '.join(map(repr, bad[:5]))}")
        if source_values is not None:
            missing = sorted(set(source_values) - set(self.map))
            if missing:
                raise CatalogError(f"label mapping {self.path or ''}: {self.source_attribute} value(s) "
                                   f"{', '.join(map(repr, missing[:5]))} are not mapped")
