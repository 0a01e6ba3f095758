"""Find the garment in a shopper's photo before encoding it: a cheap foreground box from the photo's border.

A packshot is a garment on a plain background; a phone photo is a garment on a bed, a floor or a hanger with
clutter around it. The border of the photo is mostly background, so pixels far (in colour) from every typical
border colour are foreground; the box around them, padded, is the crop. It runs on a 64-pixel thumbnail (about a
millisecond) and declines (None) where it finds no clear foreground, or one that fills the photo anyway, so it
never makes a photo worse by much. Whether it helps retrieval is measured, not assumed (README, consumer-to-shop).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]

THUMB = 64  # long side of the thumbnail the box is found on
RING = 0.06  # border ring width, as a share of each side
PAD = 0.06  # padding around the found box, as a share of its size


MIN_SIDE = 8  # the thumbnail's shortest side, in pixels


def thumbnail(img: Image.Image) -> np.ndarray:
    """(h, w, 3) uint8: the photo with its long side at THUMB pixels (each side at least MIN_SIDE), what both the
    studio test and the foreground box read; an upload's search makes it once. reducing_gap: a box-filter reduction
    by a whole factor first, then the bilinear resize (cheaper than the plain resize on a large photo)."""
    w, h = img.size
    scale = THUMB / max(w, h)
    size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
    return np.asarray(img.convert("RGB").resize(size, Image.BILINEAR, reducing_gap=2.0))


def _nearest_distance(pixels: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Each pixel's (..., 3) colour distance to its nearest reference colour (n, 3), by |p|^2 - 2 p.r + |r|^2: one
    matrix product instead of a (..., n, 3) array of differences."""
    d2 = (pixels * pixels).sum(-1)[..., None] - 2 * pixels @ refs.T + (refs * refs).sum(-1)
    return np.sqrt(np.maximum(d2.min(-1), 0.0))


def _ring(a: np.ndarray, rw: int, rh: int) -> np.ndarray:
    """(n, 3) pixels of the border ring: `rh` rows at the top and bottom, `rw` columns at the left and right."""
    return np.concatenate([a[:rh].reshape(-1, 3), a[-rh:].reshape(-1, 3), a[:, :rw].reshape(-1, 3),
                           a[:, -rw:].reshape(-1, 3)])


def foreground_box(img: Image.Image, pad: float = PAD, min_area: float = 0.04, max_area: float = 0.85,
                   thumb: np.ndarray | None = None) -> Box | None:
    """(x0, y0, x1, y1) in `img` pixels (x1 / y1 exclusive) of the foreground, or None where the photo has no clear
    foreground or the box would cover more than `max_area` of it (then the whole photo is the crop). `thumb`: the
    photo's `thumbnail`, where the caller has it."""
    w, h = img.size
    if w < 8 or h < 8:
        return None
    scale = THUMB / max(w, h)
    a = (thumbnail(img) if thumb is None else thumb).astype(np.float32)
    th, tw = a.shape[:2]
    ring = _ring(a, max(1, round(tw * RING)), max(1, round(th * RING)))
    # the background's colours: the ring pixels nearest its median colour (a garment touching the edge owns the
    # rest of the ring); a few of them, spread along the ring, since a textured bed sheet has more than one
    d0 = np.linalg.norm(ring - np.median(ring, 0), axis=1)
    bg = ring[d0 <= np.percentile(d0, 60)]
    refs = bg[np.linspace(0, len(bg) - 1, 12).astype(int)]
    dist = _nearest_distance(a, refs)
    bg_dist = _nearest_distance(bg, refs)
    thr = max(40.0, float(np.percentile(bg_dist, 95)) * 1.5)
    mask = dist > thr
    if mask.mean() < min_area:
        return None
    # rows / columns with a real share of foreground (stray pixels do not stretch the box)
    cols = np.flatnonzero(mask.mean(0) > 0.08)
    rows = np.flatnonzero(mask.mean(1) > 0.08)
    if len(cols) < 2 or len(rows) < 2:
        return None
    x0, x1, y0, y1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    px, py = (x1 - x0) * pad, (y1 - y0) * pad
    x0, y0 = max(0.0, x0 - px), max(0.0, y0 - py)
    x1, y1 = min(float(tw), x1 + px), min(float(th), y1 + py)
    if (x1 - x0) * (y1 - y0) > max_area * tw * th:
        return None
    box = (int(x0 / scale), int(y0 / scale), min(w, int(np.ceil(x1 / scale))), min(h, int(np.ceil(y1 / scale))))
    return box if box[2] - box[0] >= 8 and box[3] - box[1] >= 8 else None


STUDIO_WHITE = 225  # a border pixel with every channel at or above this is studio white
STUDIO_SHARE = 0.5  # a photo whose border ring is at least this share white is a packshot


def studio_background(img: Image.Image, thumb: np.ndarray | None = None) -> bool:
    """Whether the photo is a packshot: its border ring mostly studio white. Measured on 600 photos of each
    dataset (`benchmarks/studio_background.py`): 98.7 % of fashion-product-images' packshots, 0.8 % of
    clothing-dataset-small's shopper photos. `thumb`: the photo's `thumbnail`, where the caller has it."""
    if min(img.size) < 4:
        return False
    a = thumbnail(img) if thumb is None else thumb
    return bool((_ring(a, 2, 2) >= STUDIO_WHITE).all(1).mean() >= STUDIO_SHARE)


def crop_to_foreground(img: Image.Image, thumb: np.ndarray | None = None) -> tuple[Image.Image, Box | None]:
    """The photo cut to its foreground box (the photo itself where there is none), and the box."""
    box = foreground_box(img, thumb=thumb)
    return (img.crop(box) if box is not None else img), box
