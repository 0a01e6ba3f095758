"""Packshot -> shopper-photo views: a seeded, deterministic function of (image, seed) -> image.

A packshot is a garment centred on white in studio light; a shopper's photo is the same kind of garment on a
bed, a floor or a table, off-centre, a little rotated and in perspective, in warm or cold room light, soft and
JPEG-compressed by a phone. `shopper_view` makes the first look like the second:

1. the white area around the garment (near-white pixels connected to the border) becomes a procedural textured background (a weave,
   wood-like stripes, a blotchy print or a plain gradient in a random colour);
2. the garment is scaled (0.55-1.0 of the frame) and placed off-centre;
3. a small rotation (up to 12 degrees) and a perspective tilt;
4. lighting: brightness, contrast, saturation, a colour cast and a vignette-like gradient;
5. blur (up to radius 1.5 at 400 px, scaled with the image) and JPEG re-compression (quality 35-85);
6. with `crop` > 0 only (a shopper framing the product tightly; the augmented views of single photos use it): a
   random window of 1 - crop to 1 of each side, resized back to the image's size. It draws from the generator
   after everything else, so `crop=0` (the default) gives the very bytes it gave before the option existed.

Everything draws from `numpy.random.default_rng(seed)` and PIL's deterministic operations, so a seed gives the
same bytes on every machine; the same-product protocol can reuse it for augmented query views.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from scipy import ndimage

WHITE = 232  # a pixel with every channel at or above this is packshot background


def _texture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) float32 background: one of a few household surfaces, in a random colour."""
    base = rng.uniform(50, 210) + rng.uniform(-35, 35, 3)  # household colours: greys with a tint
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = int(rng.integers(4))
    if kind == 0:  # fabric weave
        p = rng.uniform(3, 8)
        t = 18 * np.sin(xx * 2 * np.pi / p) * np.sin(yy * 2 * np.pi / p)
    elif kind == 1:  # wood-like stripes
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        t = 25 * np.sin(u / rng.uniform(4, 14) + 3 * np.sin(u / rng.uniform(30, 80)))
    elif kind == 2:  # blotchy print: smoothed noise
        small = rng.normal(0, 1, (max(2, h // 16), max(2, w // 16))).astype(np.float32)
        img = Image.fromarray(((small - small.min()) / (np.ptp(small) + 1e-6) * 255).astype(np.uint8))
        t = (np.asarray(img.resize((w, h), Image.BICUBIC), np.float32) - 128) * 0.35
    else:  # plain surface with a light gradient
        t = (xx / max(w, 1) * rng.uniform(-30, 30) + yy / max(h, 1) * rng.uniform(-30, 30))
    second = rng.uniform(50, 210) + rng.uniform(-35, 35, 3) if rng.random() < 0.3 else base
    mix = (t - t.min()) / (np.ptp(t) + 1e-6)
    out = base[None, None] * (1 - mix[..., None] * 0.5) + second[None, None] * (mix[..., None] * 0.5)
    out = out + t[..., None] * 0.5 + rng.normal(0, 4, (h, w, 3))
    return np.clip(out, 0, 255).astype(np.float32)


def _perspective_coeffs(src, dst):
    """PIL's 8 perspective coefficients mapping output points `dst` to input points `src`."""
    a = []
    for (x, y), (u, v) in zip(dst, src):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    b = np.array(src, np.float64).reshape(8)
    return np.linalg.solve(np.array(a, np.float64), b).tolist()


def shopper_view(image: Image.Image, seed: int, crop: float = 0.0) -> Image.Image:
    """A shopper-photo-like view of a packshot, the same size as `image` (RGB); deterministic in `seed` (and
    `crop`, the largest share of each side a tight framing may cut off, 0 <= crop < 1)."""
    if not 0 <= crop < 1:
        raise ValueError(f"crop must be in [0, 1), got {crop}")
    rng = np.random.default_rng(seed)
    img = image.convert("RGB")
    w, h = img.size
    a = np.asarray(img, np.float32)
    # 1. the white surround becomes a household surface (mask softened so edges do not ring)
    # only white connected to the border is background (a cream coat's own white stays garment): the
    # 4-connected components of the white that touch the border (what a flood fill from every border pixel
    # finds, in C rather than PIL's Python flood fill, which took 80 % of a 225 x 300 view's time)
    components, _ = ndimage.label((a >= WHITE).all(-1))
    border = np.unique(np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]]))
    bg = np.isin(components, border[border > 0])
    # grown by a pixel, so the light fringe around the garment goes with the white
    mask = Image.fromarray(bg.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.GaussianBlur(0.7))
    m = np.asarray(mask, np.float32)[..., None] / 255
    garment_rgba = Image.fromarray(np.concatenate([a, 255 * (1 - m)], -1).astype(np.uint8), "RGBA")
    # 2. scale and place off-centre
    s = rng.uniform(0.55, 1.0)
    gw, gh = max(1, round(w * s)), max(1, round(h * s))
    garment_rgba = garment_rgba.resize((gw, gh), Image.BILINEAR)
    # 3. small rotation
    garment_rgba = garment_rgba.rotate(rng.uniform(-12, 12), resample=Image.BILINEAR, expand=False)
    canvas = Image.fromarray(_texture(rng, w, h).astype(np.uint8)).convert("RGBA")
    ox, oy = int(rng.integers(0, w - gw + 1)), int(rng.integers(0, h - gh + 1))
    canvas.alpha_composite(garment_rgba, (ox, oy))
    view = canvas.convert("RGB")
    # ... and a perspective tilt (corners moved by up to 6 % of the side)
    d = 0.06
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    dst = [(x + rng.uniform(-d, d) * w, y + rng.uniform(-d, d) * h) for x, y in src]
    view = view.transform((w, h), Image.PERSPECTIVE, _perspective_coeffs(src, dst), Image.BILINEAR,
                          fillcolor=tuple(int(c) for c in np.asarray(view).reshape(-1, 3).mean(0)))
    # 4. room light: brightness, contrast, saturation, a colour cast and a gradient
    view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.7, 1.15))
    view = ImageEnhance.Contrast(view).enhance(rng.uniform(0.75, 1.15))
    view = ImageEnhance.Color(view).enhance(rng.uniform(0.75, 1.2))
    v = np.asarray(view, np.float32) * rng.uniform(0.88, 1.12, 3)[None, None]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    fall = 1 - rng.uniform(0.0, 0.35) * np.sqrt(((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2)
    view = Image.fromarray(np.clip(v * fall[..., None], 0, 255).astype(np.uint8))
    # 5. a phone's softness and compression
    r = rng.uniform(0, 1.5) * max(w, h) / 400  # radius for a 400 px photo, scaled to this one
    if r > 0.15:
        view = view.filter(ImageFilter.GaussianBlur(r))
    quality = int(rng.integers(35, 86))
    # 6. a tight framing (before the compression, as a phone crops before it saves)
    if crop > 0:
        cw, ch = (max(1, round(side * rng.uniform(1 - crop, 1))) for side in (w, h))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        view = view.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    view.save(buf, "JPEG", quality=quality)
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out.convert("RGB")
