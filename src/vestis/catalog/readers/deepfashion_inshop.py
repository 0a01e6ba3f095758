"""deepfashion-inshop: DeepFashion "In-shop Clothes Retrieval Benchmark".

List files as in the attribute benchmark (line 1 the row count, line 2 the column names, then rows of
space-separated columns; warnings count lines from 1):

    Eval/list_eval_partition.txt  image_name item_id evaluation_status
                                  img/WOMEN/Dresses/id_00000002/02_1_front.jpg  id_00000002  train | query | gallery
    Anno/list_bbox_inshop.txt     image_name clothes_type pose_type x_1 y_1 x_2 y_2
                                  img/WOMEN/Dresses/id_00000002/02_1_front.jpg  3  1  050 049 208 235

The partition (3 columns, with item_id) is required and is what tells this benchmark from the attribute
benchmark, whose list_eval_partition.txt has 2; the boxes are optional. Files may be under Anno/ and
Eval/ or in one folder; images are `<root>/<image_name>` (or `<root>/Img/<image_name>`).

Mapping to vestis:
- id: image_name without `img/` and the extension (`WOMEN/Dresses/id_00000002/02_1_front`);
  instance_id: item_id; split: the evaluation status as is (train / query / gallery).
- `gender` (Women / Men, from the first path folder WOMEN / MEN), `category` (the second folder as is:
  Dresses, Blouses_Shirts, ...), and from the bbox file `clothes_type` (1 upper-body, 2 lower-body,
  3 full-body) and `pose_type` (1 frontal, 2 side, 3 back, 4 zoom-out, 5 zoom-in, 6 stand-alone).
- box: the bbox file's (x_1, y_1, x_2, y_2).
- schema: values in the order above (categories by name), keeping those that occur.
Bad rows (wrong column count, unknown status, duplicate image, bad box or type code) are warned about by
file and line; a bad partition row is skipped, a bad bbox row only loses its box / types.
The In-shop per-item attribute and description files (list_attr_items.txt, list_description_inshop.json)
are not read.
"""

from __future__ import annotations

from pathlib import Path

from vestis.catalog.catalog import Catalog, LoadReport
from vestis.catalog.item import Item
from vestis.catalog.schema import AttributeSchema
from vestis.errors import CatalogError

from .deepfashion_attributes import benchmark_root, find_list, header_of, image_base, item_id, list_rows, read_boxes

NAME = "deepfashion-inshop"
STATUSES = ("train", "query", "gallery")
GENDERS = {"WOMEN": "Women", "MEN": "Men"}
CLOTHES_TYPES = {"1": "upper-body", "2": "lower-body", "3": "full-body"}
POSE_TYPES = {"1": "frontal", "2": "side", "3": "back", "4": "zoom-out", "5": "zoom-in", "6": "stand-alone"}
ATTRIBUTES = ("gender", "category", "clothes_type", "pose_type")


def detect(path: Path) -> bool:
    root = benchmark_root(path)
    if find_list(root, "list_bbox_inshop.txt") is not None:
        return True
    part = find_list(root, "list_eval_partition.txt")
    return part is not None and "item_id" in header_of(part)


def read(path: Path, report: LoadReport) -> Catalog:
    root = benchmark_root(Path(path))
    part = find_list(root, "list_eval_partition.txt")
    if part is None:
        raise CatalogError(f"{path}: no list_eval_partition.txt (looked in {root}/Eval, {root}/Anno and {root})")
    header = header_of(part)
    if header[:3] != ["image_name", "item_id", "evaluation_status"]:
        raise CatalogError(f"{part}: line 2 must be 'image_name item_id evaluation_status' (the In-shop partition), "
                           f"got {' '.join(header)!r}")
    boxes = read_boxes(find_list(root, "list_bbox_inshop.txt"), report, n_before=2)
    base = image_base(root)
    items, seen = [], set()
    for where, line in list_rows(part, report, "image_name"):
        cells = line.split()
        if len(cells) != 3:
            report.warn("malformed_row", f"{where}: {len(cells)} columns, expected 3 (image_name item_id evaluation_status)")
            continue
        name, instance, status = cells
        if status not in STATUSES:
            report.warn("bad_split", f"{where}: evaluation_status {status!r} is not one of {', '.join(STATUSES)}")
            continue
        if name in seen:
            report.warn("duplicate_id", f"{where}: {name} listed twice")
            continue
        seen.add(name)
        attrs = {}
        folders = name.split("/")
        if len(folders) >= 4 and folders[1] in GENDERS:
            attrs = {"gender": GENDERS[folders[1]], "category": folders[2]}
        else:
            report.warn("unexpected_path", f"{where}: {name} is not img/<WOMEN|MEN>/<category>/<item>/<file>")
        box_where, codes, box = boxes.get(name, ("", (), None))
        if codes:
            if codes[0] in CLOTHES_TYPES and codes[1] in POSE_TYPES:
                attrs.update(clothes_type=CLOTHES_TYPES[codes[0]], pose_type=POSE_TYPES[codes[1]])
            else:
                report.warn("bad_type", f"{box_where}: clothes_type {codes[0]!r} / pose_type {codes[1]!r} unknown")
        items.append(Item(id=item_id(name), image=base / name, attributes=attrs, instance_id=instance, box=box,
                          split=status))
    present = {(a, v) for it in items for a, v in it.attributes.items()}
    defined = {"gender": GENDERS.values(), "category": sorted(v for a, v in present if a == "category"),
               "clothes_type": CLOTHES_TYPES.values(), "pose_type": POSE_TYPES.values()}
    schema = AttributeSchema({a: [v for v in vs if (a, v) in present] for a, vs in defined.items()})
    return Catalog(items, schema, name=root.name, report=report)
