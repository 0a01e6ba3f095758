"""Scene: garments with their fabric and shading, on a figure or laid flat, over a background, with nuisance.

A view is drawn at SUPERSAMPLE times the output size through one mapping, body units -> pixels
(framing, then a random homography: rotation, scale, shift, perspective), downsampled with LANCZOS
(the anti-aliasing), composited over a studio or street background, relit, noised and left to the
JPEG encoder at a random quality. Since everything, fabric included, is drawn through the mapping
rather than resampled afterwards, boxes are exact: a label map drawn alongside gives each garment's
visible box (occlusion and clipping included), and attribute regions are body-unit points pushed
through the same mapping.

Scenes (`SCENES`): "default" frames the garment to fill 74-96 % of the picture over a studio or street
background. "cluttered" is for measuring localisation (FashionSearchNet against its w/o Loc. ablation): the
garment fills 41-72 % of the picture, always over a street scene, beside one or two unlabelled distractor
garments of any category, colour and pattern, laid flat behind it and partly out of frame. A whole-picture
descriptor then mixes the distractors' colours and patterns into the garment's; a box around the garment
does not. The distractors are drawn into the background, so the label map, the boxes and the regions stay
those of the garment alone, and their random draws come from their own stream, so a "default" view is the
same as before the option existed.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from vestis.catalog.item import Box
from vestis.catalog.synthetic.garments import (ANKLE_Y, ARM_LENGTH, HEAD, NECK_Y, ROLES, Garment, Pose, Rgb, Shapes,
                                               arm_points, ellipse, garment_shapes, leg_centre, mirror,
                                               sample_garment, symmetric)
from vestis.catalog.synthetic.patterns import Fabric, sample_fabric

SUPERSAMPLE = 2
WORN_SHARE = 0.6        # single garments on a figure; the rest are flat product shots
STUDIO_SHARE = 0.5      # plain studio backgrounds; the rest are street scenes
SCENES = ("default", "cluttered")
CLUTTER_FILL = (0.55, 0.75)     # "cluttered": the garment's framing scale, times the default fill
CLUTTER_SCALE = (0.5, 0.75)     # a distractor's size against the garment's
CLUTTER_COUNT = (1, 2)
TOPS = tuple(c for c, r in ROLES.items() if r == "top")
BOTTOMS = tuple(c for c, r in ROLES.items() if r == "bottom")
SKIN: tuple[Rgb, ...] = ((246, 220, 198), (236, 194, 164), (216, 168, 130), (186, 134, 96), (142, 96, 64),
                         (100, 66, 44))
HAIR: tuple[Rgb, ...] = ((28, 22, 20), (66, 42, 28), (118, 78, 44), (206, 168, 98), (152, 62, 30), (170, 168, 164))
SHOES: tuple[Rgb, ...] = ((30, 30, 32), (90, 56, 34), (238, 238, 234), (150, 30, 36))
FIGURE, FIRST_GARMENT = 1, 2  # label map values
# Shading: relief FLAT is lit fabric; gain runs from SHADOW (deep folds, silhouette edges) to 1 + LIGHT_BOOST.
FLAT, SHADOW, LIGHT_BOOST, RELIEF_BLUR = 180, 0.35, 0.08, 1.8
GAIN = (SHADOW + (1.0 + LIGHT_BOOST - SHADOW) * np.arange(256) / FLAT).astype(np.float32)  # relief -> brightness


@dataclass(frozen=True)
class Look:
    """What one instance wears: (garment, fabric) pairs in drawing order (bottom before top)."""

    garments: tuple[tuple[Garment, Fabric], ...]
    outfit: bool


@dataclass
class Rendered:
    image: Image.Image
    jpeg_quality: int
    boxes: list[Box | None]           # each garment's visible box, output pixels
    regions: list[dict[str, Box]]     # each garment's attribute -> region box


def sample_look(rng: np.random.Generator, outfit: bool) -> Look:
    if outfit:
        bottom = sample_garment(rng, BOTTOMS)
        top = sample_garment(rng, TOPS, avoid_colour=bottom.get("colour"))
        garments = (bottom, top)
    else:
        garments = (sample_garment(rng),)
    return Look(tuple((g, sample_fabric(g.get("pattern"), g.rgb, rng)) for g in garments), outfit)


# --- geometry --------------------------------------------------------------------------------------
class Mapping:
    """Body units -> supersampled canvas pixels: scale k about an origin, then a homography (the camera
    jitter). Everything is drawn through it, so nothing is resampled and boxes stay exact."""

    def __init__(self, k: float, origin: tuple[float, float], homography: np.ndarray):
        self.matrix = homography @ np.array([[k, 0, origin[0]], [0, k, origin[1]], [0, 0, 1]])
        self.inverse = np.linalg.inv(self.matrix)
        self.k = k * math.sqrt(abs(np.linalg.det(homography[:2, :2])))  # pixels per body unit, roughly

    def points(self, pts) -> np.ndarray:
        a = np.asarray(pts, float).reshape(-1, 2)
        q = a @ self.matrix[:2, :2].T + self.matrix[:2, 2]
        return q / (a @ self.matrix[2, :2] + self.matrix[2, 2])[:, None]

    def canvas(self, pts) -> list[tuple[float, float]]:
        return [(float(x), float(y)) for x, y in self.points(pts)]

    def body(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (a, b, c), (d, e, f), (g, h, i) = self.inverse.tolist()  # python floats keep float32 arrays float32
        w = g * x + h * y + i
        return (a * x + b * y + c) / w, (d * x + e * y + f) / w


def _homography(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Small rotation, scale, shift and perspective about the canvas centre."""
    a, s = math.radians(rng.uniform(-6, 6)), rng.uniform(0.93, 1.05)
    px, py = rng.uniform(-1, 1, 2) * 0.22 / max(w, h)
    tx, ty = rng.uniform(-0.04, 0.04) * w, rng.uniform(-0.04, 0.04) * h
    centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    rot = np.array([[s * math.cos(a), -s * math.sin(a), 0], [s * math.sin(a), s * math.cos(a), 0], [0, 0, 1]])
    persp = np.array([[1, 0, 0], [0, 1, 0], [px, py, 1]])
    back = np.array([[1, 0, w / 2 + tx], [0, 1, h / 2 + ty], [0, 0, 1]])
    return back @ persp @ rot @ centre


def _frame(look: Look, shapes: list[Shapes], pose: Pose) -> tuple[float, float, float, float]:
    """The body-unit box a view is composed around: the garments, plus some of the figure when worn."""
    ext = np.array([s.extent() for s in shapes])
    x0, y0, x1, y1 = ext[:, 0].min() - 1.5, ext[:, 1].min() - 1.5, ext[:, 2].max() + 1.5, ext[:, 3].max() + 1.5
    if not pose.worn:
        return x0, y0, x1, y1
    covers_top = any(ROLES[g.category] != "bottom" for g, _ in look.garments)
    y0 = -1.5 if covers_top else min(y0, 32.0)
    return min(x0, -13.0), y0, max(x1, 13.0), min(y1 + 7.0, 100.0)


# --- drawing ---------------------------------------------------------------------------------------
def _draw_figure(draw: ImageDraw.ImageDraw, label: ImageDraw.ImageDraw, m: Mapping, pose: Pose, skin: Rgb,
                 shoes: Rgb, hair: Rgb, long_hair: bool) -> None:
    """The body under the garments: hair behind the shoulders, legs, shoes, torso, arms, neck."""
    parts: list[tuple[list, Rgb]] = []
    if long_hair:
        parts.append((symmetric([(0.0, 1.0), (5.4, 2.0), (6.0, 12.0), (5.8, 20.0), (0.0, 20.0)]), hair))
    c = lambda y: leg_centre(y, pose.stance)  # noqa: E731 - a short local alias
    leg = [(8.7, 48.0), (c(72.0) + 2.8, 72.0), (c(92.0) + 1.8, 92.0), (c(92.0) - 1.8, 92.0), (c(72.0) - 2.6, 72.0),
           (0.2, 58.0)]
    shoe = [(c(ANKLE_Y) + 2.6 * math.cos(t), ANKLE_Y + 1.3 + 1.5 * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 12, endpoint=False)]
    parts += [(leg, skin), (mirror(leg), skin), (shoe, shoes), (mirror(shoe), shoes)]
    parts.append((symmetric([(0.0, 14.5), (2.4, 14.5), (9.6, 17.4), (10.8, 20.0), (9.0, 27.0), (7.5, 37.0),
                             (9.3, 46.0), (9.0, 52.0), (0.0, 59.0)]), skin))
    for side, angle in ((1, pose.arms[1]), (-1, pose.arms[0])):
        arm = [arm_points(angle, 0.0, 2.8), arm_points(angle, ARM_LENGTH, 1.7), arm_points(angle, ARM_LENGTH, -1.7),
               arm_points(angle, 0.0, -2.8)]
        hand = [arm_points(angle, ARM_LENGTH + 2.2 + 2.4 * math.sin(t), 2.0 * math.cos(t))
                for t in np.linspace(0, 2 * math.pi, 10, endpoint=False)]
        parts += [(arm if side > 0 else mirror(arm), skin), (hand if side > 0 else mirror(hand), skin)]
    parts.append((symmetric([(0.0, NECK_Y[0]), (2.2, NECK_Y[0]), (2.3, NECK_Y[1]), (0.0, NECK_Y[1])]), skin))
    for poly, colour in parts:
        draw.polygon(m.canvas(poly), fill=colour)
        label.polygon(m.canvas(poly), fill=FIGURE)


def _draw_head(draw: ImageDraw.ImageDraw, label: ImageDraw.ImageDraw, m: Mapping, skin: Rgb, hair: Rgb,
               bun: bool) -> None:
    cx, cy, rx, ry = HEAD
    hair_line = cy - 0.6
    parts = [(ellipse(cx, cy, rx, ry), skin),
             ([p for p in ellipse(cx, hair_line, rx + 0.3, ry + 0.2) if p[1] <= hair_line], hair)]  # a cap of hair
    if bun:
        parts.append((ellipse(cx, -1.2, 2.2, 2.0, 12), hair))
    for poly, colour in parts:
        draw.polygon(m.canvas(poly), fill=colour)
        label.polygon(m.canvas(poly), fill=FIGURE)


def _draw_garment(fg: Image.Image, label: Image.Image, value: int, s: Shapes, fabric: Fabric, m: Mapping,
                  light: tuple[float, float]) -> None:
    """Fabric through the garment's mask, details on top, then soft shading (edges, folds, light)."""
    k = m.k
    # Map every point of the garment at once (one matrix product instead of one per polyline).
    groups = (list(s.fill) + [p for p, _ in s.inner] + [p for p, _, _ in s.lines] + [[c] for c, _, _ in s.dots]
              + [p for p, _, _ in s.folds])
    flat = m.points([q for p in groups for q in p])
    outline = flat[:sum(len(p) for p in groups[:len(s.fill) + len(s.inner)])]  # what the mask covers
    x0, y0 = (max(int(v) - 2, 0) for v in np.floor(outline.min(0)))
    x1, y1 = (min(int(v) + 2, size) for v, size in zip(np.ceil(outline.max(0)), fg.size))
    if x1 <= x0 or y1 <= y0:
        return
    local = (flat - (x0, y0)).tolist()
    polys, start = [], 0
    for p in groups:
        polys.append([tuple(q) for q in local[start:start + len(p)]])
        start += len(p)
    ends = np.cumsum([len(s.fill), len(s.inner), len(s.lines), len(s.dots)])
    fills, inners, lines, dots, folds = (polys[a:b] for a, b in zip([0, *ends], [*ends, len(polys)]))

    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    relief = Image.new("L", mask.size, 0)  # FLAT = lit fabric; lower = in shadow (folds, near the silhouette)
    md, rd = ImageDraw.Draw(mask), ImageDraw.Draw(relief)
    for p in fills + inners:
        md.polygon(p, fill=255)
        rd.polygon(p, fill=FLAT)
    cloth = fabric.render((x0, y0, x1, y1), m.body, m.points)
    draw = ImageDraw.Draw(cloth)
    for p, (_, colour) in zip(inners, s.inner):
        draw.polygon(p, fill=colour)
    for p, (_, width, colour) in zip(lines, s.lines):
        draw.line(p, fill=colour, width=max(1, round(width * k)), joint="curve")
    for ((px, py),), (_, r, colour) in zip(dots, s.dots):
        draw.ellipse((px - r * k, py - r * k, px + r * k, py + r * k), fill=colour, outline=tuple(v // 2 for v in colour))
    for p, (_, width, delta) in zip(folds, s.folds):
        rd.line(p, fill=FLAT + delta, width=max(1, round(width * k)), joint="curve")
    # Shading is smooth: blur at half resolution, which is cheaper.
    relief = relief.reduce(2).filter(ImageFilter.GaussianBlur(RELIEF_BLUR * k / 2)).resize(mask.size, Image.Resampling.BILINEAR)
    relief = np.asarray(relief)
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / fg.width - 0.5
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / fg.height - 0.5
    gain = GAIN[relief] * (1.0 + light[0] * xs[None, :] + light[1] * ys[:, None])
    shaded = np.asarray(cloth, np.float32) * gain[..., None]
    fg.paste(Image.fromarray(np.minimum(shaded, 255, out=shaded).astype(np.uint8), "RGB"), (x0, y0), mask)
    label.paste(value, (x0, y0, x1, y1), mask)


# --- backgrounds and camera ------------------------------------------------------------------------
def _studio(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """White or light grey sweep: a wall fading into a slightly darker floor."""
    wall = rng.uniform(212, 252) + rng.uniform(-4, 4, 3)
    floor = wall * rng.uniform(0.88, 0.97)
    horizon = rng.uniform(0.7, 0.95) * h
    t = np.clip((np.arange(h) - horizon) / (0.08 * h) + 0.5, 0, 1)[:, None]
    column = (1 - t) * wall * (1 + 0.04 * (np.arange(h)[:, None] / h - 0.5)) + t * floor
    return np.broadcast_to(column[:, None, :], (h, w, 3)).astype(np.float32)


def _street(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A blurred, cluttered colour scene: gradient, buildings, windows, poles, blobs, ground, texture."""
    hue = rng.uniform(0, 1, 2)
    a, b = (np.array(_hsv(hh, rng.uniform(0.15, 0.6), rng.uniform(0.35, 0.9)), np.float32) for hh in hue)
    angle = rng.uniform(0, 2 * math.pi)
    xs, ys = np.arange(w, dtype=np.float32) / w - 0.5, np.arange(h, dtype=np.float32)[:, None] / h - 0.5
    t = np.clip(xs * math.cos(angle) + ys * math.sin(angle) + 0.5, 0, 1)[..., None]
    im = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(6, 16))):
        colour = _hsv(rng.uniform(), rng.uniform(0.05, 0.7), rng.uniform(0.2, 0.95))
        kind = rng.integers(4)
        x, y = rng.uniform(-0.1, 1.0, 2) * (w, h)
        if kind == 0:  # a building with windows
            bw, bh = rng.uniform(0.15, 0.45) * w, rng.uniform(0.3, 0.9) * h
            draw.rectangle((x, h - bh, x + bw, h), fill=colour)
            win = _hsv(rng.uniform(), 0.2, rng.uniform(0.3, 0.95))
            for wx in np.arange(x + 4, x + bw - 6, 10):
                for wy in np.arange(h - bh + 5, h - 8, 12):
                    draw.rectangle((wx, wy, wx + 5, wy + 6), fill=win)
        elif kind == 1:
            r = rng.uniform(0.04, 0.2) * w
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        elif kind == 2:  # pole / sign
            draw.line((x, 0, x + rng.uniform(-8, 8), h), fill=colour, width=int(rng.integers(2, 6)))
        else:
            pts = rng.uniform(-0.1, 1.1, (int(rng.integers(3, 6)), 2)) * (w, h)
            draw.polygon([tuple(p) for p in pts], fill=colour)
    ground = rng.uniform(0.75, 0.95) * h
    draw.rectangle((0, ground, w, h), fill=_hsv(rng.uniform(), rng.uniform(0, 0.3), rng.uniform(0.25, 0.7)))
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 2.0)))  # shallow depth of field
    texture = Image.fromarray(rng.normal(1.0, 0.06, (h // 8 + 1, w // 8 + 1)).astype(np.float32), "F")
    texture = np.asarray(texture.resize((w, h), Image.Resampling.BILINEAR))
    return np.asarray(im, np.float32) * texture[..., None]


def _hsv(h: float, s: float, v: float) -> Rgb:
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))


def _box(mask: np.ndarray, scale: float) -> Box | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return None
    return (cols[0] / scale, rows[0] / scale, (cols[-1] + 1) / scale, (rows[-1] + 1) / scale)


def _points_box(pts: np.ndarray, w: int, h: int) -> Box | None:
    x0, y0 = np.clip(pts.min(0), 0, (w, h))
    x1, y1 = np.clip(pts.max(0), 0, (w, h))
    return (float(x0), float(y0), float(x1), float(y1)) if x1 - x0 >= 1 and y1 - y0 >= 1 else None


def _downsample(fg: Image.Image, label: Image.Image, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The supersampled RGBA drawing at output size, premultiplied (h, w, 3), and its alpha (h, w, 1) in [0, 1].
    Only the part the label map covers is resampled (the rest is empty, and LANCZOS is the costliest step)."""
    small = np.zeros((h, w, 4), np.float32)
    bbox = label.getbbox()
    if bbox is not None:
        margin = 4 * SUPERSAMPLE  # beyond the LANCZOS kernel's reach
        x0, y0 = (max(0, v // SUPERSAMPLE - margin) for v in bbox[:2])
        x1, y1 = (min(size, -(-v // SUPERSAMPLE) + margin) for v, size in zip(bbox[2:], (w, h)))
        crop = fg.crop(tuple(v * SUPERSAMPLE for v in (x0, y0, x1, y1))).convert("RGBa")
        crop = crop.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
        small[y0:y1, x0:x1] = np.asarray(crop, np.float32)
    return small[..., :3], small[..., 3:] / 255


def _draw_clutter(bg: np.ndarray, rng: np.random.Generator, k: float, subject_x: float,
                  light: tuple[float, float]) -> np.ndarray:
    """"cluttered" scenes: one or two unlabelled garments laid flat on the background, on the side away from
    the subject (its horizontal position `subject_x` in [0, 1]), partly out of frame. `k`: the subject's scale."""
    h, w = bg.shape[:2]
    cw, ch = w * SUPERSAMPLE, h * SUPERSAMPLE
    for _ in range(int(rng.integers(CLUTTER_COUNT[0], CLUTTER_COUNT[1] + 1))):
        garment = sample_garment(rng)
        fabric = sample_fabric(garment.get("pattern"), garment.rgb, rng)
        arms = float(rng.uniform(16, 34))  # laid flat: both sleeves spread alike
        shapes = garment_shapes(garment, Pose(arms=(arms, arms), stance=1.2, worn=False))
        x0, y0, x1, y1 = shapes.extent()
        kd = k * rng.uniform(*CLUTTER_SCALE)
        side = rng.uniform(0.72, 1.05) if subject_x < 0.5 else rng.uniform(-0.05, 0.28)
        cx, cy = side * cw, rng.uniform(0.25, 0.75) * ch
        m = Mapping(kd, (cx - kd * (x0 + x1) / 2, cy - kd * (y0 + y1) / 2), _homography(rng, cw, ch))
        fg = Image.new("RGBA", (cw, ch), (0, 0, 0, 0))
        label = Image.new("L", (cw, ch), 0)
        _draw_garment(fg, label, 1, shapes, fabric, m, light)
        small, alpha = _downsample(fg, label, w, h)
        bg = bg * (1 - alpha) + small
    return bg


# --- a view ----------------------------------------------------------------------------------------
def render(look: Look, rng: np.random.Generator, size: tuple[int, int], scene: str = "default") -> Rendered:
    """One view of a look; every random choice comes from `rng`, in a fixed order ("cluttered": the scene's own
    draws come from a generator seeded by `rng` after its other draws, so the rest of the view stays put)."""
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
    w, h = size
    cw, ch = w * SUPERSAMPLE, h * SUPERSAMPLE
    worn = look.outfit or rng.random() < WORN_SHARE
    spread = (rng.uniform(9, 24, 2) if worn else np.full(2, rng.uniform(16, 34)) + rng.uniform(-2, 2, 2))
    pose = Pose(arms=(float(spread[0]), float(spread[1])), stance=float(rng.uniform(0.0, 2.2) if worn else 1.2),
                worn=worn)
    shapes = [garment_shapes(g, pose) for g, _ in look.garments]

    fx0, fy0, fx1, fy1 = _frame(look, shapes, pose)
    fill = rng.uniform(0.74, 0.96) if worn else rng.uniform(0.75, 0.95)
    clutter = np.random.default_rng(rng.integers(1 << 63)) if scene == "cluttered" else None
    if clutter is not None:
        fill *= clutter.uniform(*CLUTTER_FILL)
    k = float(fill * min(cw / (fx1 - fx0), ch / (fy1 - fy0)))
    subject_x = rng.uniform(0.15, 0.85)
    ox = (cw - k * (fx1 - fx0)) * subject_x - k * fx0
    oy = (ch - k * (fy1 - fy0)) * rng.uniform(0.15, 0.85) - k * fy0
    m = Mapping(k, (float(ox), float(oy)), _homography(rng, cw, ch))

    fg = Image.new("RGBA", (cw, ch), (0, 0, 0, 0))
    label = Image.new("L", (cw, ch), 0)  # which figure / garment each canvas pixel shows; 0 = background
    draw, ldraw = ImageDraw.Draw(fg), ImageDraw.Draw(label)
    skin = SKIN[rng.integers(len(SKIN))]
    hair = HAIR[rng.integers(len(HAIR))]
    hooded = any(g.get("neckline") == "hood" for g, _ in look.garments)
    style = rng.integers(3)  # short, long, bun
    if worn:
        _draw_figure(draw, ldraw, m, pose, skin, SHOES[rng.integers(len(SHOES))], hair, style == 1 and not hooded)
    light = tuple(rng.uniform(-0.3, 0.3, 2))
    for i, ((_, fabric), s) in enumerate(zip(look.garments, shapes)):
        _draw_garment(fg, label, FIRST_GARMENT + i, s, fabric, m, light)
    if worn:
        _draw_head(draw, ldraw, m, skin, hair, style == 2 and not hooded)

    # Downsample (the anti-aliasing) with premultiplied alpha, and composite.
    small, alpha = _downsample(fg, label, w, h)
    studio = rng.random() < STUDIO_SHARE and clutter is None
    bg = _studio(rng, w, h) if studio else _street(rng, w, h)
    if clutter is not None:
        bg = _draw_clutter(bg, clutter, k, subject_x, light)
    if studio:  # soft contact shadow, away from the light
        a = Image.fromarray((alpha[..., 0] * 255).astype(np.uint8), "L").reduce(2)
        a = a.filter(ImageFilter.GaussianBlur(1.5)).resize((w, h), Image.Resampling.BILINEAR)
        shadow = Image.new("L", (w, h), 0)
        shadow.paste(a, (int(rng.integers(-3, 4)), int(rng.integers(1, 5))))
        bg = bg * (1 - 0.22 * np.asarray(shadow, np.float32)[..., None] / 255)
    out = bg * (1 - alpha) + small

    # Sensor noise (uniform: as good here as Gaussian and much cheaper), then exposure, contrast and
    # white balance as one lookup table.
    out += (rng.random(out.shape, dtype=np.float32) - 0.5) * rng.uniform(0, 10)
    image = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")
    contrast, brightness, balance = rng.uniform(0.85, 1.15), rng.uniform(-18, 18), rng.uniform(0.96, 1.04, 3)
    levels = (np.arange(256) - 128) * contrast + 128 + brightness
    image = image.point(np.concatenate([np.clip(levels * b + 0.5, 0, 255) for b in balance]).astype(np.uint8).tolist())

    lab = np.asarray(label)
    boxes = [_box(lab == FIRST_GARMENT + i, SUPERSAMPLE) for i in range(len(shapes))]
    regions = []
    for (g, _), s, box in zip(look.garments, shapes, boxes):
        reg = {}
        for attribute in g.attributes:
            r = _points_box(m.points(s.regions[attribute]) / SUPERSAMPLE, w, h) if attribute in s.regions else box
            if r is not None:
                reg[attribute] = r
        regions.append(reg)
    return Rendered(image, int(rng.integers(60, 96)), boxes, regions)
