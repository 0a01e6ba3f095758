"""deepfashion-attributes: DeepFashion "Category and Attribute Prediction Benchmark".

Every list file has the same layout: line 1 the row count, line 2 the column names, then one row per
line, columns separated by runs of spaces (line numbers in warnings count from 1, the count line).

    Anno/list_category_cloth.txt  category_name category_type     Blazer  1   (type 1 upper, 2 lower, 3 full body)
    Anno/list_category_img.txt    image_name category_label       img/Sheer_Pleated-Front_Blouse/img_00000001.jpg  3
    Anno/list_attr_cloth.txt      attribute_name attribute_type   abstract chevron print  1   (names contain spaces;
                                  the type is the last token: 1 texture, 2 fabric, 3 shape, 4 part, 5 style)
    Anno/list_attr_img.txt        image_name attribute_labels     img/.../img_00000001.jpg  -1 1 -1 ... (one value per
                                  attribute: 1 positive, -1 negative, 0 unknown; some copies use 0/1)
    Eval/list_eval_partition.txt  image_name evaluation_status    img/.../img_00000001.jpg  train | val | test
    Anno/list_bbox.txt            image_name x_1 y_1 x_2 y_2      img/.../img_00000001.jpg  072 079 232 273

The files may sit under Anno/ (or the newer Anno_coarse/) and Eval/, or all in one folder; the path given
may be the benchmark root, its Anno/ or Eval/ folder, or one of the list files. Images are `<root>/<image_name>`,
or `<root>/Img/<image_name>` when the images were unpacked into Img/ as the official layout has it.
list_category_cloth.txt and list_category_img.txt are required (they define the items); the attribute pair,
the partition and the boxes are optional.

Mapping to vestis:
- id: image_name without the leading `img/` and the extension (`Sheer_Pleated-Front_Blouse/img_00000001`).
- `category`: the category name; `clothes_type`: upper-body / lower-body / full-body (the category's type;
  the same name and values as the In-shop reader's `clothes_type`).
- `texture`, `fabric`, `shape`, `part`, `style`: one vestis attribute per DeepFashion attribute type. The
  benchmark is multi-label: an image may have several positive attributes of one type, which no single
  categorical value can hold. The value is the attribute name when exactly one attribute of that type is
  positive; with none it is unspecified (no label); with several it is left unspecified too and counted as
  a `multi_positive` load warning, one per (image, type) dropped. (The dataset was not available when this
  was written, so the share dropped is not quoted here; the loaded catalogue's `load_warnings` reports it.)
  Users who need every label get the full multi-hot matrix from `read_multilabel(path)`.
- schema: every attribute's values in the dataset's own order (list_category_cloth.txt, list_attr_cloth.txt),
  keeping those that occur (e.g. Cape, Nightdress, Shirtdress and Sundress were merged into Dress and never do).
- split: train -> "train", val -> "val", test -> `held_out_split(id)` (query or gallery); an image the
  partition file does not list gets the hash split.
- box: list_bbox.txt's (x_1, y_1, x_2, y_2).
Bad rows (wrong number of columns, unknown category label, values outside {-1, 0, 1}, an empty box)
are warned about by file and line and skipped (a bad box or attribute row only loses that annotation).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vestis.catalog.catalog import Catalog, LoadReport
from vestis.catalog.item import Item, parse_box
from vestis.catalog.schema import AttributeSchema
from vestis.catalog.splits import held_out_split
from vestis.errors import CatalogError

NAME = "deepfashion-attributes"
CLOTHES_TYPES = {"1": "upper-body", "2": "lower-body", "3": "full-body"}
ATTRIBUTE_TYPES = {1: "texture", 2: "fabric", 3: "shape", 4: "part", 5: "style"}
ATTRIBUTES = ("category", "clothes_type") + tuple(ATTRIBUTE_TYPES.values())
SPLITS = {"train": "train", "val": "val"}  # "test" -> held_out_split
SUBDIRS = ("Anno", "Anno_coarse", "Eval")


# --- helpers shared with deepfashion_inshop -----------------------------------------------------
def benchmark_root(path: Path) -> Path:
    """The benchmark folder, from itself, its Anno/ or Eval/ folder, or one of its list files."""
    folder = path.parent if path.is_file() else path
    return folder.parent if folder.name in SUBDIRS else folder


def find_list(root: Path, name: str) -> Path | None:
    for d in (*(root / s for s in SUBDIRS), root):
        if (d / name).is_file():
            return d / name
    return None


def header_of(f: Path) -> list[str]:
    """The column names (line 2) of a list file; [] when the file is too short."""
    with open(f, encoding="utf-8", errors="replace") as fh:
        fh.readline()
        return fh.readline().split()


def list_rows(f: Path, report: LoadReport, first_column: str) -> Iterator[tuple[str, str]]:
    """(where, row text) for every data row of a list file, after checking the count and header lines."""
    with open(f, encoding="utf-8", errors="replace") as fh:
        count_line, header = fh.readline().strip(), fh.readline().split()
        if not count_line.isdigit() or not header or header[0] != first_column:
            raise CatalogError(f"{f}: not a DeepFashion list file (line 1 must be the row count, line 2 the "
                               f"column names starting with {first_column!r}; got {count_line!r} / {' '.join(header)!r})")
        n = 0
        for lineno, line in enumerate(fh, start=3):
            if line.strip():
                n += 1
                yield f"{f.name} line {lineno}", line
    if n != int(count_line):
        report.warn("count_mismatch", f"{f.name}: line 1 says {count_line} rows, the file has {n}")


def item_id(image_name: str) -> str:
    stem = image_name[4:] if image_name.startswith("img/") else image_name
    return stem.rsplit(".", 1)[0] if "." in stem.rsplit("/", 1)[-1] else stem


def image_base(root: Path) -> Path:
    return root / "Img" if (root / "Img" / "img").is_dir() and not (root / "img").is_dir() else root


def read_boxes(f: Path | None, report: LoadReport, n_before: int = 0) -> dict[str, tuple]:
    """image_name -> (where, leading columns, box) from a bbox list (list_bbox.txt: n_before=0, In-shop: 2)."""
    out: dict[str, tuple] = {}
    if f is None:
        return out
    for where, line in list_rows(f, report, "image_name"):
        cells = line.split()
        if len(cells) != 5 + n_before:
            report.warn("malformed_row", f"{where}: {len(cells)} columns, expected {5 + n_before}")
            continue
        try:
            box = parse_box(cells[1 + n_before:])
        except ValueError as e:
            report.warn("bad_box", f"{where}: {e}")
            box = None
        out[cells[0]] = (where, cells[1:1 + n_before], box)
    return out


# --- this benchmark ---------------------------------------------------------------------------
def _names_and_types(f: Path, report: LoadReport, first_column: str) -> list[tuple[str, str]]:
    """(name, type) rows of list_category_cloth / list_attr_cloth; names may contain spaces."""
    out = []
    for where, line in list_rows(f, report, first_column):
        parts = line.split()
        if len(parts) < 2 or not parts[-1].isdigit():
            report.warn("malformed_row", f"{where}: expected '<name> <type>', got {line.strip()!r}")
            out.append(("", ""))  # keep positions: labels elsewhere index this list
            continue
        out.append((" ".join(parts[:-1]), parts[-1]))
    return out


def _parse_values(text: str) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy warns, then truncates, on a bad token
        try:
            return np.fromstring(text, dtype=np.int8, sep=" ")
        except (ValueError, DeprecationWarning):
            return None


def _attr_rows(f: Path, n_attrs: int, report: LoadReport) -> Iterator[tuple[str, str, np.ndarray]]:
    """(where, image_name, int8 row) of list_attr_img.txt; rows of the wrong length or values are skipped."""
    for where, line in list_rows(f, report, "image_name"):
        name, rest = (line.split(None, 1) + [""])[:2]
        row = _parse_values(rest)
        if row is None or len(row) != n_attrs or row.min(initial=0) < -1 or row.max(initial=0) > 1:
            report.warn("malformed_row", f"{where}: expected {n_attrs} values in {{-1, 0, 1}} after the image name")
            continue
        yield where, name, row


def _files(path: Path) -> tuple[Path, dict[str, Path | None]]:
    root = benchmark_root(path)
    names = ("list_category_cloth.txt", "list_category_img.txt", "list_attr_cloth.txt", "list_attr_img.txt",
             "list_eval_partition.txt", "list_bbox.txt")
    return root, {n: find_list(root, n) for n in names}


def detect(path: Path) -> bool:
    root, files = _files(path)
    if files["list_category_img.txt"] is None and files["list_attr_img.txt"] is None:
        return False
    part = files["list_eval_partition.txt"]
    return part is None or "item_id" not in header_of(part)  # 3 columns with item_id: In-shop


def read_multilabel(path: Path, report: LoadReport | None = None) -> tuple[list[str], list[str], list[int], np.ndarray]:
    """The full attribute annotation: (image names, attribute names, attribute types 1..5,
    matrix int8 [images x attributes] with 1 = positive, 0 = negative or unknown)."""
    report = report if report is not None else LoadReport()
    root, files = _files(Path(path))
    for n in ("list_attr_cloth.txt", "list_attr_img.txt"):
        if files[n] is None:
            raise CatalogError(f"{path}: no {n} (looked in {root}/Anno, {root}/Anno_coarse and {root})")
    attrs = _names_and_types(files["list_attr_cloth.txt"], report, "attribute_name")
    names, rows = [], []
    for _, name, row in _attr_rows(files["list_attr_img.txt"], len(attrs), report):
        names.append(name)
        rows.append(row == 1)
    matrix = np.array(rows, dtype=np.int8).reshape(len(rows), len(attrs))
    return names, [a for a, _ in attrs], [int(t) if t else 0 for _, t in attrs], matrix


def read(path: Path, report: LoadReport) -> Catalog:
    root, files = _files(Path(path))
    for n in ("list_category_cloth.txt", "list_category_img.txt"):
        if files[n] is None:
            raise CatalogError(f"{path}: no {n} (looked in {root}/Anno, {root}/Anno_coarse and {root}); "
                               "this reader needs the Category and Attribute Prediction Benchmark's list files")
    if (files["list_attr_cloth.txt"] is None) != (files["list_attr_img.txt"] is None):
        missing = "list_attr_cloth.txt" if files["list_attr_cloth.txt"] is None else "list_attr_img.txt"
        raise CatalogError(f"{path}: {missing} is missing (attributes need both list_attr_cloth.txt and list_attr_img.txt)")

    categories = _names_and_types(files["list_category_cloth.txt"], report, "category_name")
    labels: dict[str, dict[str, str]] = {}
    for where, line in list_rows(files["list_category_img.txt"], report, "image_name"):
        cells = line.split()
        if len(cells) != 2:
            report.warn("malformed_row", f"{where}: {len(cells)} columns, expected 2 (image_name category_label)")
            continue
        name, label = cells
        if not label.isdigit() or not 1 <= int(label) <= len(categories) or not categories[int(label) - 1][0]:
            report.warn("bad_category", f"{where}: category_label {label!r} is not 1..{len(categories)}")
            continue
        if name in labels:
            report.warn("duplicate_id", f"{where}: {name} listed twice")
            continue
        cat, ctype = categories[int(label) - 1]
        labels[name] = {"category": cat, **({"clothes_type": CLOTHES_TYPES[ctype]} if ctype in CLOTHES_TYPES else {})}

    type_values: dict[str, list[str]] = {t: [] for t in ATTRIBUTE_TYPES.values()}
    if files["list_attr_cloth.txt"] is not None:
        attrs = _names_and_types(files["list_attr_cloth.txt"], report, "attribute_name")
        codes = np.array([int(t) if t.isdigit() and int(t) in ATTRIBUTE_TYPES else 0 for _, t in attrs])
        for (a, _), c in zip(attrs, codes):
            if c and a not in type_values[ATTRIBUTE_TYPES[c]]:
                type_values[ATTRIBUTE_TYPES[c]].append(a)
        for where, name, row in _attr_rows(files["list_attr_img.txt"], len(attrs), report):
            if name not in labels:
                report.warn("unknown_image", f"{where}: {name} is not in list_category_img.txt")
                continue
            positive = np.flatnonzero(row == 1)
            per_type = np.bincount(codes[positive], minlength=len(ATTRIBUTE_TYPES) + 1)
            for code, attribute in ATTRIBUTE_TYPES.items():
                if per_type[code] == 1:
                    labels[name][attribute] = attrs[positive[codes[positive] == code][0]][0]
                elif per_type[code] > 1:
                    report.warn("multi_positive", f"{where}: {per_type[code]} positive {attribute} attributes; "
                                f"{attribute} left unspecified")

    splits: dict[str, str] = {}
    if files["list_eval_partition.txt"] is not None:
        for where, line in list_rows(files["list_eval_partition.txt"], report, "image_name"):
            cells = line.split()
            if len(cells) != 2 or cells[1] not in ("train", "val", "test"):
                report.warn("bad_split", f"{where}: expected 'image_name train|val|test', got {line.strip()!r}")
                continue
            splits[cells[0]] = cells[1]
    boxes = read_boxes(files["list_bbox.txt"], report)

    base = image_base(root)
    items = []
    for name, attrs_of in labels.items():
        iid = item_id(name)
        status = splits.get(name)
        if files["list_eval_partition.txt"] is not None and status is None:
            report.warn("no_partition", f"{name}: not in list_eval_partition.txt; using the hash split")
        split = SPLITS.get(status) if status != "test" else held_out_split(iid)
        items.append(Item(id=iid, image=base / name, attributes=attrs_of, box=boxes.get(name, ('', (), None))[2],
                          split=split))
    defined = {"category": [c for c, _ in categories if c], "clothes_type": list(CLOTHES_TYPES.values()),
               **(type_values if files["list_attr_cloth.txt"] is not None else {})}
    present = {(a, v) for it in items for a, v in it.attributes.items()}
    schema = AttributeSchema({a: list(dict.fromkeys(v for v in vs if (a, v) in present)) for a, vs in defined.items()})
    return Catalog(items, schema, name=root.name, report=report)
