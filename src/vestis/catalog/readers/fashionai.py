"""fashionai: FashionAI attribute recognition (Alibaba Tianchi, 2018) label CSVs.

Header-less rows `image_path,attribute_type,label_string`, e.g.

    Images/collar_design_labels/2f639f11de22076ead5fe1258eae024d.jpg,collar_design_labels,nnynn

with one character per value of the attribute type, in the order of `VALUES`: y = this value, n = not,
m = maybe. The test sets' question.csv has `?` instead; such rows give an image with that attribute
unspecified. The path given may be a label file (`Annotations/label.csv`, `train.csv`, ...) or a dataset
folder holding `Annotations/label.csv` (else every `Annotations/*.csv`, all read); image paths are relative
to the folder that holds Annotations/ (or to the file's folder when it is not in Annotations/).

Mapping to vestis:
- attributes: the 8 types without the `_labels` suffix (skirt_length, coat_length, ...); value = the value
  whose character is 'y'. Exactly one 'y' is expected; none or several is warned about and leaves the
  attribute unspecified ('m' marks are ignored).
- "Invisible" maps to unspecified (pass keep_invisible=True to keep it as a value). It says the photo does
  not show the part (a skirt length on a cropped photo), not what the garment is: it cannot be manipulated
  from or to ("like this, but with an invisible collar" means nothing), and two images whose collar is
  invisible are not alike in collar, so it is no value of the attribute. As unspecified it can still be
  matched, which is what PROTOCOLS.md asks of a missing label.
- rows with the same image path are merged into one item (one row per image is typical: each type has its
  own image folder); a repeated (image, type) pair is warned about and the later row ignored.
- id: the image path without `Images/` and the extension (`collar_design_labels/2f639f11...`). The label
  files carry no partition, so splits are the hash split.
- schema: all 8 attributes, values in the dataset's order (`VALUES`), keeping those that occur. The names
  are the dataset's own (official README), including its spellings "Sweat Heart Neck" and
  "Ankle&Floor Length"; its "One<TAB>Shoulder Neckline" is written with a space.
Bad rows (not 3 cells, unknown type, label of the wrong length or with characters other than y/n/m) are
warned about by file and line and skipped.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vestis.catalog.catalog import Catalog, LoadReport
from vestis.catalog.item import Item
from vestis.catalog.readers.text import open_text
from vestis.catalog.schema import AttributeSchema
from vestis.errors import CatalogError

NAME = "fashionai"
INVISIBLE = "Invisible"
VALUES = {
    "skirt_length_labels": ("Invisible", "Short Length", "Knee Length", "Midi Length", "Ankle Length", "Floor Length"),
    "coat_length_labels": ("Invisible", "High Waist Length", "Regular Length", "Long Length", "Micro Length",
                           "Knee Length", "Midi Length", "Ankle&Floor Length"),
    "collar_design_labels": ("Invisible", "Shirt Collar", "Peter Pan", "Puritan Collar", "Rib Collar"),
    "lapel_design_labels": ("Invisible", "Notched", "Collarless", "Shawl Collar", "Plus Size Shawl"),
    "neck_design_labels": ("Invisible", "Turtle Neck", "Ruffle Semi-High Collar", "Low Turtle Neck", "Draped Collar"),
    "neckline_design_labels": ("Invisible", "Strapless Neck", "Deep V Neckline", "Straight Neck", "V Neckline",
                               "Square Neckline", "Off Shoulder", "Round Neckline", "Sweat Heart Neck",
                               "One Shoulder Neckline"),
    "pant_length_labels": ("Invisible", "Short Pant", "Mid Length", "3/4 Length", "Cropped Pant", "Full Length"),
    "sleeve_length_labels": ("Invisible", "Sleeveless", "Cup Sleeves", "Short Sleeves", "Elbow Sleeves",
                             "3/4 Sleeves", "Wrist Length", "Long Sleeves", "Extra Long Sleeves"),
}


def attribute_name(label_type: str) -> str:
    return label_type.removesuffix("_labels")


def _label_files(path: Path) -> tuple[Path, list[Path]]:
    """(image root, label files) for a file or a dataset folder; no files when neither fits."""
    if path.is_file():
        if path.suffix.lower() != ".csv":
            return path.parent, []
        return (path.parent.parent if path.parent.name == "Annotations" else path.parent), [path]
    ann = path / "Annotations"
    if (ann / "label.csv").is_file():
        return path, [ann / "label.csv"]
    return path, sorted(ann.glob("*.csv")) if ann.is_dir() else []


def _first_row(f: Path) -> list[str]:
    with open(f, newline="", encoding="utf-8-sig", errors="replace") as fh:
        for row in csv.reader(fh):
            if row:
                return row
    return []


def detect(path: Path) -> bool:
    _, files = _label_files(path)
    if not files:
        return False
    row = _first_row(files[0])
    return len(row) == 3 and row[1].strip() in VALUES


def read(path: Path, report: LoadReport, keep_invisible: bool = False) -> Catalog:
    path = Path(path)
    root, files = _label_files(path)
    if not files:
        raise CatalogError(f"{path}: no FashionAI label file (expected a .csv file, or a folder with "
                           "Annotations/label.csv or Annotations/*.csv)")
    labels: dict[str, dict[str, str]] = {}
    for f in files:
        with open_text(f, report) as fh:
            for n, row in enumerate(csv.reader(fh), start=1):
                if not row:
                    continue
                where = f"{f.name} line {n}"
                if len(row) != 3 or not row[0].strip():
                    report.warn("malformed_row", f"{where}: {len(row)} cells, expected image_path,attribute_type,labels")
                    continue
                image, kind, label = (c.strip() for c in row)
                if kind not in VALUES:
                    report.warn("unknown_attribute", f"{where}: attribute type {kind!r} is not one of {', '.join(VALUES)}")
                    continue
                values = VALUES[kind]
                if label != "?" and (len(label) != len(values) or set(label) - set("ynm")):
                    report.warn("bad_label", f"{where}: label {label!r} must be {len(values)} characters of y/n/m for {kind}")
                    continue
                attrs = labels.setdefault(image, {})
                attribute = attribute_name(kind)
                if attribute in attrs:
                    report.warn("duplicate_row", f"{where}: {image} already has a {kind} row; ignored")
                    continue
                attrs[attribute] = None  # marks the type as seen, value filled below if known
                if label == "?":
                    continue
                if label.count("y") != 1:
                    report.warn("ambiguous_label", f"{where}: label {label!r} has {label.count('y')} 'y'; "
                                f"{attribute} left unspecified")
                    continue
                value = values[label.index("y")]
                if value != INVISIBLE or keep_invisible:
                    attrs[attribute] = value
    items, ids = [], set()
    for image, attrs in labels.items():
        rel = image.removeprefix("Images/")
        iid = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        if iid in ids:
            report.warn("duplicate_id", f"{image}: id {iid!r} already used by another image; skipped")
            continue
        ids.add(iid)
        items.append(Item(id=iid, image=root / image, attributes={a: v for a, v in attrs.items() if v is not None}))
    present = {(a, v) for it in items for a, v in it.attributes.items()}
    schema = AttributeSchema({attribute_name(k): [v for v in vs if (attribute_name(k), v) in present]
                              for k, vs in VALUES.items()})
    return Catalog(items, schema, name=root.name, report=report)
