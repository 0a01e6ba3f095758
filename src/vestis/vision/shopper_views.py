"""Shopper-photo views of the training packshots, for training (issue 18: consumer-to-shop).

`vestis train --shopper-views K` adds K seeded views (`vestis.vision.augment.shopper_view`: a household
background behind the white packshot area, scale and an off-centre place, a small rotation and perspective tilt,
room light, blur, JPEG) of every training image to the run, with the image's labels, as a domain of their own
(balanced per batch like a mixed-in catalogue: `vestis.train.join_train_data`).

The views are content-keyed: view k of an image is a function of (the image's bytes, the seed, k, `VERSION`),
written once to `<cache>/shopper-views/<VERSION>/<content hash>-s<seed>-<k>.jpg` and then encoded into the
feature cache by that file's own content hash, like any catalogue photo. A second run (another model, another
configuration) finds both the files and their maps and makes or encodes nothing again; an interrupted run
resumes. Change `VERSION` whenever `shopper_view` changes what it draws, so old files are not reused by mistake.

These are augmentations of packshots, not shopper photos: every figure trained on them says so (README,
"Consumer-to-shop").
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from os import cpu_count
from pathlib import Path

from PIL import Image

from vestis.catalog import Catalog, Item
from vestis.errors import VestisError
from vestis.vision.augment import shopper_view
from vestis.vision.augmented_views import view_seed
from vestis.vision.cache import content_hash

VERSION = "v1"  # of shopper_view's drawing (crop 0); part of every view's file name
FOLDER = "shopper-views"


def views_folder(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / FOLDER / VERSION


def _make(src: Path, dst: Path, seed: int) -> bool:
    """Write one view unless it is there; True if it was made now. A view of an unreadable image is skipped
    (the item simply has no views; extraction reports the image itself)."""
    if dst.is_file():
        return False
    try:
        with Image.open(src) as im:
            v = shopper_view(im, seed)
    except OSError:
        return False
    tmp = dst.with_name(f".{dst.stem}.tmp.jpg")
    v.save(tmp, "JPEG", quality=95)  # shopper_view has already compressed it once, at quality 35-85
    tmp.replace(dst)  # a killed run never leaves half a view
    return True


def shopper_view_catalog(part: Catalog, views: int, cache_dir: str | Path, seed: int = 0,
                         progress: bool = True, workers: int | None = None) -> tuple[Catalog, dict]:
    """A catalogue of `views` shopper-photo views of every item of `part` that has an image (ids `<id>~s<k>`,
    the item's labels and instance, split "train"), its view files made where missing. Returns (catalogue,
    record): the record names the views, the folder and the seconds spent making them."""
    if views < 1:
        raise VestisError(f"--shopper-views must be at least 1, got {views}")
    folder = views_folder(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with_image = [it for it in part if it.image is not None and Path(it.image).is_file()]
    with ThreadPoolExecutor(max(4, cpu_count() or 1)) as pool:  # hashing is I/O
        hashes = list(pool.map(lambda it: content_hash(it.image), with_image))
    items, todo = [], []
    for it, h in zip(with_image, hashes):
        for k in range(1, views + 1):
            dst = folder / f"{h}-s{seed}-{k}.jpg"
            todo.append((Path(it.image), dst, view_seed(seed, h, str(k))))
            items.append(replace(it, id=f"{it.id}~s{k}", image=dst, instance_id=it.instance_id or it.id,
                                 split="train", box=None, regions={}, parts=()))  # boxes moved with the garment
    from tqdm import tqdm

    todo = list(dict((dst, (src, dst, sd)) for src, dst, sd in todo).values())  # one job per file: same photo, same views
    made = 0
    # PIL and numpy release the GIL in the heavy steps, so threads use both cores
    with ThreadPoolExecutor(workers or min(2, cpu_count() or 1)) as pool:
        for new in tqdm(pool.map(lambda t: _make(*t), todo), total=len(todo), desc="shopper views", unit="view",
                        disable=not progress):
            made += bool(new)
    items = [it for it in items if Path(it.image).is_file()]  # views of unreadable images were not made
    record = {"views_per_image": views, "seed": seed, "version": VERSION, "items": len(with_image),
              "views": len(items), "made_now": made, "make_s": round(time.perf_counter() - t0, 1),
              "folder": str(folder), "kind": "augmented packshots (vestis.vision.augment.shopper_view), not photos"}
    return Catalog(items, part.schema, name=f"{part.name} shopper views", source="shopper views"), record
