"""Collages of real product photos: outfit-like query images with exact per-garment labels and boxes (the data of
protocol 4, Verma et al.'s diverse suggestions, on real photos).

Each collage puts a top, a bottom, shoes and, with probability `extra_share`, a bag or a watch into a 2 x 2 grid on
white (cells in random order, each photo scaled to 75-100 % of its cell and placed at random inside it). Every
garment is a `Part` named by its role with the source item's labels and the box of the pasted photo (product photos
are on white, so the box is the photo's, not the garment's outline). Training collages (split "train") cut only
train-split photos; evaluation collages (split "query") only query-split photos, so that they can be searched
against the source catalogue's gallery split without any photo of theirs being indexed.

Validation collages (split "val", `n_val`) are for choosing options without looking at the evaluation collages: they
cut only train-split photos that no training collage and no single uses. With n_val > 0, each role's train-split
photos are shuffled (seeded by the seed and the role) and the first `val_share` of them (at least one, and at least
one left for training) are held out for the validation collages; the training collages and the singles draw from the
rest. With n_val = 0 nothing is held out (the collages are those of earlier versions).

`singles` adds that many train-split photos (of any category) as items of their own, labelled as in the source
and pointing at the source photo: a model trained on the collage catalogue then also sees single products, which
is what the gallery holds (their features are already in the cache).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from vestis.catalog.catalog import Catalog
from vestis.catalog.item import Item, Part
from vestis.catalog.readers import generic
from vestis.errors import VestisError

ROLE_ATTRIBUTE = "subCategory"  # fashion-product-images' garment group
ROLES = {"top": ("Topwear",), "bottom": ("Bottomwear",), "shoes": ("Shoes", "Sandal", "Flip Flops"),
         "bag": ("Bags",), "watch": ("Watches",)}
ALWAYS = ("top", "bottom", "shoes")
EXTRA = ("bag", "watch")
SIZE = (256, 320)  # width, height: the trunk input's 4:5
VAL_SHARE = 0.1  # of each role's train-split photos, held out for the validation collages when there are any


def _photos(source: Catalog, split: str) -> list[Item]:
    return [it for it in source.split(split) if it.image is not None and Path(it.image).is_file()]


def _pools(items: list[Item], split: str, role_attribute: str) -> dict[str, list[Item]]:
    pools = {role: [it for it in items if it.attributes.get(role_attribute) in values] for role, values in ROLES.items()}
    missing = [r for r in ALWAYS if not pools[r]]
    if missing:
        raise VestisError(f"the {split} split has no photo for role(s) {missing} ({role_attribute} in "
                          f"{[ROLES[r] for r in missing]}); collages need a top, a bottom and shoes")
    return pools


def _held_out(pools: dict[str, list[Item]], seed: int, share: float) -> set[str]:
    """Ids of the train photos kept for validation collages: per role, the first `share` of a seeded shuffle (at
    least one, and at least one left for training when the role has two or more)."""
    held = set()
    for r, (role, pool) in enumerate(pools.items()):
        if not pool:
            continue
        n = min(max(1, round(share * len(pool))), max(1, len(pool) - 1))
        if role in ALWAYS and len(pool) < 2:
            raise VestisError(f"validation collages need two train-split photos of role {role!r} (one held out, one "
                              f"for training); the catalogue has {len(pool)}")
        order = np.random.default_rng([seed, 3, r]).permutation(len(pool))
        held.update(pool[j].id for j in order[:n])
    return held


def _paste(canvas: Image.Image, photo: Path, cell: tuple[int, int, int, int], rng: np.random.Generator):
    x0, y0, x1, y1 = cell
    with Image.open(photo) as im:
        im = im.convert("RGB")
        scale = min((x1 - x0) / im.width, (y1 - y0) / im.height) * float(rng.uniform(0.75, 1.0))
        w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
        im = im.resize((w, h), Image.BICUBIC)
    px = x0 + int(rng.integers(0, x1 - x0 - w + 1))
    py = y0 + int(rng.integers(0, y1 - y0 - h + 1))
    canvas.paste(im, (px, py))
    return (float(px), float(py), float(px + w), float(py + h))


def make_collages(source: Catalog, out: Path, n_train: int, n_eval: int, seed: int = 0, extra_share: float = 0.5,
                  role_attribute: str = ROLE_ATTRIBUTE, size: tuple[int, int] = SIZE, singles: int = 0,
                  n_val: int = 0, val_share: float = VAL_SHARE) -> Catalog:
    """Write n_train training, n_val validation and n_eval evaluation collages to out/images and out/catalog.jsonl
    (+ schema.json, the source's schema); return the collage catalogue."""
    if role_attribute not in source.schema:
        raise VestisError(f"collages need the attribute {role_attribute!r} to find tops, bottoms and shoes; the "
                          f"catalogue has {', '.join(source.schema.attributes)}")
    if n_train < 0 or n_eval < 0 or n_val < 0 or n_train + n_eval + n_val < 1:
        raise VestisError(f"ask for at least one collage (got {n_train} training, {n_val} validation, {n_eval} "
                          "evaluation)")
    if not 0 < val_share < 1:
        raise VestisError(f"val_share must be in (0, 1), got {val_share}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    w, h = size
    cells = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]
    items = []
    train_photos = _photos(source, "train")
    held = _held_out(_pools(train_photos, "train", role_attribute), seed, val_share) if n_val else set()
    sources = {"train": [it for it in train_photos if it.id not in held],
               "val": [it for it in train_photos if it.id in held]}
    prefix, stream = {"train": "c", "query": "q", "val": "v"}, {"train": 0, "query": 1, "val": 4}
    for split, n in (("train", n_train), ("query", n_eval), ("val", n_val)):
        if n == 0:
            continue
        pools = _pools(sources[split] if split in sources else _photos(source, split), split, role_attribute)
        rng = np.random.default_rng([seed, stream[split]])
        extras = [r for r in EXTRA if pools[r]]
        for j in range(n):
            roles = list(ALWAYS)
            if extras and rng.random() < extra_share:
                roles.append(extras[int(rng.integers(len(extras)))])
            canvas = Image.new("RGB", (w, h), (255, 255, 255))
            order = rng.permutation(len(cells))
            parts = []
            for role, c in zip(roles, order):
                it = pools[role][int(rng.integers(len(pools[role])))]
                box = _paste(canvas, Path(it.image), cells[c], rng)
                parts.append(Part(role, box, dict(it.attributes)))
            iid = f"{prefix[split]}{j:06d}"
            path = out / "images" / f"{iid}.jpg"
            canvas.save(path, "JPEG", quality=92)
            items.append(Item(id=iid, image=path, parts=tuple(parts), split=split,
                              box=(min(p.box[0] for p in parts), min(p.box[1] for p in parts),
                                   max(p.box[2] for p in parts), max(p.box[3] for p in parts))))
    if singles:
        photos = sources["train"]
        pick = np.random.default_rng([seed, 2]).permutation(len(photos))[:singles]
        items += [Item(id=f"p{photos[j].id}", image=Path(photos[j].image).resolve(),
                       attributes=dict(photos[j].attributes), split="train") for j in sorted(pick)]
    generic.write(Catalog(items, source.schema, name=out.name, source="collages"), out / "catalog.jsonl")
    return Catalog.load(out)
