"""How well a run's attribute boxes sit on the region that carries each attribute (FashionSearchNet's
attribute activation maps; the issue's synthetic check).

For every held-out item with labelled attribute regions (the synthetic catalogue draws them: sleeve,
neckline and length on their part of the garment; category, colour, pattern and fit on the whole garment),
the run's box for that attribute (`Region.heatmap_box`: the box fitted to its map, also where the run says
"unspecified" and draws no box) is mapped from feature-map cells onto the photo through the same letterbox
the trunk saw, and compared with the labelled region:
  - IoU, and the share of boxes with IoU >= 0.5 (the PASCAL criterion);
  - coverage: the share of the region inside the box, and the share of boxes covering >= 50 % of it;
  - precision: the share of the box inside the region (a whole-image box covers everything and is imprecise).
  - pointing game: the share of images whose map's peak (the centre of its highest cell) falls inside the region
    (for attention maps, AG-MLAN's figure).
The same figures for the whole picture as the box (what "w/o Loc." pools) are reported beside them, so a
number means something only where it beats that floor. For every attribute, with or without labelled
regions (e.g. real product photos), the report also gives the boxes' mean area as a share of the picture:
a share near 1 means the boxes pool (almost) what the whole-image ablation pools.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vestis.errors import VestisError

Box = Sequence[float]


def box_area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def intersection(a: Box, b: Box) -> float:
    return box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def box_iou(a: Box, b: Box) -> float:
    inter = intersection(a, b)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def box_scores(box: Box, region: Box) -> dict[str, float]:
    inter = intersection(box, region)
    return {"iou": box_iou(box, region),
            "coverage": inter / box_area(region) if box_area(region) > 0 else 0.0,
            "precision": inter / box_area(box) if box_area(box) > 0 else 0.0}


def peak_cell(heatmap) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1, in cells) of a map's highest cell (the first in row-major order on ties)."""
    m = np.asarray(heatmap, dtype=np.float64)
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    return (float(c), float(r), float(c + 1), float(r + 1))


def points_inside(point: Sequence[float], region: Box) -> bool:
    """Pointing game hit: the point (x, y) lies inside the region box (edges included)."""
    return region[0] <= point[0] <= region[2] and region[1] <= point[1] <= region[3]


# attributes the synthetic catalogue labels on one side only (the picture-left sleeve), while a garment shows them
# on both: the pointing game also reports a hit on the region mirrored about the garment box's vertical centre line
MIRRORED = ("sleeve",)


def mirror(region: Box, garment: Box) -> tuple[float, float, float, float]:
    """`region` mirrored about the vertical centre line of the `garment` box."""
    c2 = garment[0] + garment[2]
    return (c2 - region[2], region[1], c2 - region[0], region[3])


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {"n": 0}
    iou = np.array([r["iou"] for r in rows])
    cov = np.array([r["coverage"] for r in rows])
    prec = np.array([r["precision"] for r in rows])
    out = {"n": len(rows), "mean_iou": float(iou.mean()), "iou_0.5": float((iou >= 0.5).mean()),
           "mean_coverage": float(cov.mean()), "coverage_0.5": float((cov >= 0.5).mean()),
           "mean_precision": float(prec.mean())}
    for key in ("pointing", "pointing_mirrored"):
        hits = [r[key] for r in rows if key in r]
        if hits:
            out[key] = float(np.mean(hits))
    return out


def localisation_report(run_dir: Path, catalog, split: str | None = "query", threshold: float | None = None,
                        cache_dir: Path | None = None, batch: int = 256, progress: bool = True) -> dict:
    """Per attribute with labelled regions: the run's boxes vs the regions, and the whole-image floor."""
    from vestis.runs import load_run
    from vestis.paths import default_cache_dir
    from vestis.vision.extract import catalogue_features
    from vestis.vision.trunk import TrunkSpec
    from vestis.vision.preprocess import letterbox_geometry

    model, info = load_run(Path(run_dir))
    if not model.explains:
        raise VestisError(f"run {run_dir} ({model.name}) has no attribute boxes to evaluate")
    cat = catalog.split(split) if split else catalog
    cat = cat.filter(lambda it: it.image is not None and Path(it.image).is_file())
    if not len(cat):
        raise VestisError(f"no item of {catalog.name or 'the catalogue'}{f' (split {split})' if split else ''} "
                          f"has an image file")
    attrs = list(model.schema.attributes)
    spec = TrunkSpec.from_json(info.trunk)
    feats = catalogue_features(cat, spec, Path(cache_dir or default_cache_dir()), progress=progress)
    per = {a: [] for a in attrs}
    floor = {a: [] for a in attrs}
    area = {a: [] for a in attrs}
    for start in range(0, len(feats.ids), batch):
        ids = feats.ids[start:start + batch]
        maps = {lv: torch.from_numpy(np.asarray(v[start:start + batch], np.float32)) for lv, v in feats.maps.items()}
        exps = model.explain(maps) if threshold is None else model.explain(maps, threshold=threshold)
        for iid, exp in zip(ids, exps):
            it = cat[iid]
            with Image.open(it.image) as im:
                geo = letterbox_geometry(*im.size, spec.resolution)
            whole = exp.box_in_photo(exp.whole_map, geo)
            for a in attrs:
                # the box fitted to the map, also where the label is "unspecified" (then not drawn): where the
                # model looks for the attribute, whatever it concluded
                r = exp.region(a)
                cells = r.heatmap_box if r.heatmap_box is not None else r.box
                if cells is None:  # a region without any box has nothing to score
                    continue
                b = exp.box_in_photo(cells, geo)
                area[a].append(box_area(b) / max(box_area(whole), 1e-9))
                region = (it.regions or {}).get(a)
                if region is None:
                    continue
                scores = box_scores(b, region)
                if r.heatmap is not None:
                    x0, y0, x1, y1 = exp.box_in_photo(peak_cell(r.heatmap), geo)
                    peak = ((x0 + x1) / 2, (y0 + y1) / 2)
                    scores["pointing"] = float(points_inside(peak, region))
                    if a in MIRRORED and it.box is not None:  # the other sleeve counts too
                        scores["pointing_mirrored"] = float(points_inside(peak, region) or
                                                            points_inside(peak, mirror(region, it.box)))
                per[a].append(scores)
                floor[a].append(box_scores(whole, region))
    return {"run": info.run_id, "model": model.name, "split": split, "n_items": len(feats.ids),
            "threshold": float(exps[0].threshold),
            "attributes": {a: {"area_share": float(np.mean(area[a])), "boxes": summarise(per[a]),
                               "whole_image": summarise(floor[a])} for a in attrs}}


def report_markdown(report: dict) -> str:
    lines = [f"Attribute boxes of run `{report['run']}` ({report['model']}, threshold {report['threshold']:g}) vs "
             f"labelled regions, split `{report['split']}`, {report['n_items']} items.", "",
             "| attribute | box area / picture | regions | IoU>=0.5 | mean IoU | covers>=50% | mean precision "
             "| pointing game | whole image: IoU>=0.5 | mean IoU | mean precision |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for a, r in report["attributes"].items():
        b, f = r["boxes"], r["whole_image"]
        if not b["n"]:
            lines.append(f"| {a} | {r['area_share']:.2f} | 0 | - | - | - | - | - | - | - | - |")
            continue
        point = f"{b['pointing']:.1%}" if "pointing" in b else "-"
        if "pointing_mirrored" in b:
            point += f" ({b['pointing_mirrored']:.1%} with the mirrored region)"
        lines.append(f"| {a} | {r['area_share']:.2f} | {b['n']} | {b['iou_0.5']:.1%} | {b['mean_iou']:.3f} | "
                     f"{b['coverage_0.5']:.1%} | {b['mean_precision']:.3f} | {point} | {f['iou_0.5']:.1%} | "
                     f"{f['mean_iou']:.3f} | {f['mean_precision']:.3f} |")
    return "\n".join(lines) + "\n"
