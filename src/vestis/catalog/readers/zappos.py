"""ut-zappos50k: UT-Zappos50K shoes (Yu & Grauman), `ut-zap50k-data/meta-data.csv` + image folder.

meta-data.csv has a header `CID,Category,SubCategory,HeelHeight,Insole,Closure,Gender,Material,ToeStyle`
(names matched case-insensitively) and one row per shoe: `7965307-5291,Shoes,Oxfords,Under 1in,...`; an
empty cell is a missing label and a cell may hold several values separated by ';' ("Lace up;Buckle").
meta-data-bin.csv, its one-hot version (`CID,Category.Shoes,...,ToeStyle.Medallion`, cells 1 / 0), is read
when meta-data.csv is absent. CID, Category and SubCategory are required.

Images are `ut-zap50k-images/<Category>/<SubCategory>/<brand>/<CID>.jpg` (or ut-zap50k-images-square),
with the CID's '-' written as '.' (`7965307.5291.jpg`). The image folder is walked once and indexed by file
stem, so the brand folder need not be known. The path given may be the dataset folder (holding
meta-data.csv, or ut-zap50k-data/ beside the image folder), ut-zap50k-data/ itself, or the csv file.

Mapping to vestis: id = CID; attributes category, subcategory, heel_height, insole, closure, gender,
material, toe_style, values as in the file (schema values by frequency). A multi-valued cell is left
unspecified by default (multi_value="first" keeps its first value instead) and counted as a `multi_value`
load warning: the file does not say the first value is the main one, and Gender "Men;Women" is neither.
No instance ids or splits ship with the metadata, so splits are the hash split. A shoe whose image is not
found keeps `image=None` (the summary counts it missing). Bad rows (wrong cell count, empty or duplicate
CID) are warned about by line and skipped.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

from vestis.catalog.catalog import Catalog, LoadReport
from vestis.catalog.item import Item
from vestis.catalog.readers.text import open_text
from vestis.catalog.schema import AttributeSchema
from vestis.errors import CatalogError

NAME = "ut-zappos50k"
# header name (lower-case) -> vestis attribute
COLUMNS = {"category": "category", "subcategory": "subcategory", "heelheight": "heel_height", "insole": "insole",
           "closure": "closure", "gender": "gender", "material": "material", "toestyle": "toe_style"}
ATTRIBUTES = tuple(COLUMNS.values())
REQUIRED = ("cid", "category", "subcategory")
FILE_NAMES = ("meta-data.csv", "meta-data-bin.csv")
IMAGE_DIRS = ("ut-zap50k-images", "ut-zap50k-images-square")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _metadata_file(path: Path) -> Path | None:
    if path.is_file():
        return path if path.name in FILE_NAMES else None
    for d in (path, path / "ut-zap50k-data"):
        for name in FILE_NAMES:
            if (d / name).is_file():
                return d / name
    return None


def _header(f: Path) -> list[str]:
    with open(f, newline="", encoding="utf-8-sig", errors="replace") as fh:
        return [h.strip() for h in next(csv.reader(fh), [])]


def detect(path: Path) -> bool:
    f = _metadata_file(path)
    if f is None:
        return False
    header = [h.lower() for h in _header(f)]
    return bool(header) and header[0] == "cid" and any(h.split(".")[0] == "category" for h in header)


def image_index(root: Path) -> tuple[Path | None, dict[str, Path]]:
    """(image folder, file stem -> path), walking the first image folder found once."""
    candidates = [root] if root.name in IMAGE_DIRS else [root / d for d in IMAGE_DIRS]
    for folder in candidates:
        if folder.is_dir():
            index: dict[str, Path] = {}
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames.sort()
                for fn in sorted(filenames):
                    stem, ext = os.path.splitext(fn)
                    if ext.lower() in IMAGE_SUFFIXES:
                        index.setdefault(stem, Path(dirpath) / fn)
            return folder, index
    return None, {}


def _rows(f: Path, report: LoadReport) -> Iterator[tuple[str, str, dict[str, list[str]]]]:
    """(where, CID, attribute -> values) per data row, from meta-data.csv or meta-data-bin.csv."""
    with open_text(f, report) as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        lower = [h.lower() for h in header]
        binary = f.name == "meta-data-bin.csv"
        present = {h.split(".")[0] for h in lower} if binary else set(lower)
        missing = [c for c in REQUIRED if c not in present]
        if missing:
            raise CatalogError(f"{f}: missing required column(s) {', '.join(missing)}; header is {header[:12]}"
                               f"{' ...' if len(header) > 12 else ''}")
        cid_col = lower.index("cid")
        if binary:  # column "Attr.Value" -> (attribute, value)
            cols = {i: (COLUMNS[h.split(".", 1)[0]], header[i].split(".", 1)[1]) for i, h in enumerate(lower)
                    if "." in h and h.split(".", 1)[0] in COLUMNS}
        else:
            cols = {i: COLUMNS[h] for i, h in enumerate(lower) if h in COLUMNS}
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            where = f"{f.name} line {n}"
            if len(row) != len(header):
                report.warn("malformed_row", f"{where}: {len(row)} cells, header has {len(header)}")
                continue
            labels: dict[str, list[str]] = {}
            for i, col in cols.items():
                cell = row[i].strip()
                if binary:
                    try:
                        on = float(cell or 0) == 1
                    except ValueError:
                        on = False
                        report.warn("bad_value", f"{where}: {header[i]} = {cell!r} is not 0 or 1")
                    if on:
                        labels.setdefault(col[0], []).append(col[1])
                else:
                    vals = list(dict.fromkeys(v.strip() for v in cell.split(";") if v.strip()))
                    if vals:
                        labels[col] = vals
            yield where, row[cid_col].strip(), labels


def read(path: Path, report: LoadReport, multi_value: str = "unspecified") -> Catalog:
    if multi_value not in ("unspecified", "first"):
        raise ValueError(f"multi_value must be 'unspecified' or 'first', got {multi_value!r}")
    path = Path(path)
    f = _metadata_file(path)
    if f is None:
        raise CatalogError(f"{path}: no meta-data.csv or meta-data-bin.csv (looked in {path} and {path}/ut-zap50k-data)")
    root = f.parent.parent if f.parent.name == "ut-zap50k-data" else f.parent
    folder, index = image_index(root)
    if folder is None:
        report.warn("no_image_folder", f"{root}: no {' or '.join(IMAGE_DIRS)} folder; every image is missing")
    items, seen = [], set()
    for where, cid, labels in _rows(f, report):
        if not cid:
            report.warn("missing_id", f"{where}: no CID")
            continue
        if cid in seen:
            report.warn("duplicate_id", f"{where}: duplicate CID {cid}")
            continue
        seen.add(cid)
        attrs = {}
        for attribute, vals in labels.items():
            if len(vals) == 1 or multi_value == "first":
                attrs[attribute] = vals[0]
            if len(vals) > 1:
                report.warn("multi_value", f"{where}: {attribute} = {';'.join(vals)!r}"
                            + ("; first value kept" if multi_value == "first" else "; left unspecified"))
        image = index.get(cid.replace("-", ".")) or index.get(cid)
        items.append(Item(id=cid, image=image, attributes=attrs))
    schema = AttributeSchema.infer((it.attributes for it in items), attributes=ATTRIBUTES)
    return Catalog(items, schema, name=root.name, report=report)
