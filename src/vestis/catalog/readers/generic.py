"""Generic catalogue: CSV or JSONL, the format a user's PIM export maps to.

Columns (CSV header or JSONL keys): `id`, `image` (path relative to the catalogue file) required;
optional `instance_id`, `split` (train / gallery / query / val), `box` ("x0,y0,x1,y1"),
`parts` (JSON list of {name, box, attributes}), `regions` (JSON {attribute: box}); every other
column is an attribute. JSONL may instead nest labels under "attributes". An empty cell or
"unspecified" means the label is missing. A `schema.json` beside the file fixes attribute and value
order; labels outside it are dropped with a counted warning.

A folder is read through its `catalog.jsonl` or `catalog.csv`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from vestis.catalog.catalog import Catalog, LoadReport
from vestis.catalog.item import Item, Part, parse_box
from vestis.catalog.readers.text import open_text
from vestis.catalog.schema import UNSPECIFIED, AttributeSchema
from vestis.errors import CatalogError

NAME = "generic"
RESERVED = {"id", "image", "instance_id", "split", "box", "parts", "regions", "attributes"}
VALID_SPLITS = {"train", "gallery", "query", "val"}
FILE_NAMES = ("catalog.jsonl", "catalog.csv")


def catalogue_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() in (".csv", ".jsonl", ".ndjson") else None
    for name in FILE_NAMES:
        if (path / name).is_file():
            return path / name
    return None


def detect(path: Path) -> bool:
    f = catalogue_file(path)
    if f is None:
        return False
    if f.suffix.lower() == ".csv":
        with open(f, newline="", encoding="utf-8-sig", errors="replace") as fh:
            header = next(csv.reader(fh), [])
        return {"id", "image"} <= {h.strip() for h in header}
    return True


def _rows(f: Path, report: LoadReport):
    """(row label, dict) for every row; malformed lines are warned about and skipped."""
    if f.suffix.lower() == ".csv":
        with open_text(f, report) as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = {"id", "image"} - set(header)
            if missing:
                raise CatalogError(f"{f}: missing required column(s) {', '.join(sorted(missing))}; header is {header}")
            reader.fieldnames = header
            for n, row in enumerate(reader, start=2):
                if None in row:  # more cells than header columns
                    report.warn("malformed_row", f"{f.name} line {n}: {len(header) + len(row[None])} cells, header has {len(header)}")
                    continue
                yield f"{f.name} line {n}", {k: (v if v is not None else "") for k, v in row.items()}
    else:
        with open(f, "rb") as fh:  # JSON is UTF-8: a line that is not is named, with its bad byte, and skipped
            for n, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    report.warn("malformed_row", f"{f.name} line {n}: not UTF-8 (byte 0x{raw[e.start]:02x} at column "
                                                 f"{e.start + 1})")
                    continue
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError("not an object")
                except ValueError as e:
                    report.warn("malformed_row", f"{f.name} line {n}: not a JSON object ({e})")
                    continue
                yield f"{f.name} line {n}", row


def _load_json_field(value, what: str):
    return json.loads(value) if isinstance(value, str) and value.strip() else (value or None)


def read(path: Path, report: LoadReport) -> Catalog:
    f = catalogue_file(path)
    if f is None:
        raise CatalogError(f"{path}: no catalogue file (expected a .csv / .jsonl file or a folder with {' or '.join(FILE_NAMES)})")
    schema_file = f.parent / "schema.json"
    schema = AttributeSchema.load(schema_file) if schema_file.is_file() else None
    items: list[Item] = []
    seen: set[str] = set()
    for where, row in _rows(f, report):
        item_id = str(row.get("id", "")).strip()
        image = str(row.get("image", "") or "").strip()
        if not item_id:
            report.warn("missing_id", f"{where}: no id")
            continue
        if item_id in seen:
            report.warn("duplicate_id", f"{where}: duplicate id {item_id!r}")
            continue
        labels = row["attributes"] if isinstance(row.get("attributes"), dict) else {
            k: v for k, v in row.items() if k not in RESERVED}
        attrs = {}
        for a, v in labels.items():
            v = "" if v is None else str(v).strip()
            if v and v != UNSPECIFIED:
                if schema is not None and (a not in schema or v not in schema.values(a)):
                    report.warn("label_outside_schema", f"{where}: {a}={v!r} is not in schema.json; dropped")
                    continue
                attrs[str(a)] = v
        split = str(row.get("split") or "").strip() or None
        if split is not None and split not in VALID_SPLITS:
            report.warn("bad_split", f"{where}: split {split!r} is not one of {sorted(VALID_SPLITS)}; using the hash split")
            split = None
        try:
            box = parse_box(row.get("box"))
            parts = tuple(Part.from_json(p) for p in (_load_json_field(row.get("parts"), "parts") or []))
            regions = {str(a): parse_box(b) for a, b in (_load_json_field(row.get("regions"), "regions") or {}).items()}
        except (ValueError, KeyError, TypeError) as e:
            report.warn("bad_geometry", f"{where}: bad box / parts / regions ({e})")
            continue
        seen.add(item_id)
        items.append(Item(id=item_id, image=(f.parent / image) if image else None, attributes=attrs,
                          instance_id=str(row.get("instance_id") or "").strip() or None,
                          box=box, parts=parts, regions=regions, split=split))
    if schema is None:
        schema = AttributeSchema.infer(it.attributes for it in items)
    return Catalog(items, schema, name=f.parent.name if f.name in FILE_NAMES else f.stem, report=report)


def write(catalog: Catalog, path: Path) -> None:
    """Write a catalogue as generic JSONL (+ schema.json beside it); image paths made relative when possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for it in catalog:
            image = ""
            if it.image is not None:
                try:
                    image = str(Path(it.image).relative_to(path.parent))
                except ValueError:
                    image = str(it.image)
            row = {"id": it.id, "image": image}
            if it.instance_id:
                row["instance_id"] = it.instance_id
            if it.split:
                row["split"] = it.split
            row["attributes"] = dict(it.attributes)
            if it.box:
                row["box"] = list(it.box)
            if it.parts:
                row["parts"] = [p.to_json() for p in it.parts]
            if it.regions:
                row["regions"] = {a: list(b) for a, b in it.regions.items()}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    catalog.schema.save(path.parent / "schema.json")
