"""Garment vocabulary and geometry: what a garment is (its labels) and its outline in body units.

Body units: a standing figure 100 units tall, x = 0 on its centre line (x grows to the picture's
right), y = 0 at the top of the head, growing downwards. Everything here is pure geometry in those
units; `scene.py` maps it to pixels, draws it and jitters it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

Point = tuple[float, float]
Poly = list[Point]
Rgb = tuple[int, int, int]

# The schema, in a fixed order (never frequency order): model heads and saved indexes index into it.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "category": ("t-shirt", "shirt", "tank top", "sweater", "hoodie", "jacket", "dress", "skirt", "trousers", "shorts"),
    "colour": ("black", "white", "grey", "navy blue", "blue", "red", "green", "yellow", "pink", "purple", "brown",
               "beige", "orange", "olive"),
    "pattern": ("solid", "horizontal stripes", "vertical stripes", "polka dots", "check", "floral"),
    "sleeve": ("sleeveless", "short", "elbow", "long"),
    "neckline": ("crew", "v-neck", "collar", "turtleneck", "hood", "lapel"),
    "length": ("mini", "knee", "midi", "maxi"),
    "fit": ("slim", "regular", "loose"),
}

COLOURS: dict[str, Rgb] = {
    "black": (28, 28, 30), "white": (244, 244, 240), "grey": (132, 132, 134), "navy blue": (30, 40, 92),
    "blue": (40, 105, 205), "red": (205, 32, 38), "green": (36, 145, 62), "yellow": (245, 208, 40),
    "pink": (242, 142, 182), "purple": (118, 52, 155), "brown": (112, 70, 40), "beige": (218, 198, 160),
    "orange": (242, 122, 30), "olive": (112, 118, 42),
}

# Which part of a figure a category dresses ("full" = top and bottom at once).
ROLES = {"t-shirt": "top", "shirt": "top", "tank top": "top", "sweater": "top", "hoodie": "top", "jacket": "top",
         "dress": "full", "skirt": "bottom", "trousers": "bottom", "shorts": "bottom"}

# Category-specific attributes and the values each category can take; an attribute missing here does
# not apply to the category and is left out of its labels ("unspecified"). colour, pattern and fit apply
# to every category with all their values.
OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "t-shirt": {"sleeve": ("short", "elbow"), "neckline": ("crew", "v-neck")},
    "shirt": {"sleeve": ("short", "long"), "neckline": ("collar",)},
    "tank top": {"sleeve": ("sleeveless",), "neckline": ("crew", "v-neck")},
    "sweater": {"sleeve": ("elbow", "long"), "neckline": ("crew", "v-neck", "turtleneck")},
    "hoodie": {"sleeve": ("short", "long"), "neckline": ("hood",)},
    "jacket": {"sleeve": ("long",), "neckline": ("lapel",)},
    "dress": {"sleeve": ("sleeveless", "short", "elbow", "long"), "neckline": ("crew", "v-neck", "collar", "turtleneck"),
              "length": ("mini", "knee", "midi", "maxi")},
    "skirt": {"length": ("mini", "knee", "midi", "maxi")},
    "trousers": {},
    "shorts": {"length": ("mini", "knee")},
}
# Solid is the commonest pattern in real catalogues; the others share the rest equally.
PATTERN_WEIGHTS = np.array([0.25] + [0.15] * 5)

# --- the body ------------------------------------------------------------------------------------
HEAD = (0.0, 6.2, 4.6, 6.0)          # centre x, y, radius x, y
NECK_Y = (9.5, 16.5)
ARM_JOINT = (9.1, 20.3)              # top of the upper arm (right side); arms and sleeves hang from it
ARM_LENGTH = 30.0                    # to the wrist; the hand follows
HIP_JOINT = (4.7, 50.0)
ANKLE_Y = 94.0
NECK_HALF = 3.7                      # neck opening of a garment, half-width at the shoulder line

# Half-widths of a top at the shoulder, armpit, waist and hem, by fit.
TOP_FIT = {"slim": (10.2, 8.8, 7.9, 9.0), "regular": (10.7, 9.5, 9.3, 10.0), "loose": (11.9, 10.9, 11.0, 11.9)}
TOP_HEM = {"t-shirt": 50.0, "shirt": 52.5, "tank top": 48.5, "sweater": 50.5, "hoodie": 51.5, "jacket": 55.0}
SLEEVE_LENGTH = {"short": 9.5, "elbow": 17.0, "long": 29.0}
SKIRT_HEM = {"mini": 59.5, "knee": 70.0, "midi": 82.0, "maxi": 93.5}
SHORTS_HEM = {"mini": 58.5, "knee": 69.0}
SKIRT_FLARE = {"slim": -0.04, "regular": 0.24, "loose": 0.52}  # extra half-width per unit below the hip
# Trouser leg half-widths at thigh, knee and ankle, by fit.
LEG_FIT = {"slim": (5.0, 3.7, 3.0), "regular": (5.5, 4.6, 4.3), "loose": (6.3, 6.2, 6.9)}


@dataclass(frozen=True)
class Garment:
    """One garment's identity: its labels plus the small shape details that tell two garments apart."""

    attributes: dict[str, str]
    rgb: Rgb                 # this garment's shade of its named colour
    width: float = 1.0       # overall width factor
    hem_shift: float = 0.0   # hem a little higher or lower (body units)
    pocket: bool = False     # chest pocket (shirts, t-shirts)
    buttons: int = 2         # front buttons (jackets)
    undershirt: Rgb = (240, 240, 236)  # what shows in a worn jacket's opening

    @property
    def category(self) -> str:
        return self.attributes["category"]

    def get(self, attribute: str) -> str | None:
        return self.attributes.get(attribute)


@dataclass(frozen=True)
class Pose:
    arms: tuple[float, float]  # left, right arm/sleeve angle from vertical, degrees
    stance: float              # ankles this far out from the hips (body units)
    worn: bool                 # on a figure, or a flat product shot (the inside back shows)


@dataclass
class Shapes:
    """A garment drawn in body units. `fill` takes the fabric; the rest is drawn over it in order."""

    fill: list[Poly] = field(default_factory=list)
    inner: list[tuple[Poly, Rgb]] = field(default_factory=list)        # lining, the inside back, an undershirt
    lines: list[tuple[Poly, float, Rgb]] = field(default_factory=list)  # seams and edges: polyline, width, colour
    dots: list[tuple[Point, float, Rgb]] = field(default_factory=list)  # buttons: centre, radius, colour
    folds: list[tuple[Poly, float, int]] = field(default_factory=list)  # shading: polyline, width, +-brightness
    regions: dict[str, Poly] = field(default_factory=dict)              # attribute -> points whose bbox carries it

    def extent(self) -> tuple[float, float, float, float]:
        pts = [p for poly in self.fill for p in poly] + [p for poly, _ in self.inner for p in poly]
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        return min(xs), min(ys), max(xs), max(ys)


# --- sampling ------------------------------------------------------------------------------------
def jitter_colour(name: str, rng: np.random.Generator) -> Rgb:
    """A shade of a named colour: small brightness and per-channel changes that keep the name right."""
    base = np.array(COLOURS[name], float) * rng.uniform(0.9, 1.07) + rng.uniform(-7, 7, 3)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def sample_garment(rng: np.random.Generator, categories: tuple[str, ...] | None = None,
                   avoid_colour: str | None = None) -> Garment:
    cats = categories or ATTRIBUTES["category"]
    category = cats[rng.integers(len(cats))]
    colours = [c for c in ATTRIBUTES["colour"] if c != avoid_colour]
    attrs = {"category": category, "colour": colours[rng.integers(len(colours))],
             "pattern": ATTRIBUTES["pattern"][rng.choice(len(PATTERN_WEIGHTS), p=PATTERN_WEIGHTS)]}
    for name, values in OPTIONS[category].items():
        attrs[name] = values[rng.integers(len(values))]
    attrs["fit"] = ATTRIBUTES["fit"][rng.integers(3)]
    attrs = {a: attrs[a] for a in ATTRIBUTES if a in attrs}  # schema order, so the JSON reads the same way
    undershirt = (240, 240, 236) if sum(COLOURS[attrs["colour"]]) < 450 else (45, 45, 50)
    return Garment(attributes=attrs, rgb=jitter_colour(attrs["colour"], rng), width=float(rng.uniform(0.96, 1.04)),
                   hem_shift=float(rng.uniform(-1.0, 1.0)), pocket=bool(rng.random() < 0.4),
                   buttons=int(rng.integers(1, 4)), undershirt=undershirt)


# --- small geometry helpers ----------------------------------------------------------------------
def curve(p0: Point, c: Point, p1: Point, n: int = 6) -> Poly:
    """Quadratic Bezier from p0 to p1 (both included) bending towards c."""
    t = np.linspace(0.0, 1.0, n + 1)[:, None]
    pts = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(c) + t ** 2 * np.array(p1)
    return [(float(x), float(y)) for x, y in pts]


def mirror(poly: Poly) -> Poly:
    return [(-x, y) for x, y in poly]


def symmetric(right: Poly) -> Poly:
    """A left-right symmetric polygon from its right half, listed from the centre line top to bottom."""
    return right + mirror(right[::-1])


def across(right: Poly) -> Poly:
    """A left-right symmetric polyline from its right half, listed from the centre line outwards."""
    return mirror(right[::-1]) + right[1:]


def offset(poly: Poly, dx: float = 0.0, dy: float = 0.0) -> Poly:
    return [(x + dx, y + dy) for x, y in poly]


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> Poly:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return [(float(cx + rx * math.cos(a)), float(cy + ry * math.sin(a))) for a in t]


def tone(rgb: Rgb, factor: float, add: float = 0.0) -> Rgb:
    return tuple(int(min(255, max(0, c * factor + add))) for c in rgb)


def seam(rgb: Rgb) -> Rgb:
    """Stitching / edge colour: darker on light fabric, lighter on very dark fabric (so it stays visible)."""
    return tone(rgb, 1.25, 45) if sum(rgb) < 180 else tone(rgb, 0.58)


def lining(rgb: Rgb) -> Rgb:
    """The inside of a garment, in shadow."""
    return tone(rgb, 0.42) if sum(rgb) > 120 else tone(rgb, 1.0, 22)


def arm_axis(angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors along the right arm (down and outwards) and across it (outwards and up)."""
    a = math.radians(angle)
    return np.array([math.sin(a), math.cos(a)]), np.array([math.cos(a), -math.sin(a)])


def arm_points(angle: float, t: float, across: float) -> Point:
    """The point `t` units down the right arm from its joint and `across` units to its outer side."""
    d, n = arm_axis(angle)
    p = np.array(ARM_JOINT) + d * t + n * across
    return float(p[0]), float(p[1])


def leg_centre(y: float, stance: float) -> float:
    """x of the right leg's centre line at height y."""
    return HIP_JOINT[0] + stance * max(0.0, y - HIP_JOINT[1]) / (ANKLE_Y - HIP_JOINT[1])


# --- garments ------------------------------------------------------------------------------------
def garment_shapes(g: Garment, pose: Pose) -> Shapes:
    role = ROLES[g.category]
    if role == "bottom":
        return _skirt(g) if g.category == "skirt" else _trousers(g, pose)
    return _top(g, pose)


def _neck(g: Garment, s: Shapes, pose: Pose, nw: float) -> Poly:
    """Draw the neckline's extras into `s`; return the right half of the neck opening (centre front -> side)."""
    neckline, c, edge = g.get("neckline"), g.rgb, seam(g.rgb)
    top = 15.3
    if neckline in ("v-neck", "crew"):
        if neckline == "v-neck":
            depth = 27.5 if g.category == "tank top" else 27.0
            right = [(0.0, depth), ((nw + 0.4) / 2, (depth + top) / 2), (nw + 0.4, top)]
        else:
            depth = 21.5 if g.category == "tank top" else 19.3
            right = curve((0.0, depth), (nw * 0.9, depth), (nw, top))
        s.lines.append((across(offset(right, 0, 1.3)), 0.35, edge))  # the neck trim
        if not pose.worn:
            s.inner.append((symmetric([(0.0, top - 0.8), (nw, top)] + right[::-1][1:]), lining(c)))
    elif neckline == "turtleneck":
        right = curve((0.0, 17.6), (nw, 17.6), (nw, top))
        s.fill.append(symmetric([(0.0, 11.3), (nw + 0.3, 11.6), (nw + 0.8, 17.2)]
                                + curve((nw + 0.8, 17.2), (nw, 18.8), (0.0, 18.7))[1:]))
        s.lines.append(([(-nw - 0.5, 13.9), (0.0, 14.2), (nw + 0.5, 13.9)], 0.4, edge))  # the fold-over
        for x in np.arange(-nw, nw + 0.1, 0.95):
            s.lines.append(([(float(x), 14.6), (float(x) * 1.08, 18.0)], 0.22, edge))
        s.folds.append(([(-nw - 0.5, 14.4), (nw + 0.5, 14.4)], 0.9, -40))
    elif neckline == "collar":
        right = [(0.0, 19.6), (nw, 15.0)]
        s.fill.append(symmetric([(0.0, 13.2), (nw, 13.3), (nw + 0.6, 15.6), (0.0, 15.6)]))  # band behind the neck
        if not pose.worn:
            s.inner.append((symmetric([(0.0, 14.4), (nw - 0.3, 14.5), (nw - 0.2, 15.4), (0.0, 19.0)]), lining(c)))
        flap = [(nw + 0.1, 13.4), (nw + 1.8, 15.4), (3.3, 23.0), (0.25, 19.9), (nw - 0.9, 14.4)]
        for f in (flap, mirror(flap)):
            s.fill.append(f)
            s.lines.append((f + f[:1], 0.32, edge))
        for side in (1, -1):
            s.folds.append(([(side * 3.6, 23.4), (side * 0.4, 20.4)], 0.9, -45))
    elif neckline == "hood":
        right = curve((0.0, 19.0), (nw * 0.9, 19.0), (nw, top))
        if pose.worn:  # up around the head; the head is drawn over its lining
            s.fill.append(ellipse(0.0, 7.4, 7.7, 9.2))
            s.inner.append((ellipse(0.0, 7.2, 5.9, 7.6), lining(c)))
        else:          # lying flat behind the neck, its opening dark
            s.fill.append(ellipse(0.0, 9.0, 7.4, 8.0))
            s.inner.append((ellipse(0.0, 10.2, 4.6, 5.6), lining(c)))
        s.fill.append(symmetric([(0.0, 10.0), (7.0, 10.0), (nw + 3.2, 18.0), (0.0, 18.0)]))
        s.lines.append(([(-5.2, 12.5), (0.8, 19.3)], 0.4, edge))  # the hood's front edges cross at the neck
        s.lines.append(([(5.2, 12.5), (0.2, 18.6)], 0.4, edge))
        cord = (250, 250, 246) if sum(c) < 500 else (60, 60, 64)
        for side in (1, -1):
            s.lines.append(([(side * 1.7, 16.8), (side * 2.0, 21.5), (side * 1.8, 27.0)], 0.5, cord))
            s.dots.append(((side * 1.8, 27.4), 0.55, cord))
    else:  # lapel
        right = [(0.0, 33.0), (nw + 0.4, 15.0)]
        if pose.worn:  # an undershirt with its own round neck shows in the opening
            x = (nw + 0.4) * (33.0 - 18.3) / 18.0
            s.inner.append((symmetric(curve((0.0, 19.6), (x * 0.7, 19.6), (x, 18.3)) + [(0.0, 33.3)]), g.undershirt))
        else:  # the collar behind the neck, and the lining inside
            s.fill.append(symmetric([(0.0, 13.0), (nw, 13.1), (nw + 0.7, 15.6), (0.0, 15.6)]))
            s.inner.append((symmetric([(0.0, 14.3), (nw + 0.3, 15.0), (0.0, 33.3)]), lining(c)))
        lapel = [(nw + 0.4, 15.2), (0.4, 32.8), (9.0, 21.8), (6.2, 20.0), (7.2, 18.2), (5.3, 14.6)]
        for f in (lapel, mirror(lapel)):
            s.fill.append(f)
            s.lines.append((f + f[:1], 0.32, edge))
        for side in (1, -1):
            s.folds.append(([(side * 0.8, 33.5), (side * 9.6, 22.4)], 1.0, -50))
    return right


def _top(g: Garment, pose: Pose) -> Shapes:
    """Tops and dresses: torso with neckline, sleeves, then a hem (tops) or a skirt (dresses)."""
    s = Shapes()
    cat, fit, sleeve = g.category, g.get("fit"), g.get("sleeve")
    extra = {"jacket": 0.6, "sweater": 0.3, "hoodie": 0.4}.get(cat, 0.0)  # worn over other clothes
    sx, ax, wx, hx = (v * g.width + extra for v in TOP_FIT[fit])
    drop = 1.2 if fit == "loose" else 0.0  # dropped shoulders
    sy, ay = 17.2 + drop, 27.0 + 1.5 * drop
    nw = NECK_HALF + (0.6 if sleeve == "sleeveless" else 0.0)
    edge = seam(g.rgb)

    right = _neck(g, s, pose, nw)
    # The neck region: the opening plus whatever the neckline added (collar, hood, lapels, tube).
    s.regions["neckline"] = right + mirror(right) + [p for poly in s.fill for p in poly] \
        + [p for poly, _ in s.inner for p in poly]

    if sleeve == "sleeveless":
        strap = 2.2 if cat == "tank top" else 3.4
        hole = curve((nw + strap, 15.6), (nw + strap - 0.8, ay - 1.5), (ax - 0.2, ay + 1.5))
        right += hole
        s.lines.append((offset(hole, -0.7, 0.2), 0.3, edge))
        s.lines.append((mirror(offset(hole, -0.7, 0.2)), 0.3, edge))
        # No sleeve: the evidence is the armhole's edge with the bare shoulder and upper arm beside it.
        s.regions["sleeve"] = mirror(hole + offset(hole, -2.0) + [arm_points(pose.arms[0], 6.0, 2.6),
                                                                  arm_points(pose.arms[0], 6.0, -2.6)])
    else:
        right += [(sx, sy), (ax, ay)]
        for side, angle in ((1, pose.arms[1]), (-1, pose.arms[0])):
            poly = _sleeve(g, s, (sx, sy), (ax, ay), angle, side)
            if side < 0:
                s.regions["sleeve"] = poly + [(-sx, sy), (-ax, ay)]
        if cat in ("shirt", "jacket", "t-shirt"):
            for side in (1, -1):  # armhole seam
                s.lines.append((curve((side * sx, sy), (side * (ax + 0.6), (sy + ay) / 2), (side * ax, ay), 3), 0.3, edge))

    if cat == "dress":  # a fitted waist, then the skirt
        wx = min(wx, 8.3 * g.width)
        right.append((wx, 38.0))
        right += _skirt_part(g, s, (wx, 38.0))
        s.lines.append(([(-wx, 38.0), (wx, 38.0)], 0.35, edge))
    else:
        hem = TOP_HEM[cat] + g.hem_shift + (1.5 if fit == "loose" else 0.0)
        if cat == "shirt":  # curved shirt-tail hem
            right += [(wx, 38.0), (hx, hem - 2.2)] + curve((hx, hem - 2.2), (hx * 0.6, hem + 0.5), (0.0, hem + 0.4))[1:]
            s.lines.append((offset(across(right[-7:][::-1]), 0, -0.9), 0.25, edge))
        elif cat in ("sweater", "hoodie"):  # the body blouses over a narrower ribbed band
            band = hx - 0.6
            right += [(wx, 38.0), (hx + 0.3, hem - 3.2), (band, hem - 3.0), (band, hem), (0.0, hem)]
            _ribs(s, -band, band, hem - 3.0, hem, edge)
        else:
            right += [(wx, 38.0), (hx, hem - 0.3), (0.0, hem)]
            s.lines.append(([(-hx + 0.2, hem - 1.3), (0.0, hem - 1.0), (hx - 0.2, hem - 1.3)], 0.25, edge))
        _top_details(g, s, hem, hx)
    s.fill.insert(0, symmetric(right))

    # Soft drape from the armpits towards the waist, and a highlight down the chest.
    for side in (1, -1):
        s.folds.append(([(side * (ax - 1.0), ay + 2.0), (side * 5.0, 33.0), (side * 2.5, 40.0)], 1.6, -28))
        s.folds.append(([(side * 5.5, 22.0), (side * 5.0, 32.0)], 2.2, 22))
    return s


def _top_details(g: Garment, s: Shapes, hem: float, hx: float) -> None:
    cat, edge = g.category, seam(g.rgb)
    light = (238, 236, 230) if sum(g.rgb) < 420 else (50, 45, 42)
    if cat == "shirt":
        for x in (-1.2, 1.2):  # button placket
            s.lines.append(([(x, 19.8), (x, hem - 0.5)], 0.25, edge))
        for y in np.arange(22.5, hem - 2.0, 5.5):
            s.dots.append(((0.0, float(y)), 0.6, light))
        if g.pocket:
            s.lines.append(([(-3.2, 26.0), (-7.2, 26.0), (-7.2, 31.0), (-5.2, 32.0), (-3.2, 31.0), (-3.2, 26.0)], 0.3, edge))
    elif cat == "t-shirt" and g.pocket:
        s.lines.append(([(-3.4, 25.5), (-7.0, 25.5), (-7.0, 30.0), (-3.4, 30.0), (-3.4, 25.5)], 0.3, edge))
    elif cat == "hoodie":  # kangaroo pocket
        y0, y1 = 39.0, hem - 3.0
        s.lines.append(([(-7.5, y1), (-5.0, y0), (5.0, y0), (7.5, y1)], 0.35, edge))
        s.lines.append(([(-5.0, y0), (-7.8, y0 + 3.5)], 0.3, edge))
        s.lines.append(([(5.0, y0), (7.8, y0 + 3.5)], 0.3, edge))
        s.folds.append(([(-5.0, y0 + 0.6), (5.0, y0 + 0.6)], 1.0, -30))
    elif cat == "jacket":
        s.lines.append(([(0.0, 33.0), (0.0, hem)], 0.35, edge))  # front edge
        for i in range(g.buttons):
            s.dots.append(((0.0, 35.5 + 5.5 * i), 0.7, light))
        for side in (1, -1):  # pocket flaps
            s.lines.append(([(side * 3.0, 44.5), (side * (hx - 1.5), 44.5), (side * (hx - 1.6), 46.8),
                             (side * 3.1, 46.8), (side * 3.0, 44.5)], 0.3, edge))
        s.lines.append(([(3.2, 27.0), (7.0, 26.6)], 0.35, edge))  # breast welt


def _ribs(s: Shapes, x0: float, x1: float, y0: float, y1: float, edge: Rgb) -> None:
    """A ribbed knit band (hem): its top edge and vertical ribs."""
    s.lines.append(([(x0, y0), (x1, y0)], 0.35, edge))
    for x in np.arange(x0 + 0.5, x1, 0.9):
        s.lines.append(([(float(x), y0 + 0.3), (float(x), y1 - 0.1)], 0.2, edge))


def _sleeve(g: Garment, s: Shapes, shoulder: Point, armpit: Point, angle: float, side: int) -> Poly:
    """Add one sleeve (right side, mirrored for side=-1); return its polygon."""
    length_name, cat, edge = g.get("sleeve"), g.category, seam(g.rgb)
    length = SLEEVE_LENGTH[length_name]
    f = {"slim": -0.5, "regular": 0.0, "loose": 0.8}[g.get("fit")]
    top = 4.7 + f
    end = {"short": 4.5, "elbow": 3.7, "long": 2.9}[length_name] + f * (0.3 if length_name == "long" else 0.6)
    at = lambda t, across: arm_points(angle, t, across)  # noqa: E731 - a short local alias
    poly = [shoulder] + curve(shoulder, at(-0.5, top + 0.3), at(3.0, top), 4)[1:] \
        + [at(length, end), at(length, -end), armpit]
    lines: list[Poly] = []
    folds: list[tuple[Poly, float, int]] = []
    if cat in ("sweater", "hoodie") and length_name != "short":  # ribbed cuff
        lines.append([at(length - 2.4, end + 0.2), at(length - 2.4, -end - 0.2)])
        lines += [[at(length - 2.2, a), at(length - 0.1, a)] for a in np.arange(-end + 0.5, end, 0.9)]
    elif cat in ("shirt", "jacket") and length_name == "long":  # cuff
        lines.append([at(length - 2.6, end), at(length - 2.6, -end)])
    else:  # hem stitch
        lines.append([at(length - 0.9, end), at(length - 0.9, -end)])
    if length_name != "short":  # elbow crease and a highlight along the arm
        folds.append(([at(14.5, -end), at(15.5, 0.0)], 1.0, -40))
        folds.append(([at(16.5, -end), at(17.2, -0.5)], 0.8, -30))
    folds.append(([at(4.0, top * 0.35), at(length - 2.0, end * 0.35)], 1.6, 22))
    folds.append(([armpit, at(length, -end)], 1.3, -70))  # the sleeve's underside, in shadow against the body
    folds.append(([shoulder, armpit], 1.0, -45))          # the armhole seam
    if side < 0:
        poly, lines = mirror(poly), [mirror(ln) for ln in lines]
        folds = [(mirror(p), w, v) for p, w, v in folds]
    s.fill.append(poly)
    s.lines += [(ln, 0.25 if len(lines) > 2 else 0.3, edge) for ln in lines]
    s.folds += folds
    return poly


def _skirt_part(g: Garment, s: Shapes, waist: Point) -> Poly:
    """The right half of a skirt from its waist point down to the centre of its hem; adds folds and the
    length region."""
    fit, length = g.get("fit"), g.get("length")
    hip = max(waist[0] + 1.2, 10.0 * g.width) + (0.6 if fit == "loose" else 0.0)
    hy = SKIRT_HEM[length] + 0.6 * g.hem_shift
    hem = max(hip + SKIRT_FLARE[fit] * (hy - 47.0), 8.8)
    pts = curve(waist, (hip, waist[1] + 3.5), (hip, 47.0), 4)[1:]
    if fit == "loose":  # full skirts ripple at the hem
        xs = np.linspace(hem, 0.0, 11)
        pts += [(float(x), hy + 1.0 * (1 - (x / hem) ** 2) + 0.7 * math.sin(x * 1.4)) for x in xs]
    else:
        pts += [(hem, hy - 0.6)] + curve((hem, hy - 0.6), (hem * 0.5, hy + 1.0), (0.0, hy + 0.9))[1:]
    n = {"slim": 1, "regular": 3, "loose": 5}[fit]
    for i in range(1, n + 1):  # folds fanning from the hip to the hem
        for side in (1, -1):
            top_x, bottom_x = side * hip * i / (n + 1.3), side * hem * i / (n + 1.0)
            s.folds.append(([(top_x, 45.0), (bottom_x, hy)], 1.4, -38 if i % 2 else 18))
    s.regions["length"] = [(-hem, hy - 6.0), (hem, hy + 2.0)]
    return pts


def _skirt(g: Garment) -> Shapes:
    s = Shapes()
    w = 8.0 * g.width
    right = [(0.0, 36.3), (w, 36.3), (w + 0.2, 38.8)] + _skirt_part(g, s, (w + 0.2, 38.8))
    s.fill.append(symmetric(right))
    s.lines.append(([(-w - 0.2, 38.8), (w + 0.2, 38.8)], 0.35, seam(g.rgb)))
    return s


def _trousers(g: Garment, pose: Pose) -> Shapes:
    s = Shapes()
    fit, edge = g.get("fit"), seam(g.rgb)
    thigh, knee, ankle = (v * g.width for v in LEG_FIT[fit])
    hip, waist = 9.9 * g.width + (0.4 if fit == "loose" else 0.0), 8.2 * g.width
    if g.category == "shorts":
        length = g.get("length")
        hy = SHORTS_HEM[length] + 0.5 * g.hem_shift
        end = (thigh + 0.5) if length == "mini" else (knee + 0.8 + (0.6 if fit == "loose" else 0.0))
        gap = 1.0  # leg openings stay apart at the hem, or shorts would read as a skirt
    else:
        hy, end, gap = ANKLE_Y - 0.5 + 0.3 * g.hem_shift, ankle, 0.3
    c = lambda y: leg_centre(y, pose.stance)  # noqa: E731 - a short local alias
    s.fill.append(symmetric([(0.0, 36.3), (waist, 36.3), (waist + 0.2, 38.8)]
                            + curve((waist + 0.2, 38.8), (hip, 42.0), (hip, 47.0), 4)[1:] + [(hip, 53.0), (0.0, 55.0)]))
    outer = [(hip, 47.0)] + [(c(y) + w, y) for y, w in ((58.0, thigh), (72.0, knee)) if y < hy - 1.5] + [(c(hy) + end, hy)]
    inner = [(max(gap if y == hy else 0.3, c(y) - w), y) for y, w in ((hy, end), (72.0, knee), (58.0, thigh))
             if y == hy or y < hy - 1.5]
    leg = outer + inner + [(0.3, 54.5)]
    s.fill += [leg, mirror(leg)]
    s.lines.append(([(-waist - 0.2, 38.8), (waist + 0.2, 38.8)], 0.35, edge))  # waistband
    for x in (-7.2, -3.4, 3.4, 7.2):  # belt loops
        s.lines.append(([(x, 36.3), (x, 38.8)], 0.4, edge))
    s.lines.append(([(0.9, 38.8), (0.9, 47.5), (0.0, 50.0)], 0.3, edge))  # fly
    for side in (1, -1):
        s.lines.append((curve((side * 5.4, 38.8), (side * 6.0, 43.5), (side * hip, 44.5), 4), 0.3, edge))  # pockets
        s.lines.append(([(side * x, y) for x, y in inner[:-1] + [(0.3, 54.5)]], 0.35, edge))  # inside leg
        s.lines.append(([(side * (c(hy) - end + 0.2), hy - 1.2), (side * (c(hy) + end - 0.2), hy - 1.2)], 0.25, edge))
        s.folds.append(([(side * 1.0, 53.5), (side * 5.5, 47.5)], 1.2, -30))
        s.folds.append(([(0.0, 54.5), (side * inner[0][0], hy)], 1.4, -60))  # shadow between the legs
        if g.category == "trousers":
            s.folds.append(([(side * c(57.0), 57.0), (side * c(hy - 2.0), hy - 2.0)], 0.8, 30))  # pressed crease
            if fit != "slim":
                for y in (70.0, 74.0, hy - 4.0):  # crumples at the knee and ankle
                    s.folds.append(([(side * (c(y) - knee * 0.7), y), (side * c(y), y + 1.2),
                                     (side * (c(y) + knee * 0.7), y)], 1.0, -35))
    if g.category == "shorts":
        x = c(hy) + end
        s.regions["length"] = [(-x, hy - 6.0), (x, hy + 2.0)]
    return s
