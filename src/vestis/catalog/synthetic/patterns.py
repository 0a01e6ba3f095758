"""Fabric: a garment's pattern and its colours, drawn in body units so it moves and scales with the garment.

The garment's own colour always covers most of the fabric, so its colour label stays right whatever
the pattern. A fabric is sampled once per garment, so every view of a garment shows the same print.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vestis.catalog.synthetic.garments import Rgb, tone

# Second colours for stripes, dots and checks; petal colours for florals.
ACCENTS: tuple[Rgb, ...] = ((246, 246, 242), (26, 26, 30), (30, 40, 92), (205, 32, 38), (245, 208, 40),
                            (218, 198, 160), (120, 170, 230))
PETALS: tuple[Rgb, ...] = ((250, 250, 246), (250, 170, 200), (222, 40, 60), (250, 215, 60), (150, 190, 245),
                           (160, 95, 205), (246, 140, 50))
LEAF: Rgb = (52, 130, 62)


def _lum(c: Rgb) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _distance(a: Rgb, b: Rgb) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def _contrasting(base: Rgb, choices: tuple[Rgb, ...], rng: np.random.Generator, k: int = 1) -> list[Rgb]:
    """k colours from `choices` that stand out against `base` (in brightness, or clearly in hue), at random;
    where too few do, the most contrasting of the rest make up the number."""
    score = [max(abs(_lum(c) - _lum(base)) / 70, _distance(c, base) / 190) for c in choices]
    ok = [choices[i] for i in rng.permutation(len(choices)) if score[i] > 1]
    rest = [choices[i] for i in np.argsort(score)[::-1] if score[i] <= 1]
    return (ok + rest)[:k]


@dataclass(frozen=True)
class Fabric:
    pattern: str
    base: Rgb
    second: Rgb = (246, 246, 242)
    third: Rgb = (246, 246, 242)
    period: float = 5.0   # body units between repeats
    share: float = 0.3    # stripes / check bands: share of the period; dots: radius / period
    windowpane: bool = False  # check: thin lines instead of gingham bands
    seed: int = 0         # floral layout

    def render(self, box: tuple[int, int, int, int], to_body: Callable, to_canvas: Callable) -> Image.Image:
        """The fabric over canvas pixels box=(x0, y0, x1, y1). `to_body(x, y)` maps canvas pixel
        coordinates (broadcastable arrays) to body units; `to_canvas` maps (N, 2) body points back."""
        x0, y0, x1, y1 = box
        if self.pattern == "solid":
            return Image.new("RGB", (x1 - x0, y1 - y0), self.base)
        if self.pattern == "floral":
            return self._floral(box, to_canvas)
        xs, ys = np.arange(x0, x1, dtype=np.float32) + 0.5, np.arange(y0, y1, dtype=np.float32) + 0.5
        u, v = to_body(xs[None, :], ys[:, None])
        palette = np.array([self.base, self.second, self.third], np.uint8)
        p = self.period
        if self.pattern == "horizontal stripes":
            index = (v / p) % 1.0 < self.share
        elif self.pattern == "vertical stripes":
            index = (u / p) % 1.0 < self.share
        elif self.pattern == "check":
            rows, cols = (v / p) % 1.0 < self.share, (u / p) % 1.0 < self.share
            if self.windowpane:
                index = rows | cols
            else:  # gingham: one band -> the mixed colour (third), both -> the second colour
                index = np.where(rows & cols, 1, np.where(rows ^ cols, 2, 0))
        elif self.pattern == "polka dots":
            def near(uu, vv):  # squared distance to the nearest point of a square lattice
                return (((uu / p) % 1.0 - 0.5) * p) ** 2 + (((vv / p) % 1.0 - 0.5) * p) ** 2
            index = np.minimum(near(u, v), near(u + p / 2, v + p / 2)) < (self.share * p) ** 2  # rows offset
        else:
            raise ValueError(f"unknown pattern {self.pattern!r}")
        return Image.fromarray(palette[index.astype(np.uint8)], "RGB")

    def _floral(self, box, to_canvas) -> Image.Image:
        """Five-petal flowers with a centre and a leaf, on a jittered grid fixed in body units."""
        x0, y0, x1, y1 = box
        im = Image.new("RGB", (x1 - x0, y1 - y0), self.base)
        draw = ImageDraw.Draw(im)
        rng = np.random.default_rng(self.seed)  # the same flowers in every view
        p = self.period
        gy, gx = np.mgrid[-6:104:p, -40:40:p]
        gx = gx + (np.arange(gx.shape[0])[:, None] % 2) * p / 2
        n = gx.size
        centre = np.c_[gx.ravel(), gy.ravel()] + rng.uniform(-0.3, 0.3, (n, 2)) * p
        radius = rng.uniform(0.26, 0.36, n) * p
        turn = rng.uniform(0, 2 * math.pi, n)
        colour = rng.integers(0, 2, n)
        leaf = rng.uniform(0, 2 * math.pi, n)
        c = to_canvas(centre) - (x0, y0)
        r = np.linalg.norm(to_canvas(centre + np.c_[radius, np.zeros(n)]) - (x0, y0) - c, axis=1)
        inside = (c > -2 * r[:, None]) & (c < np.array([x1 - x0, y1 - y0]) + 2 * r[:, None])
        petals = (self.second, self.third)
        for i in np.flatnonzero(inside.all(1)):
            (x, y), rr, t = c[i], r[i], turn[i]
            cos, sin = math.cos(leaf[i]), math.sin(leaf[i])
            # A leaf: a thin rhombus pointing away from the flower, (along, across) in flower radii.
            draw.polygon([(x + rr * (a * cos - b * sin), y + rr * (a * sin + b * cos))
                          for a, b in ((0.6, 0.0), (1.25, 0.35), (1.9, 0.0), (1.25, -0.35))], fill=LEAF)
            pr = 0.42 * rr
            for j in range(5):
                a = t + j * 2 * math.pi / 5
                px, py = x + 0.55 * rr * math.cos(a), y + 0.55 * rr * math.sin(a)
                draw.ellipse((px - pr, py - pr, px + pr, py + pr), fill=petals[colour[i]])
            cr = 0.26 * rr
            draw.ellipse((x - cr, y - cr, x + cr, y + cr), fill=(236, 190, 40) if colour[i] == 0 else (110, 60, 30))
        return im


def sample_fabric(pattern: str, base: Rgb, rng: np.random.Generator) -> Fabric:
    if pattern == "solid":
        return Fabric(pattern, base)
    if pattern in ("horizontal stripes", "vertical stripes"):
        (second,) = _contrasting(base, ACCENTS, rng)
        return Fabric(pattern, base, second, period=float(rng.uniform(3.0, 5.5)), share=float(rng.uniform(0.28, 0.42)))
    if pattern == "polka dots":
        (second,) = _contrasting(base, ACCENTS, rng)
        return Fabric(pattern, base, second, period=float(rng.uniform(3.6, 6.0)), share=float(rng.uniform(0.15, 0.21)))
    if pattern == "check":
        if rng.random() < 0.5:
            (second,) = _contrasting(base, ACCENTS, rng)
            return Fabric(pattern, base, second, period=float(rng.uniform(3.5, 6.0)), share=float(rng.uniform(0.09, 0.14)),
                          windowpane=True)
        # Gingham in shades of the garment's own colour, so the colour name still holds.
        second = tone(base, 0.35) if _lum(base) > 60 else tone(base, 1.0, 120)
        mixed = tuple((a + b) // 2 for a, b in zip(base, second))
        return Fabric(pattern, base, second, mixed, period=float(rng.uniform(3.0, 5.0)), share=float(rng.uniform(0.24, 0.32)))
    if pattern == "floral":
        first, second = _contrasting(base, PETALS, rng, k=2)
        return Fabric(pattern, base, first, second, period=float(rng.uniform(5.5, 8.0)), seed=int(rng.integers(2 ** 31)))
    raise ValueError(f"unknown pattern {pattern!r}")
