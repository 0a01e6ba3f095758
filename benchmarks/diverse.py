"""Protocol 4 (PROTOCOLS.md section 4) around a `parts` run: the baselines' rankings files, and what a rankings file
cannot hold (the model's multi-label classification and attended regions, query time, a PNG per query).

The diverse rankings themselves come from `vestis search --queries Q` (the product path) and every rankings file is
scored by `vestis eval` (benchmarks/diverse.sh runs both). This script writes to --out:
- rankings-visual.jsonl, rankings-visual-mmr0.5.jsonl, rankings-visual-mmr0.7.jsonl: plain top-N of the run's
  "visual" space (pooled stride-32 features), N = 5 x garments of each query, and MMR re-rankings of its top --pool;
- with --global-run / --global-index, the same three for that run's "main" space (rankings-global*.jsonl; MMR's
  similarity is that space's cosine);
- model.json: multi-label classification of the query photos (AP_all, mAP: Verma et al.'s Table 1 layout),
  attended regions against the true garment boxes (each step's best IoU, the share of steps whose centre lies on a
  garment, each garment's best IoU and the share found at IoU >= 0.5), query time p50 (diverse mode, one query at a
  time, from the encoded maps and with the image's encoding);
- png/QUERY.png for the first --pngs queries: the photo with each step's region (grey, s1..sK) and each group's box
  (colour), then a row per group (label, score, first five results), read from --rankings.

    python benchmarks/diverse.py --run R --index I --queries Q.jsonl --rankings R.jsonl --out DIR \
        [--global-run R2 --global-index I2]
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

from vestis.engine import Engine
from vestis.eval import read_queries, read_rankings, write_rankings
from vestis.eval.metrics import box_iou, mmr, multilabel_average_precision
from vestis.eval.queries import diverse_garments
from vestis.paths import default_cache_dir
from vestis.vision.preprocess import image_geometry, input_box_in_photo

COLOURS = [(230, 25, 75), (60, 180, 75), (67, 99, 216), (245, 130, 49), (145, 30, 180), (66, 212, 244)]


def flat_rankings(engine: Engine, maps, queries, mode: str, space: str, pool: int, name: str, out: Path) -> None:
    """Plain top-N (N = 5 x garments) of `mode` and its MMR re-rankings (lambda 0.5, 0.7) of the top `pool`, with
    the space's own vectors as MMR's similarity; three rankings files."""
    res = engine.search_maps(maps, k=pool, mode=mode, labels=False)
    rows = {name: [], f"{name}-mmr0.5": [], f"{name}-mmr0.7": []}
    for q, r in zip(queries, res):
        n = 5 * len(diverse_garments(q)[1][q["attribute"]])
        ids = [h.id for h in r.hits]
        rows[name].append({"query_id": q["query_id"], "ranked": ids[:n], "labels": "off"})
        with torch.inference_mode():
            vecs = engine.model.embed(engine.item_maps(ids), space).numpy()
        rel = np.array([h.score for h in r.hits])
        for lam in (0.5, 0.7):
            order = mmr(rel, vecs, n, lam)
            rows[f"{name}-mmr{lam}"].append({"query_id": q["query_id"], "ranked": [ids[j] for j in order],
                                             "labels": "off"})
    for key, rr in rows.items():
        write_rankings(out / f"rankings-{key}.jsonl", rr)


def model_metrics(engine: Engine, maps, queries, geos) -> tuple[dict, list]:
    """Multi-label AP of the query photos and the attended regions against the true boxes; each query's step boxes
    in photo pixels (for the PNGs)."""
    model = engine.model
    labels = list(model.labels)
    with torch.inference_mode():
        out = model(maps)
        probs = model.label_probabilities(out).numpy()
        steps = model.boxes(out, model.stride)[:, 1:].numpy()
    targets = np.zeros_like(probs)
    step_iou, on_garment, garment_iou, photo_steps = [], [], [], []
    for r, q in enumerate(queries):
        attr, target, boxes = diverse_garments(q)
        for c in target[attr]:
            if c in labels:
                targets[r, labels.index(c)] = 1
        sb = [input_box_in_photo(b, geos[r]) for b in steps[r]]
        photo_steps.append(sb)
        for b in sb:
            step_iou.append(max(box_iou(b, t) for t in boxes))
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            on_garment.append(any(t[0] <= cx <= t[2] and t[1] <= cy <= t[3] for t in boxes))
        garment_iou += [max(box_iou(b, t) for b in sb) for t in boxes]
    ml = multilabel_average_precision(probs, targets)
    predicted = model.predicted_labels(torch.from_numpy(probs)).numpy()
    return {"multilabel": {k: round(v, 4) for k, v in ml.items()},
            "predicted_labels_per_photo": round(float(predicted.sum(1).mean()), 3),
            "label_precision": round(float((predicted & (targets > 0)).sum() / max(1, predicted.sum())), 4),
            "label_recall": round(float((predicted & (targets > 0)).sum() / max(1, targets.sum())), 4),
            "attention": {"step_best_iou": round(float(np.mean(step_iou)), 4),
                          "steps_on_a_garment": round(float(np.mean(on_garment)), 4),
                          "garment_best_iou": round(float(np.mean(garment_iou)), 4),
                          "garments_iou_0.5": round(float(np.mean([v >= 0.5 for v in garment_iou])), 4)}}, photo_steps


def draw(q, row, steps, engine: Engine, path: Path) -> None:
    """The photo with the steps' regions (grey) and the groups' boxes (colour); a row per group: label and first 5."""
    with Image.open(q["image"]) as im:
        photo = im.convert("RGB")
    scale = 320 / photo.height
    photo = photo.resize((round(photo.width * scale), 320))
    d = ImageDraw.Draw(photo)
    for t, b in enumerate(steps):
        d.rectangle([v * scale for v in b], outline=(150, 150, 150), width=1)
        d.text((b[0] * scale + 2, b[1] * scale + 1), f"s{t + 1}", fill=(90, 90, 90))
    groups = row.get("groups", [])
    for gi, g in enumerate(groups):
        if g.get("box"):
            d.rectangle([v * scale for v in g["box"]], outline=COLOURS[gi % len(COLOURS)], width=3)
    thumb = (64, 80)
    canvas = Image.new("RGB", (photo.width + 12 + 5 * (thumb[0] + 4) + 160,
                               max(320, 20 + len(groups) * (thumb[1] + 22))), "white")
    canvas.paste(photo, (0, 0))
    d = ImageDraw.Draw(canvas)
    attr = q["attribute"]
    d.text((photo.width + 12, 2), f"{q['query_id']}: " + ", ".join(q["target"][attr]), fill=(0, 0, 0))
    for gi, g in enumerate(groups):
        y = 18 + gi * (thumb[1] + 22)
        d.text((photo.width + 12, y), g["label"], fill=COLOURS[gi % len(COLOURS)])
        for j, iid in enumerate(g["ranked"][:5]):
            with Image.open(engine.catalog[iid].image) as im:
                t = im.convert("RGB")
            t.thumbnail(thumb)
            canvas.paste(t, (photo.width + 12 + j * (thumb[0] + 4), y + 14))
    canvas.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--queries", type=Path, required=True, help="a protocol-4 query file (vestis queries --protocol diverse)")
    ap.add_argument("--rankings", type=Path, required=True, help="the run's diverse rankings (vestis search --queries)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--global-run", type=Path, default=None, help="a global model's run: its plain top-N as baseline")
    ap.add_argument("--global-index", type=Path, default=None)
    ap.add_argument("--k", type=int, default=10, help="results per group (timing)")
    ap.add_argument("--pool", type=int, default=100, help="MMR candidates (top-pool of the flat list)")
    ap.add_argument("--pngs", type=int, default=12)
    ap.add_argument("--timed", type=int, default=50, help="queries timed one by one")
    ap.add_argument("--cache", type=Path, default=default_cache_dir())
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    engine = Engine.load(args.run, args.index, cache_dir=args.cache)
    queries = read_queries(args.queries)
    images = [Path(q["image"]) for q in queries]
    maps = engine.encode_images(images)
    geos = [image_geometry(p, engine.spec.resolution) for p in images]
    print(f"{len(queries)} queries from {args.queries}; gallery {len(engine.spaces['main'])} items")

    flat_rankings(engine, maps, queries, "visual", "visual", args.pool, "visual", args.out)
    if args.global_run:
        other = Engine.load(args.global_run, args.global_index, cache_dir=args.cache)
        flat_rankings(other, other.encode_images(images), queries, "same_item", "main", args.pool, "global", args.out)

    metrics, photo_steps = model_metrics(engine, maps, queries, geos)
    # query time: one query at a time, from the encoded maps (plan + index) and from the image file (+ encoding)
    t_maps, t_image = [], []
    for r in range(min(args.timed, len(queries))):
        one = {k: v[r:r + 1] for k, v in maps.items()}
        t0 = time.perf_counter()
        engine.search_maps(one, k=args.k, mode="diverse", labels=False)
        t_maps.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        engine.search(image=images[r], k=args.k, mode="diverse", labels=False)
        t_image.append((time.perf_counter() - t0) * 1000)
    metrics["query_ms"] = {"p50_from_maps": round(statistics.median(t_maps), 2) if t_maps else None,
                           "p50_with_encoding": round(statistics.median(t_image), 2) if t_image else None,
                           "timed": len(t_maps), "k_per_group": args.k, "gallery": len(engine.spaces["main"])}
    (args.out / "model.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps(metrics, indent=1))

    rows = read_rankings(args.rankings)
    png = args.out / "png"
    png.mkdir(exist_ok=True)
    for r in range(min(args.pngs, len(queries))):
        draw(queries[r], rows[queries[r]["query_id"]], photo_steps[r], engine, png / f"{queries[r]['query_id']}.png")


if __name__ == "__main__":
    main()
