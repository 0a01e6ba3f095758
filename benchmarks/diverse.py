"""Protocol 4 (PROTOCOLS.md section 4): diverse part-based suggestions of a `parts` run, against plain global top-N
(the run's "visual" space, and optionally another run's "main" space) and MMR re-ranking of the visual list.

Queries: the items with `parts` (outfits, collages) of --queries' --splits; the gallery: the index's. Writes to --out:
rankings.jsonl (protocol-4 rows: groups with label, box in query-image pixels and ranked ids, and the round-robin
`ranked`), metrics.json, and one PNG per query for the first --pngs queries (attended regions and each group's
first results).

    python benchmarks/diverse.py --run R --index I --queries CAT --out runs/diverse-x [--global-run R2 --global-index I2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vestis.catalog import Catalog
from vestis.engine import Engine
from vestis.eval.metrics import (coverage, distinct_categories, intra_list_diversity, mmr, multilabel_average_precision,
                                 part_relevance, purity_at_k, round_robin)
from vestis.paths import default_cache_dir
from vestis.vision.extract import catalogue_features
from vestis.vision.preprocess import image_geometry, input_box_in_photo

COLOURS = [(230, 25, 75), (60, 180, 75), (67, 99, 216), (245, 130, 49), (145, 30, 180), (66, 212, 244)]


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class VisualVectors:
    """Pooled stride-32 ("visual" space) vectors of gallery items, from the feature cache, memoised."""

    def __init__(self, engine: Engine):
        self.engine, self.memo = engine, {}

    def __call__(self, ids):
        todo = [i for i in ids if i not in self.memo]
        if todo:
            with torch.inference_mode():
                v = self.engine.model.embed(self.engine.item_maps(todo), "visual").numpy()
            self.memo.update(zip(todo, v))
        return np.stack([self.memo[i] for i in ids]) if ids else np.zeros((0, 1))


def list_stats(ids, engine, vectors, label_attr, garments) -> dict:
    cats = [engine.catalog[i].attributes.get(label_attr) for i in ids]
    return {"coverage": coverage(cats, garments), "ild": intra_list_diversity(vectors(ids)),
            "distinct": distinct_categories(cats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--queries", type=Path, required=True, help="catalogue of query images with parts")
    ap.add_argument("--splits", default="query", help="comma-separated splits of --queries to use")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--global-run", type=Path, default=None, help="a global model's run: its plain top-N as baseline")
    ap.add_argument("--global-index", type=Path, default=None)
    ap.add_argument("--k", type=int, default=10, help="results per group")
    ap.add_argument("--pool", type=int, default=100, help="MMR candidates (visual top-pool)")
    ap.add_argument("--pngs", type=int, default=12)
    ap.add_argument("--timed", type=int, default=50, help="queries timed one by one")
    ap.add_argument("--cache", type=Path, default=default_cache_dir())
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    engine = Engine.load(args.run, args.index, cache_dir=args.cache)
    model = engine.model
    label_attr = model.config["label_attribute"]
    qcat = Catalog.load(args.queries)
    items = [it for s in args.splits.split(",") for it in qcat.split(s) if it.parts]
    feats = catalogue_features(Catalog(items, qcat.schema), engine.spec, args.cache, progress=False)
    ids = list(feats.ids)
    items = [qcat[i] for i in ids]
    maps = {k: torch.from_numpy(v.astype(np.float32)) for k, v in feats.maps.items()}
    print(f"{len(ids)} queries from {args.queries} ({args.splits}); gallery {len(engine.spaces['main'])} items; "
          f"label attribute {label_attr}")
    other = Engine.load(args.global_run, args.global_index, cache_dir=args.cache) if args.global_run else None
    vectors = VisualVectors(engine)

    # multi-label classification and the attended regions
    with torch.inference_mode():
        out = model(maps)
        probs = model.label_probabilities(out).numpy()
        steps = model.boxes(out, model.stride)[:, 1:].numpy()
    labels = list(model.labels)
    targets = np.zeros_like(probs)
    for r, it in enumerate(items):
        for p in it.parts:
            if p.attributes.get(label_attr) in labels:
                targets[r, labels.index(p.attributes[label_attr])] = 1
    ml = multilabel_average_precision(probs, targets)
    step_iou, on_garment, garment_iou = [], [], []
    geos = [image_geometry(it.image, engine.spec.resolution) for it in items]
    photo_steps = [[input_box_in_photo(b, g) for b in s] for s, g in zip(steps, geos)]
    for it, sb in zip(items, photo_steps):
        truth = [p.box for p in it.parts]
        for b in sb:
            step_iou.append(max(iou(b, t) for t in truth))
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            on_garment.append(any(t[0] <= cx <= t[2] and t[1] <= cy <= t[3] for t in truth))
        garment_iou += [max(iou(b, t) for b in sb) for t in truth]

    # diverse groups, and the baselines of the same total length
    # a query from the gallery's own catalogue (synthetic outfits) is left out of its own results
    res = engine.search_maps(maps, k=args.k, mode="diverse", exclude=ids)
    flat = engine.search_maps(maps, k=args.pool, mode="visual", exclude=ids)
    glob = other.search_maps(maps, k=args.pool, mode="same_item", exclude=ids) if other else None
    rows, per = [], {m: [] for m in ("diverse", "visual", "global", "mmr0.5", "mmr0.7")}
    purity, relevance, groups_per, false_groups = [], {"category": [], "colour": [], "pattern": []}, [], 0
    colour_attr = next((a for a in ("baseColour", "colour") if a in qcat.schema), None)
    for r, (it, result) in enumerate(zip(items, res)):
        garments = [p.attributes.get(label_attr) for p in it.parts]
        n = 5 * len(garments)
        glist = [[h.id for h in g.hits] for g in result.groups]
        merged = round_robin(glist, n)
        per["diverse"].append(list_stats(merged, engine, vectors, label_attr, garments))
        groups_per.append(len(result.groups))
        for g in result.groups:
            cats = [h.attributes.get(label_attr) for h in g.hits]
            purity.append(purity_at_k(cats, 5))
            match = [p for p in it.parts if p.attributes.get(label_attr) == g.label]
            if not match:
                false_groups += 1
                continue
            garment = match[0].attributes
            hits = [h.attributes for h in g.hits]
            relevance["category"].append(part_relevance(hits, garment, [label_attr]))
            if colour_attr and garment.get(colour_attr):
                relevance["colour"].append(part_relevance(hits, garment, [label_attr, colour_attr]))
            if garment.get("pattern"):
                relevance["pattern"].append(part_relevance(hits, garment, [label_attr, "pattern"]))
        pool = [h.id for h in flat[r].hits]
        per["visual"].append(list_stats(pool[:n], engine, vectors, label_attr, garments))
        if glob is not None:
            per["global"].append(list_stats([h.id for h in glob[r].hits][:n], engine, vectors, label_attr, garments))
        rel = np.array([h.score for h in flat[r].hits])
        for lam in (0.5, 0.7):
            order = mmr(rel, vectors(pool), n, lam)
            per[f"mmr{lam}"].append(list_stats([pool[j] for j in order], engine, vectors, label_attr, garments))
        boxes = [g.box for g in result.groups]
        rows.append({"query_id": it.id, "ranked": round_robin(glist),
                     "groups": [{"label": g.label, "score": g.score, "ranked": gl,
                                 "box": [round(v, 1) for v in input_box_in_photo(b, geos[r])] if b is not None else None}
                                for g, gl, b in zip(result.groups, glist, boxes)]})
    with open(args.out / "rankings.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")

    # query time: one query at a time, from cached maps (plan + index) and from the image file (+ encoding)
    t_maps, t_image = [], []
    for r in range(min(args.timed, len(ids))):
        one = {k: v[r:r + 1] for k, v in maps.items()}
        t0 = time.perf_counter()
        engine.search_maps(one, k=args.k, mode="diverse")
        t_maps.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        engine.search(image=Path(items[r].image), k=args.k, mode="diverse")
        t_image.append((time.perf_counter() - t0) * 1000)

    def mean(xs):
        return round(float(np.mean(xs)), 4) if xs else None

    metrics = {
        "queries": len(ids), "gallery": len(engine.spaces["main"]), "k_per_group": args.k,
        "multilabel": {k: round(v, 4) for k, v in ml.items()},
        "attention": {"step_best_iou": mean(step_iou), "steps_on_a_garment": mean(on_garment),
                      "garment_best_iou": mean(garment_iou), "garments_iou_0.5": mean([v >= 0.5 for v in garment_iou])},
        "groups_per_query": mean(groups_per), "garments_per_query": mean([len(it.parts) for it in items]),
        "false_group_share": round(false_groups / max(1, sum(groups_per)), 4),
        "purity@5": mean(purity), "part_relevance": {k: mean(v) for k, v in relevance.items()},
        "lists": {m: {s: mean([x[s] for x in v]) for s in ("coverage", "ild", "distinct")} for m, v in per.items() if v},
        "query_ms": {"p50_from_maps": round(statistics.median(t_maps), 2) if t_maps else None,
                     "p50_with_encoding": round(statistics.median(t_image), 2) if t_image else None},
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))

    # a PNG per query: the photo with each step's region (thin) and each group's box (thick), then a row per group
    png = args.out / "png"
    png.mkdir(exist_ok=True)
    thumb = (64, 80)
    for r in range(min(args.pngs, len(ids))):
        it, result = items[r], res[r]
        with Image.open(it.image) as im:
            photo = im.convert("RGB")
        scale = 320 / photo.height
        photo = photo.resize((round(photo.width * scale), 320))
        d = ImageDraw.Draw(photo)
        for t, b in enumerate(photo_steps[r]):
            d.rectangle([v * scale for v in b], outline=(150, 150, 150), width=1)
            d.text((b[0] * scale + 2, b[1] * scale + 1), f"s{t + 1}", fill=(90, 90, 90))
        for gi, g in enumerate(result.groups):
            b = input_box_in_photo(g.box, geos[r])
            d.rectangle([v * scale for v in b], outline=COLOURS[gi % len(COLOURS)], width=3)
        width = photo.width + 12 + 5 * (thumb[0] + 4) + 160
        canvas = Image.new("RGB", (width, max(320, 20 + len(result.groups) * (thumb[1] + 22))), "white")
        canvas.paste(photo, (0, 0))
        d = ImageDraw.Draw(canvas)
        truth = ", ".join(p.attributes.get(label_attr, "?") for p in it.parts)
        d.text((photo.width + 12, 2), f"{it.id}: {truth}", fill=(0, 0, 0))
        for gi, g in enumerate(result.groups):
            y = 18 + gi * (thumb[1] + 22)
            d.text((photo.width + 12, y), f"{g.label} ({g.score:.2f})", fill=COLOURS[gi % len(COLOURS)])
            for j, h in enumerate(g.hits[:5]):
                with Image.open(h.image) as im:
                    t = im.convert("RGB")
                t.thumbnail(thumb)
                canvas.paste(t, (photo.width + 12 + j * (thumb[0] + 4), y + 14))
        canvas.save(png / f"{it.id}.png")


if __name__ == "__main__":
    main()
