"""The catalogue: items + attribute schema, with deterministic splits, filters and a summary."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from vestis.catalog.item import Item
from vestis.catalog.schema import UNSPECIFIED, AttributeSchema
from vestis.catalog.splits import SPLITS, assign_split
from vestis.errors import CatalogError


@dataclass
class LoadReport:
    """Counted warnings from reading a catalogue: bad rows are reported by row and skipped, never fatal."""

    warnings: list[str] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    max_listed: int = 20

    def warn(self, kind: str, message: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= self.max_listed:
            self.warnings.append(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Catalog:
    def __init__(self, items: Iterable[Item], schema: AttributeSchema | None = None, *, name: str = "",
                 source: str = "", report: LoadReport | None = None, path: Path | None = None):
        self.items: list[Item] = list(items)
        self.by_id: dict[str, Item] = {}
        for it in self.items:
            if it.id in self.by_id:
                raise CatalogError(f"duplicate item id {it.id!r}")
            self.by_id[it.id] = it
        self.schema = schema if schema is not None else AttributeSchema.infer(i.attributes for i in self.items)
        self.name, self.source, self.path = name, source, path  # path: where it was read from, if anywhere
        self.report = report if report is not None else LoadReport()
        self._splits = {it.id: it.split or assign_split(it.id, it.instance_id) for it in self.items}

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, format: str | None = None, attributes: Iterable[str] | None = None) -> "Catalog":
        """Read a catalogue folder or file in any supported format (auto-detected unless `format`)."""
        from vestis.catalog.readers import read_catalog

        cat = read_catalog(Path(path), format=format)
        if attributes is not None:
            cat = cat.with_attributes(attributes)
        return cat

    # --- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, item_id: str) -> Item:
        try:
            return self.by_id[item_id]
        except KeyError:
            raise CatalogError(f"unknown item id {item_id!r} (catalogue {self.name or '?'} has {len(self)} items)") from None

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.by_id

    def split_of(self, item_id: str) -> str:
        return self._splits[item_id]

    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    def set_attributes(self, changes: Mapping[str, Mapping[str, str | None]]) -> None:
        """Change items' labels in place: `changes` is {item id: {attribute: value, or None / "unspecified" to clear
        the label}}. Every id, attribute and value is checked against the catalogue and its schema first, so an
        unknown one raises and nothing changes. (The items are frozen: each changed one is replaced.)"""
        new = {}
        for iid, change in changes.items():
            item = self[iid]
            attrs = dict(item.attributes)
            for a, v in change.items():
                self.schema.check_attribute(a)
                if v is None or v == UNSPECIFIED:
                    attrs.pop(a, None)
                else:
                    self.schema.check_value(a, v)
                    attrs[a] = v
            new[iid] = replace(item, attributes=attrs)
        if not new:
            return
        for pos, it in enumerate(self.items):
            if it.id in new:
                self.items[pos] = new[it.id]
        self.by_id.update(new)

    # --- derived catalogues (share items and schema) -----------------------------------------
    def _derive(self, items: Iterable[Item], schema: AttributeSchema | None = None) -> "Catalog":
        sub = Catalog.__new__(Catalog)
        sub.items = list(items)
        sub.by_id = {it.id: it for it in sub.items}
        sub.schema = schema or self.schema
        sub.name, sub.source, sub.report, sub.path = self.name, self.source, self.report, self.path
        sub._splits = {it.id: self._splits[it.id] for it in sub.items}
        return sub

    def split(self, name: str) -> "Catalog":
        if name not in SPLITS and name not in set(self._splits.values()):
            raise CatalogError(f"unknown split {name!r}; splits: {', '.join(sorted(set(SPLITS) | set(self._splits.values())))}")
        return self._derive(it for it in self.items if self._splits[it.id] == name)

    def filter(self, predicate: Callable[[Item], bool] | None = None, **attributes: str) -> "Catalog":
        """Items matching a predicate and/or exact attribute values (validated against the schema)."""
        for a, v in attributes.items():
            self.schema.check_value(a, v)
        def keep(it: Item) -> bool:
            return all(it.attributes.get(a) == v for a, v in attributes.items()) and (predicate is None or predicate(it))
        return self._derive(it for it in self.items if keep(it))

    def with_attributes(self, attributes: Iterable[str]) -> "Catalog":
        """Restrict the schema (and every item's labels) to these attributes, in this order."""
        attributes = list(attributes)
        schema = self.schema.subset(attributes)
        keep = set(attributes)
        items = [replace(it, attributes={a: v for a, v in it.attributes.items() if a in keep}) for it in self.items]
        return self._derive(items, schema)

    # --- summary ------------------------------------------------------------------------------
    def check_images(self, workers: int = 8) -> dict[str, list[str]]:
        """Decode every image: ids whose file is missing, and ids whose file cannot be decoded."""
        from vestis.images import ImageReadError, load_rgb

        def status(it: Item) -> str:
            if it.image is None or not it.image.is_file():
                return "missing"
            try:
                load_rgb(it.image)
            except ImageReadError:
                return "unreadable"
            return "ok"

        out: dict[str, list[str]] = {"missing": [], "unreadable": []}
        with ThreadPoolExecutor(workers) as pool:
            for it, st in zip(self.items, pool.map(status, self.items, chunksize=64)):
                if st != "ok":
                    out[st].append(it.id)
        return out

    def summary(self, check_images: bool = True) -> dict:
        splits = Counter(self._splits[it.id] for it in self.items)
        values = {}
        for a in self.schema.attributes:
            c = Counter(it.attributes.get(a, UNSPECIFIED) for it in self.items)
            values[a] = {"n_values": len(self.schema.values(a)), "unspecified": c.pop(UNSPECIFIED, 0),
                         "counts": dict(c.most_common())}
        out = {
            "name": self.name, "source": self.source, "items": len(self.items),
            "instances": len({it.instance_id for it in self.items if it.instance_id}),
            "with_parts": sum(1 for it in self.items if it.parts),
            "splits": {s: splits.get(s, 0) for s in sorted(splits, key=lambda s: (s not in SPLITS, SPLITS.index(s) if s in SPLITS else 0, s))},
            "attributes": values,
            "load_warnings": dict(self.report.counts),
        }
        if check_images:
            bad = self.check_images()
            out["images"] = {"found": len(self.items) - len(bad["missing"]), "missing": len(bad["missing"]),
                             "unreadable": len(bad["unreadable"]), "missing_ids": bad["missing"][:20],
                             "unreadable_ids": bad["unreadable"][:20]}
        return out


def format_summary(s: dict) -> str:
    lines = [f"catalogue {s['name']!r} ({s['source']}): {s['items']} items"
             + (f", {s['instances']} instances" if s["instances"] else "")
             + (f", {s['with_parts']} with parts" if s["with_parts"] else "")]
    if "images" in s:
        im = s["images"]
        lines.append(f"images: {im['found']} found, {im['missing']} missing, {im['unreadable']} unreadable")
        for key in ("missing_ids", "unreadable_ids"):
            if im[key]:
                more = im[key.split("_")[0]] - len(im[key])
                lines.append(f"  {key.split('_')[0]}: {', '.join(im[key])}" + (f" (+{more} more)" if more > 0 else ""))
    lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
    if s["load_warnings"]:
        lines.append("rows skipped or changed while reading: " + ", ".join(f"{k} {v}" for k, v in s["load_warnings"].items()))
    lines.append("attributes:")
    for a, d in s["attributes"].items():
        top = ", ".join(f"{v} {c}" for v, c in list(d["counts"].items())[:6])
        more = len(d["counts"]) - 6
        lines.append(f"  {a}: {d['n_values']} values, {d['unspecified']} unspecified | {top}" + (f", ... (+{more})" if more > 0 else ""))
    return "\n".join(lines)
