"""Explanation overlays as PNG bytes: each attribute's activation map as a heatmap over the photo, with its
box, one panel per attribute. The one renderer for `vestis explain` and the server's explain routes;
Pillow only, one image per call, thread-safe."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vestis.images import load_rgb
from vestis.vision.preprocess import letterbox_geometry

PANEL = 220       # longest side of a panel's photo, pixels
TITLE = 30        # title band height
COLS = 3
# "jet"-like ramp: blue -> cyan -> green -> yellow -> red
_RAMP = np.array([[0, 0, 143], [0, 112, 255], [64, 255, 180], [255, 230, 0], [230, 20, 0]], np.float64)


def colourise(m: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 heat colours."""
    x = np.clip(m, 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    t = (x - lo)[..., None]
    return (_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def render_panel(photo: Image.Image, aam: np.ndarray, box, geo, stride: int, scale: float,
                 alpha: float = 0.5) -> Image.Image:
    """One attribute's panel: `photo` (the original scaled by `scale`) blended with the min-max normalised map
    `aam` (H, W) placed where the trunk saw it (letterbox `geo`, `stride` input pixels per cell), and the box
    (x0, y0, x1, y1 in cells) outlined in white over black."""
    pw, ph = photo.size
    m = np.asarray(aam, dtype=np.float64)
    h, w = m.shape[-2:]
    m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
    # the whole map in photo pixels (it extends over the letterbox padding, beyond the photo's edges)
    mx0, my0, mx1, my1 = geo.feature_to_image((0.0, 0.0, float(w), float(h)), stride)
    heat = Image.fromarray(colourise(m))
    hw, hh = max(1, round((mx1 - mx0) * scale)), max(1, round((my1 - my0) * scale))
    heat = heat.resize((hw, hh), Image.Resampling.BILINEAR)
    layer = Image.new("RGB", (pw, ph))
    layer.paste(heat, (round(mx0 * scale), round(my0 * scale)))
    panel = Image.blend(photo, layer, alpha)
    pd = ImageDraw.Draw(panel)
    bx0, by0, bx1, by1 = (np.asarray(geo.feature_to_image(tuple(float(v) for v in box), stride)) * scale).tolist()
    bx0, by0, bx1, by1 = max(bx0, 0), max(by0, 0), min(bx1, pw - 1), min(by1, ph - 1)
    pd.rectangle((bx0, by0, bx1, by1), outline=(255, 255, 255), width=3)
    pd.rectangle((bx0, by0, bx1, by1), outline=(0, 0, 0), width=1)
    return panel


def render_overlay(image: str | Path | bytes, explanation: Mapping, resolution: tuple[int, int], index: int = 0,
                   alpha: float = 0.5) -> bytes:
    """PNG bytes: per attribute, the photo with its (min-max normalised) activation map laid over the part of
    the photo the map covers (the trunk's letterbox, `resolution` = (HEIGHT, WIDTH)), the box fitted to the
    map, and "attribute: predicted value (confidence)" above it."""
    img = load_rgb(image)
    w0, h0 = img.info.get("original_size", img.size)
    geo = letterbox_geometry(w0, h0, tuple(resolution))
    stride = int(explanation["stride"])
    attrs = list(explanation["attributes"])
    aam = np.asarray(explanation["aam"][index], dtype=np.float64)
    boxes = np.asarray(explanation["boxes"][index], dtype=np.float64)
    conf = np.asarray(explanation["confidence"][index], dtype=np.float64) if "confidence" in explanation else None
    values = explanation["values"][index] if "values" in explanation else [""] * len(attrs)
    scale = PANEL / max(w0, h0)
    pw, ph = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    photo = img.resize((pw, ph), Image.Resampling.BILINEAR)
    cols = min(COLS, max(1, len(attrs)))
    rows = -(-len(attrs) // cols)
    pad = 10
    font = _font(13)
    unspec = np.asarray(explanation["unspecified"][index], dtype=np.float64) if "unspecified" in explanation else None
    labels = [f"{a}: {values[j]}" + (f" ({conf[j]:.2f})" if conf is not None else "") for j, a in enumerate(attrs)]
    if unspec is not None and conf is not None:  # most likely unlabelled: say so; the map is the best value's
        labels = [f"{a}: unspecified ({unspec[j]:.2f}); map: {values[j]}" if unspec[j] > conf[j] else labels[j]
                  for j, a in enumerate(attrs)]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cw = max([pw, *(round(measure.textlength(t, font=font)) + 4 for t in labels)])  # a column fits its titles
    sheet = Image.new("RGB", (cols * (cw + pad) + pad, rows * (ph + TITLE + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j in range(len(attrs)):
        panel = render_panel(photo, aam[j], boxes[j], geo, stride, scale, alpha)
        r, c = divmod(j, cols)
        x, y = pad + c * (cw + pad), pad + r * (ph + TITLE + pad)
        draw.text((x, y + 8), labels[j], fill=(20, 20, 20), font=font)
        sheet.paste(panel, (x + (cw - pw) // 2, y + TITLE))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
