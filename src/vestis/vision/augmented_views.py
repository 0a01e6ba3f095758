"""Augmented views of single photos: a same-product catalogue built from fashion-product-images (issue 17).

fashion-product-images has one photo per product, so it holds no real multi-view pairs. Its `images_hr/` folder
holds sharper copies (mostly 225 x 300) of some products' 60 x 80 catalogue photos, with the same ids. This module
makes seeded shopper-like views of those copies (`vestis.vision.augment.shopper_view`: a household background
behind the white packshot area, scale and an off-centre place, a small rotation and perspective tilt, room light,
blur, JPEG, and here a tight framing, `crop`) and writes a catalogue in which the views of one product share its
instance id, the representation of the synthetic multi-view renders (`Item.instance_id`, the generic reader's
`instance_id` column), so `global_embed`'s IS loss and protocol 3 (`vestis-same-item/1`) read it unchanged.

These are **augmented views of single photos, not a multi-view dataset**: every view of a product is a
transformation of the same photograph (PROTOCOLS.md section 3 asks every figure to say which data it is).

Two catalogue files in `out/`, sharing their train and gallery rows (and `schema.json`, `views/`):
  - `augmented.jsonl`: query split = `query_views` augmented views of each query-split product's `images_hr` photo;
  - `cross-resolution.jsonl`: query split = each query-split product's `images_hr` photo as it is (the plain
    cross-resolution case: a sharp 225 x 300 photo against 60 x 80 catalogue photos).
Their rows, by the source catalogue's own split of the product (a function of its id, `catalog/splits.py`):
  - train products with an `images_hr` photo: the 60 x 80 photo and `views` augmented views, split "train";
  - query products with an `images_hr` photo: the 60 x 80 photo goes to the gallery (the product's one gallery
    view, as in In-shop), and the query split gets the views (or the photo) above;
  - gallery products: the 60 x 80 photo, split "gallery";
  - train and query products without an `images_hr` photo are left out (nothing to make a view of), except that
    `packshot_views` > 0 adds that many views of the 60 x 80 photo itself for `packshot_products` of the train
    products without one (a seeded choice; all when None): more products for the instance loss to tell apart,
    from smaller photos (ids `<id>~p<k>`).
Catalogue photos are referenced in place (absolute paths into the dataset, never copied); only the views are
written, as JPEG (quality 95; `shopper_view` has already compressed each once at quality 35-85). A view's seed is a
function of (seed, product id, view number), so one product's views do not change when others are added.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from vestis.catalog import Catalog, Item
from vestis.catalog.readers import generic
from vestis.errors import CatalogError, VestisError
from vestis.vision.augment import shopper_view

KINDS = ("augmented", "cross-resolution")
HR_DIR = "images_hr"
CROP = 0.15  # a tight framing cuts up to 15 % of each side (the "random crop and scale")


def view_seed(seed: int, product_id: str, view: str) -> int:
    """The seed of one view: crc32 of (seed, product id, view name), stable across machines and runs."""
    return zlib.crc32(f"{seed}:{product_id}:{view}".encode("utf-8"))


def hr_folder(source: Catalog, hr_dir: str | Path | None = None) -> Path:
    """The folder of the sharper copies: `hr_dir`, or `images_hr/` beside the source catalogue's file."""
    if hr_dir is not None:
        folder = Path(hr_dir)
    elif source.path is not None:
        folder = (source.path if source.path.is_dir() else source.path.parent) / HR_DIR
    else:
        raise VestisError("the source catalogue was not read from a path: give the images_hr folder")
    if not folder.is_dir():
        raise CatalogError(f"no {HR_DIR} folder at {folder}: augmented views of single photos need the sharper "
                           "copies (fashion-product-images-small ships them in images_hr/)")
    return folder


def validation_catalogue(augmented: Catalog, products: int, query_views: int = 2, seed: int = 0) -> Catalog:
    """A validation slice of the TRAIN products, for choosing settings without looking at the query split.

    `products` train products with augmented views (`<id>~v<k>`; views of a 60 x 80 photo, `~p<k>`, do not count),
    a seeded choice, leave training: their 60 x 80 photo joins the gallery and their first `query_views` views become
    the queries (the rest are dropped). The query split of `augmented` is dropped; every other row keeps its split.
    Train on this catalogue's train split and measure on its queries; the query split is then measured once per
    choice, with the same run."""
    train = [it for it in augmented if augmented.split_of(it.id) == "train"]
    with_views = sorted({it.instance_id for it in train if it.id == f"{it.instance_id}~v1"})
    if not 0 < products < len(with_views):
        raise VestisError(f"validation products must be in 1..{len(with_views) - 1} (the train products with views), "
                          f"got {products}")
    if query_views < 1:
        raise VestisError(f"query_views must be >= 1, got {query_views}")
    held = {with_views[i] for i in np.random.default_rng(seed).permutation(len(with_views))[:products]}
    queries = {f"{p}~v{k}" for p in held for k in range(1, query_views + 1)}
    out: list[Item] = []
    for it in augmented:
        split = augmented.split_of(it.id)
        if split == "query":
            continue
        if split == "train" and it.instance_id in held:
            if it.id == it.instance_id:
                out.append(replace(it, split="gallery"))
            elif it.id in queries:
                out.append(replace(it, split="query"))
            continue
        out.append(replace(it, split=split))
    return Catalog(out, augmented.schema, name="validation", source="augmented views (validation slice of train)")


def write_augmented_views(source: Catalog, out: str | Path, views: int = 4, query_views: int = 2, seed: int = 0,
                          hr_dir: str | Path | None = None, crop: float = CROP, packshot_views: int = 0,
                          packshot_products: int | None = None, validation_products: int = 0,
                          progress: bool = True) -> dict:
    """Write `out/augmented.jsonl`, `out/cross-resolution.jsonl`, `out/schema.json` and `out/views/*.jpg` (see the
    module docstring); returns the counts. Views already on disk are kept (a re-run with the same arguments
    writes the same files), so an interrupted run resumes. validation_products > 0 also writes
    `out/validation.jsonl` (`validation_catalogue`: that many train products held out, `query_views` views each)."""
    if views < 1 or query_views < 1:
        raise VestisError(f"views and query_views must be >= 1, got {views} and {query_views}")
    if not 0 <= crop < 1:
        raise VestisError(f"crop must be in [0, 1), got {crop}")
    out = Path(out)
    folder = hr_folder(source, hr_dir)
    hr = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    (out / "views").mkdir(parents=True, exist_ok=True)
    shared: list[Item] = []
    queries: dict[str, list[Item]] = {k: [] for k in KINDS}
    counts: Counter = Counter()
    todo: list[tuple[Path, Path, int]] = []  # (hr photo, view file, seed)

    if packshot_views < 0 or (packshot_products is not None and packshot_products < 0):
        raise VestisError("packshot_views and packshot_products must be >= 0")
    extra: set[str] = set()
    if packshot_views:
        pool = sorted(it.id for it in source if source.split_of(it.id) == "train" and it.id not in hr
                      and it.image is not None and Path(it.image).is_file())
        pick = np.random.default_rng(seed).permutation(len(pool))
        extra = {pool[i] for i in (pick if packshot_products is None else pick[:packshot_products])}

    def view(product: Item, name: str, split: str, src: Path | None = None) -> Item:
        path = out / "views" / f"{product.id}~{name}.jpg"
        todo.append((src or hr[product.id], path, view_seed(seed, product.id, name)))
        return Item(id=f"{product.id}~{name}", image=path.resolve(), attributes=dict(product.attributes),
                    instance_id=product.id, split=split)

    for it in sorted(source, key=lambda it: it.id):
        if it.image is None or not Path(it.image).is_file():
            counts["no catalogue photo"] += 1
            continue
        split = source.split_of(it.id)
        photo = replace(it, image=Path(it.image).resolve(), instance_id=it.id)
        if split == "gallery":
            shared.append(replace(photo, split="gallery"))
            counts["gallery photos"] += 1
        elif it.id in extra:
            shared.append(replace(photo, split="train"))
            shared.extend(view(it, f"p{k}", "train", Path(it.image)) for k in range(1, packshot_views + 1))
            counts["train products with views of the 60x80 photo"] += 1
        elif it.id not in hr:
            counts[f"{split} products without {HR_DIR}"] += 1
        elif split == "train":
            shared.append(replace(photo, split="train"))
            shared.extend(view(it, f"v{k}", "train") for k in range(1, views + 1))
            counts["train products"] += 1
        elif split == "query":
            shared.append(replace(photo, split="gallery"))  # the product's own catalogue photo: its gallery view
            queries["augmented"].extend(view(it, f"q{k}", "query") for k in range(1, query_views + 1))
            queries["cross-resolution"].append(replace(photo, id=f"{it.id}~hr", image=hr[it.id].resolve(),
                                                       split="query"))
            counts["query products"] += 1
        else:
            counts[f"{split} products left out"] += 1
    if not queries["augmented"] or counts["train products"] == 0:
        raise CatalogError(f"{folder}: no train or no query product has an {HR_DIR} photo "
                           f"({counts['train products']} train, {counts['query products']} query)")
    from tqdm import tqdm

    made = 0
    for src, dst, s in tqdm(todo, desc="views", unit="view", disable=not progress):
        if dst.is_file():
            continue
        with Image.open(src) as im:
            v = shopper_view(im, s, crop=crop)
        tmp = dst.with_suffix(".tmp.jpg")
        v.save(tmp, "JPEG", quality=95)
        tmp.replace(dst)  # a killed run never leaves half a view
        made += 1
    for kind in KINDS:
        generic.write(Catalog(shared + queries[kind], source.schema, name=kind, source="augmented views"),
                      out / f"{kind}.jsonl")
    if validation_products:
        val = validation_catalogue(Catalog(shared + queries["augmented"], source.schema, name="augmented"),
                                   validation_products, query_views, seed)
        generic.write(val, out / "validation.jsonl")
        counts["validation products (held out of train)"] = validation_products
    counts.update({"train views": views * counts["train products"]
                   + packshot_views * counts["train products with views of the 60x80 photo"],
                   "query views": query_views * counts["query products"], "views written now": made})
    return dict(counts)
