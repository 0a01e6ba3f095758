"""Helpers of benchmarks/same_product.sh (issue 17).

    python benchmarks/same_product.py sheet VIEWS_DIR OUT.png [--products 6]
        a contact sheet of augmented views of single photos: per query product (a row), its 60x80 catalogue photo
        (the gallery image to find), its images_hr photo as it is (the cross-resolution query) and its augmented
        query views, then one train product's views for comparison;
    python benchmarks/same_product.py table REPORT_DIR...
        the Recall@1/5/10/20/50 and category-level rows of `vestis eval` reports, as README table rows.
    python benchmarks/same_product.py neighbours CATALOG QUERIES RANKINGS... [--attribute articleType] [--top 20]
        what fills each run's top 20: the share of the top `top` hits with the query product's `attribute` value
        (how much the ranking is a category ranking), the share of queries whose product is in the top `top`,
        and the median rank of the product among the hits (misses counted as beyond the list);
    python benchmarks/same_product.py vectors RUN INDEX CATALOG QUERIES [--weights 0.5,1,1.5]
        Recall@1/5/10/20/50 (exact search over the catalogue's gallery split, float32) of a global_embed run's
        vectors: its learned vector, the pooled features its embedding layer reads ("shared"), and the learned
        vector mixed with the trunk vector at each weight w (score e.e' + w^2 v.v', what `visual_weight` w searches).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

CELL = (150, 200)  # width, height of one picture on the sheet (the photos' 3:4)
KS = ("1", "5", "10", "20", "50")


def _fit(path: Path) -> Image.Image:
    im = Image.open(path).convert("RGB")
    im.thumbnail(CELL, Image.BICUBIC) if im.width > CELL[0] else None
    if im.width < CELL[0] and im.height < CELL[1]:  # a 60x80 photo: enlarged (nearest) so its size is visible
        s = min(CELL[0] // im.width, CELL[1] // im.height)
        im = im.resize((im.width * s, im.height * s), Image.NEAREST)
    cell = Image.new("RGB", CELL, (255, 255, 255))
    cell.paste(im, ((CELL[0] - im.width) // 2, (CELL[1] - im.height) // 2))
    return cell


def sheet(views_dir: Path, out: Path, products: int = 6) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vestis.catalog import Catalog

    aug = Catalog.load(views_dir / "augmented.jsonl")
    xres = Catalog.load(views_dir / "cross-resolution.jsonl")
    queries = sorted({it.instance_id for it in aug.split("query")})
    step = max(1, len(queries) // products)
    chosen = queries[::step][:products]
    rows = []
    for p in chosen:
        views = sorted((it for it in aug.split("query") if it.instance_id == p), key=lambda it: it.id)
        rows.append([aug[p].image, xres[f"{p}~hr"].image] + [it.image for it in views])
    cols = max(len(r) for r in rows)
    head = 24
    labels = ["catalogue 60x80 (gallery)", "images_hr as is", *[f"augmented view {k}" for k in range(1, cols - 1)]]
    W, H = CELL[0] * cols, head + CELL[1] * len(rows)
    canvas = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(canvas)
    for c, lab in enumerate(labels[:cols]):
        d.text((c * CELL[0] + 4, 6), lab, fill=(0, 0, 0))
    for r, paths in enumerate(rows):
        for c, path in enumerate(paths):
            canvas.paste(_fit(Path(path)), (c * CELL[0], head + r * CELL[1]))
        d.text((4, head + r * CELL[1] + 4), chosen[r], fill=(200, 0, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    print(f"wrote {out} ({len(rows)} products: {', '.join(chosen)})")


def table(reports: list[Path]) -> None:
    for d in reports:
        r = json.loads((d / "report.json").read_text())
        s = r["same_item"]
        name = r["run"]["name"]
        print(f"| {name} | {s['views']} | {s['n_scored']} | "
              + " | ".join(f"{100 * s['recall_at_k'][k]:.1f}" for k in KS) + " |")
        if r.get("classification"):
            c, lv = r["classification"], r.get("classification_levels", {})
            cells = [c] + [lv[a] for a in ("subCategory", "masterCategory") if a in lv]
            print(f"|   classification {name} ({c['split']}, {c['n']}) | "
                  + " | ".join(" / ".join(f"{100 * x['top_k'][k]:.1f}" for k in ("1", "3", "5")) for x in cells) + " |")


def neighbours(catalog: Path, queries: Path, rankings: list[Path], attribute: str = "articleType", top: int = 20) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import numpy as np

    from vestis.catalog import Catalog

    cat = Catalog.load(catalog)
    qs = {q["query_id"]: q for q in map(json.loads, filter(str.strip, queries.read_text().splitlines()))}
    print(f"| rankings | queries | same {attribute} in the top {top} | product in the top {top} | median rank |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for path in rankings:
        same, hit, ranks = [], [], []
        for row in map(json.loads, path.read_text().splitlines()):
            q = qs[row["query_id"]]
            want = q["target"]["instance_id"]
            value = cat[q["item_id"]].attributes.get(attribute)
            ranked = row["ranked"]
            same.append(np.mean([cat[i].attributes.get(attribute) == value for i in ranked[:top]]))
            where = [n for n, i in enumerate(ranked, 1) if cat[i].instance_id == want]
            ranks.append(where[0] if where else len(ranked) + 1)
            hit.append(bool(where) and where[0] <= top)
        print(f"| {path} | {len(ranks)} | {100 * np.mean(same):.1f} | {100 * np.mean(hit):.1f} | "
              f"{np.median(ranks):.0f} |")


def vectors(run: Path, index: Path, catalog: Path, queries: Path, weights: list[float]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import numpy as np
    import torch

    from vestis.bench.adapter import BenchRun
    from vestis.models.layers import gap, l2n

    torch.set_num_threads(1)
    br = BenchRun.load(run, index, catalog_path=catalog, mode="same_item")
    model, cat = br.model.eval(), br.catalog
    gallery = [it.id for it in cat if cat.split_of(it.id) == "gallery"]
    qs = [json.loads(line) for line in queries.read_text().splitlines() if line.strip()]

    def embed(ids):
        out = {"learned": [], "shared": [], "visual": []}
        for i in range(0, len(ids), 512):
            maps = {k: v.float() for k, v in br.engine.item_maps(ids[i:i + 512]).items()}
            with torch.inference_mode():
                out["learned"].append(model(maps)[0].numpy())
                out["shared"].append(l2n(gap(model.shared(maps["s32"]))).numpy())
                out["visual"].append(model.embed(maps, "visual").numpy())
        return {k: np.concatenate(v) for k, v in out.items()}

    g, q = embed(gallery), embed([x["item_id"] for x in qs])
    inst = np.array([cat[i].instance_id for i in gallery])
    want = np.array([x["target"]["instance_id"] for x in qs])
    rows = [("learned vector", q["learned"] @ g["learned"].T), ("pooled shared features", q["shared"] @ g["shared"].T)]
    rows += [(f"learned + trunk, w {w:g}", q["learned"] @ g["learned"].T + w * w * (q["visual"] @ g["visual"].T))
             for w in weights]
    print(f"{run} on {queries} ({len(qs)} queries, {len(gallery)} gallery images)")
    print("| vectors | " + " | ".join(f"R@{k}" for k in KS) + " |")
    print("| --- |" + " ---: |" * len(KS))
    for name, scores in rows:
        hit = inst[np.argsort(-scores, axis=1)[:, :50]] == want[:, None]
        print(f"| {name} | " + " | ".join(f"{100 * hit[:, :int(k)].any(1).mean():.1f}" for k in KS) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheet")
    s.add_argument("views_dir", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--products", type=int, default=6)
    t = sub.add_parser("table")
    t.add_argument("reports", type=Path, nargs="+")
    n = sub.add_parser("neighbours")
    n.add_argument("catalog", type=Path)
    n.add_argument("queries", type=Path)
    n.add_argument("rankings", type=Path, nargs="+")
    n.add_argument("--attribute", default="articleType")
    n.add_argument("--top", type=int, default=20)
    v = sub.add_parser("vectors")
    for name in ("run", "index", "catalog", "queries"):
        v.add_argument(name, type=Path)
    v.add_argument("--weights", default="0.5,0.75,1,1.5")
    a = p.parse_args(argv)
    if a.cmd == "sheet":
        sheet(a.views_dir, a.out, a.products)
    elif a.cmd == "vectors":
        vectors(a.run, a.index, a.catalog, a.queries, [float(w) for w in a.weights.split(",") if w])
    elif a.cmd == "neighbours":
        neighbours(a.catalog, a.queries, a.rankings, a.attribute, a.top)
    else:
        table(a.reports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
