"""Generate the synthetic catalogue: plan the images, render them (in parallel), write the catalogue.

Every image depends only on (seed, its index): the plan (which instance an image shows, and whether it
is an outfit) is a prefix-stable stream drawn from the seed, an instance's garments come from their own
generator keyed by (seed, instance), and an image's nuisance from one keyed by (seed, index). So any
number of worker processes writes byte-identical files, and the first k images of a run with n > k are
those of a run with n = k.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vestis.catalog.catalog import Catalog
from vestis.catalog.item import Box, Item, Part
from vestis.catalog.readers import generic
from vestis.catalog.schema import AttributeSchema
from vestis.catalog.synthetic.contact_sheet import make_contact_sheet
from vestis.catalog.synthetic.garments import ATTRIBUTES
from vestis.catalog.synthetic.scene import SCENES, render, sample_look
from vestis.errors import VestisError
from vestis.machine import cpu_count

DEFAULT_SIZE = (160, 200)  # width, height: portrait, like the trunk's 160x128 (HxW) input
OUTFIT_SHARE = 0.14        # of instances; outfits have fewer views, so they are about 10 % of images
VIEWS = (1, 2, 3, 4)
VIEW_WEIGHTS = (0.3, 0.3, 0.25, 0.15)
OUTFIT_VIEW_WEIGHTS = (0.5, 0.5, 0.0, 0.0)
PLAN, INSTANCE, VIEW = 0, 1, 2  # generator streams


@dataclass(frozen=True)
class Shot:
    index: int     # image number -> item id
    instance: int  # garment (or outfit) number -> instance id
    outfit: bool


def item_id(index: int) -> str:
    return f"s{index:06d}"


def instance_id(instance: int) -> str:
    return f"g{instance:06d}"


def _key(seed: int) -> int:
    return seed % (1 << 64)  # SeedSequence takes non-negative entropy only


def plan(n: int, seed: int) -> list[Shot]:
    """Which instance each of n images shows: instances of 1-4 views (outfits 1-2), in id order."""
    rng = np.random.default_rng([_key(seed), PLAN])
    shots: list[Shot] = []
    instance = 0
    while len(shots) < n:
        outfit = bool(rng.random() < OUTFIT_SHARE)
        views = VIEWS[rng.choice(len(VIEWS), p=OUTFIT_VIEW_WEIGHTS if outfit else VIEW_WEIGHTS)]
        for _ in range(min(views, n - len(shots))):
            shots.append(Shot(len(shots), instance, outfit))
        instance += 1
    return shots


def _round(box: Box) -> Box:
    return tuple(round(float(v), 1) for v in box)


def render_shot(seed: int, shot: Shot, size: tuple[int, int], image_dir: Path, scene: str = "default") -> Item:
    """Render and save one image; return its catalogue item."""
    look = sample_look(np.random.default_rng([_key(seed), INSTANCE, shot.instance]), shot.outfit)
    view = render(look, np.random.default_rng([_key(seed), VIEW, shot.index]), size, scene)
    image = image_dir / f"{item_id(shot.index)}.jpg"
    view.image.save(image, "JPEG", quality=view.jpeg_quality)
    item = Item(id=item_id(shot.index), image=image, instance_id=instance_id(shot.instance))
    if look.outfit:
        # Outfits carry no labels of their own: each garment is a part with its own box and labels.
        parts = {name: Part(name, _round(box), dict(g.attributes))
                 for name, (g, _), box in zip(("bottom", "top"), look.garments, view.boxes) if box is not None}
        boxes = np.array([p.box for p in parts.values()]).reshape(-1, 4)
        whole = _round((*boxes[:, :2].min(0), *boxes[:, 2:].max(0))) if len(boxes) else None
        return replace(item, parts=tuple(parts[n] for n in ("top", "bottom") if n in parts), box=whole)
    (g, _), = look.garments
    return replace(item, attributes=dict(g.attributes), box=_round(view.boxes[0]) if view.boxes[0] else None,
                   regions={a: _round(b) for a, b in view.regions[0].items()})


def _render_task(args) -> Item:
    return render_shot(*args)


def generate(n: int, seed: int, out: Path, workers: int | None = None, contact_sheet: bool = False,
             image_size: tuple[int, int] | None = None, scene: str = "default") -> Catalog:
    """Write n images to out/images/<id>.jpg and out/catalog.jsonl + schema.json; return the catalogue.

    `workers` processes render in parallel (default: all cores; 1 renders here); the output does not
    depend on it. `image_size` is (width, height), default 160x200. With `contact_sheet`, also write
    out/contact_sheet.png, a labelled grid to check the labels by eye. `scene`: "default" or "cluttered" (the
    garment smaller in a street scene beside unlabelled distractor garments; `scene.py`).
    """
    if n < 1:
        raise VestisError(f"the synthetic catalogue needs at least 1 image, got n={n}")
    size = tuple(int(v) for v in (image_size or DEFAULT_SIZE))
    if len(size) != 2 or min(size) < 32:
        raise VestisError(f"image size must be WIDTH HEIGHT, each at least 32 pixels, got {image_size}")
    if scene not in SCENES:
        raise VestisError(f"scene must be one of {', '.join(SCENES)}, got {scene!r}")
    out = Path(out)
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(seed, shot, size, image_dir, scene) for shot in plan(n, seed)]
    workers = max(1, min(workers or cpu_count(), len(tasks)))
    if workers == 1:
        items = [_render_task(t) for t in tasks]
    else:
        # spawn, not fork: the caller may hold threads (torch, a web server) that fork would break.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            items = pool.map(_render_task, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 8))))
    generic.write(Catalog(items, AttributeSchema(ATTRIBUTES), name=out.name, source="synthetic"), out / "catalog.jsonl")
    catalog = Catalog.load(out)
    if contact_sheet:
        make_contact_sheet(catalog, out / "contact_sheet.png")
    return catalog
