"""Catalogue readers, one module per source format, and format auto-detection.

A reader module exposes `NAME`, `detect(path) -> bool` (cheap: file names and header lines only)
and `read(path, report) -> Catalog`. Bad rows go to `report.warn(...)` naming the row; a missing
required column or unreadable structure raises `CatalogError`.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from vestis.catalog.catalog import Catalog, LoadReport
from vestis.errors import CatalogError

from . import deepfashion_attributes, deepfashion_inshop, fashion_product_images, fashionai, generic, zappos

# Most specific first: detection stops at the first reader that recognises the path.
READERS = {m.NAME: m for m in (fashion_product_images, deepfashion_inshop, deepfashion_attributes, fashionai, zappos, generic)}


def detect_format(path: Path) -> str:
    if not path.exists():
        raise CatalogError(f"catalogue path {path} does not exist")
    for name, mod in READERS.items():
        if mod.detect(path):
            return name
    raise CatalogError(f"cannot tell the catalogue format of {path}; pass --format, one of: {', '.join(READERS)}")


def read_catalog(path: Path, format: str | None = None) -> Catalog:
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt not in READERS:
        raise CatalogError(f"unknown catalogue format {fmt!r}; formats: {', '.join(READERS)}")
    if not path.exists():
        raise CatalogError(f"catalogue path {path} does not exist")
    report = LoadReport()
    cat = READERS[fmt].read(path, report)
    if len(cat) == 0:
        raise CatalogError(f"catalogue {path} ({fmt}) has no usable items"
                           + (f"; {report.total} rows skipped: " + "; ".join(report.warnings[:5]) if report.total else ""))
    cat.source, cat.path = fmt, path
    return cat


def default_attributes(catalog: Catalog) -> list[str]:
    """The attribute set a benchmark uses by default: the reader's own choice (e.g. PROTOCOLS.md's six for
    fashion-product-images) when it declares one, else every attribute of the catalogue."""
    mod = READERS.get(catalog.source)
    chosen = getattr(mod, "DEFAULT_ATTRIBUTES", None)
    return [a for a in chosen if a in catalog.schema] if chosen else catalog.schema.attributes


# column names that say "identifier, not attribute": a pandas index written out ("Unnamed: 0"), ids, codes, links
ID_LIKE_NAME = re.compile(r"^(unnamed: ?\d+|index|idx|row|rownum|(.*[_ .-])?(id|ids|sku|ean|upc|gtin|code|url|link|"
                          r"path|file|filename|uuid|guid))$", re.I)
DISTINCT_SHARE = 0.5  # more distinct values than this share of the labelled items: almost one per row
MIN_LABELLED = 20     # below this many labelled items the share says nothing


def id_like_attributes(catalog: Catalog) -> dict[str, str]:
    """{attribute: why} for the catalogue's attributes that look like identifiers rather than attributes: their
    name, or almost one value per item (e.g. `Unnamed: 0`, a pandas index column). Training on one learns nothing
    that transfers, so `vestis train` leaves them out unless they are named."""
    out = {}
    for a in catalog.schema.attributes:
        counts = Counter(it.attributes[a] for it in catalog if a in it.attributes)
        labelled = sum(counts.values())
        if ID_LIKE_NAME.match(a.strip()):
            out[a] = f"its name looks like an identifier; {len(counts)} values for {labelled} labelled items"
        elif labelled >= MIN_LABELLED and len(counts) > DISTINCT_SHARE * labelled:
            out[a] = f"{len(counts)} distinct values for {labelled} labelled items, almost one per item"
    return out
