"""A labelled grid of catalogue images, to check the labels (and optionally the boxes) by eye."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from vestis.catalog.catalog import Catalog
from vestis.catalog.item import Item
from vestis.images import load_rgb

TILE = (160, 200)
TEXT_LINES = 5
LINE_HEIGHT = 12
COLUMNS = 8
REGION_COLOURS = {"sleeve": (230, 40, 40), "neckline": (40, 90, 230), "length": (240, 150, 0)}


def _caption(it: Item) -> list[str]:
    if it.parts:
        lines = ["outfit"]
        for p in it.parts:
            a = p.attributes
            lines += [f"{p.name}: {a.get('colour', '?')} {a.get('category', '?')}", f"  {a.get('pattern', '?')}"]
        return lines
    a = it.attributes
    details = [a[k] for k in ("sleeve", "neckline") if k in a]
    rest = [a[k] for k in ("length", "fit") if k in a]
    return [a.get("category", "?"), a.get("colour", "?"), a.get("pattern", "?"), " / ".join(details), " / ".join(rest)]


def _pick(catalog: Catalog, n: int) -> list[Item]:
    """First view of each instance, taken round-robin over categories (outfits as one) for variety."""
    seen, queues = set(), {}
    for it in catalog:
        key = it.instance_id or it.id
        if key in seen:
            continue
        seen.add(key)
        queues.setdefault("outfit" if it.parts else it.attributes.get("category", "?"), []).append(it)
    picked: list[Item] = []
    while len(picked) < n and any(queues.values()):
        for q in queues.values():
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def make_contact_sheet(catalog: Catalog, path: str | Path, n: int = 48, boxes: bool = False) -> Path:
    """Write a grid of up to n images with their labels under each; with boxes=True, also outline the
    garment box (green), part boxes (cyan) and the sleeve / neckline / length regions."""
    items = _pick(catalog, n)
    font = ImageFont.load_default(size=11)
    cell_w, cell_h = TILE[0] + 4, TILE[1] + TEXT_LINES * LINE_HEIGHT + 6
    rows = max(1, -(-len(items) // COLUMNS))
    sheet = Image.new("RGB", (COLUMNS * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, it in enumerate(items):
        x, y = (i % COLUMNS) * cell_w + 2, (i // COLUMNS) * cell_h + 2
        im = load_rgb(it.image)
        scale = min(TILE[0] / im.width, TILE[1] / im.height)
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.Resampling.LANCZOS)
        sheet.paste(im, (x, y))
        if boxes:
            outlines = [(it.box, (0, 200, 0))] if it.box else []
            outlines += [(p.box, (0, 200, 220)) for p in it.parts]
            outlines += [(b, REGION_COLOURS[a]) for a, b in it.regions.items() if a in REGION_COLOURS]
            for box, colour in outlines:
                draw.rectangle([x + box[0] * scale, y + box[1] * scale, x + box[2] * scale - 1, y + box[3] * scale - 1],
                               outline=colour)
        for j, line in enumerate(_caption(it)[:TEXT_LINES]):
            draw.text((x + 2, y + TILE[1] + 2 + j * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
    path = Path(path)
    sheet.save(path)
    return path
