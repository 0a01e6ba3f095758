"""fashion-product-images (Kaggle "Fashion Product Images", Myntra): `styles.csv` + `images/<id>.jpg`.

Every column but `id`, `year` and `productDisplayName` is an attribute; `pattern` is derived from
the display name's keywords (PROTOCOLS.md section 1). Rows whose image is missing stay in the
catalogue (the summary counts them; extraction skips them with a counted warning).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from vestis.catalog.catalog import Catalog, LoadReport
from vestis.catalog.item import Item
from vestis.catalog.readers.text import open_text
from vestis.catalog.schema import AttributeSchema
from vestis.errors import CatalogError

NAME = "fashion-product-images"
REQUIRED = ("id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage",
            "productDisplayName")
ATTRIBUTES = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage", "pattern")
DEFAULT_ATTRIBUTES = ("gender", "articleType", "baseColour", "usage", "season", "pattern")

# Display-name keyword -> pattern value. Checked most specific first, so "Floral Print Top" is floral
# and "Printed Striped Shirt" striped; a name with none of them leaves pattern unspecified.
PATTERN_KEYWORDS = (
    ("floral", ("floral",)),
    ("polka dot", ("polka",)),
    ("striped", ("stripe", "stripes", "striped")),
    ("checked", ("check", "checks", "checked", "checkered")),
    ("graphic", ("graphic", "graphics")),
    ("solid", ("solid",)),
    ("printed", ("print", "prints", "printed")),
)
PATTERN_VALUES = tuple(v for v, _ in PATTERN_KEYWORDS)
_WORD = re.compile(r"[a-z]+")


def derive_pattern(display_name: str) -> str | None:
    words = set(_WORD.findall(display_name.lower()))
    for value, keywords in PATTERN_KEYWORDS:
        if words.intersection(keywords):
            return value
    return None


def _styles_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.name == "styles.csv" else None
    return path / "styles.csv" if (path / "styles.csv").is_file() else None


def detect(path: Path) -> bool:
    f = _styles_file(path)
    if f is None:
        return False
    with open(f, newline="", encoding="utf-8-sig", errors="replace") as fh:
        header = next(csv.reader(fh), [])
    return "productDisplayName" in header and "articleType" in header


def read(path: Path, report: LoadReport, image_dir: str = "images") -> Catalog:
    f = _styles_file(path)
    if f is None:
        raise CatalogError(f"{path}: no styles.csv")
    images = f.parent / image_dir
    items = []
    seen = set()
    with open_text(f, report) as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise CatalogError(f"{f}: missing required column(s) {', '.join(missing)}; header is {header}")
        col = {h: i for i, h in enumerate(header)}
        for n, row in enumerate(reader, start=2):
            if len(row) != len(header):
                report.warn("malformed_row", f"styles.csv line {n}: {len(row)} cells, header has {len(header)}")
                continue
            item_id = row[col["id"]].strip()
            if not item_id:
                report.warn("missing_id", f"styles.csv line {n}: no id")
                continue
            if item_id in seen:
                report.warn("duplicate_id", f"styles.csv line {n}: duplicate id {item_id}")
                continue
            seen.add(item_id)
            attrs = {a: row[col[a]].strip() for a in ATTRIBUTES if a in col and row[col[a]].strip()}
            pattern = derive_pattern(row[col["productDisplayName"]])
            if pattern:
                attrs["pattern"] = pattern
            items.append(Item(id=item_id, image=images / f"{item_id}.jpg", attributes=attrs))
    schema = AttributeSchema.infer((it.attributes for it in items), attributes=ATTRIBUTES)
    # pattern keeps its defined order rather than frequency order
    schema = AttributeSchema({a: (tuple(v for v in PATTERN_VALUES if v in schema.values(a)) if a == "pattern"
                                  else schema.values(a)) for a in schema.attributes})
    return Catalog(items, schema, name=f.parent.name, report=report)
