"""Explanation overlays as PNG bytes: one panel per region of a `vestis.models.explanation.Explanation` - its
heatmap over the photo where it has one, its box where it has one, titled "name: label (confidence)". The one
renderer for `vestis explain` and the server's explain routes (attribute activation maps, Grad-CAM, attention
maps and part boxes alike); Pillow only, one image per call, thread-safe."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vestis.images import load_rgb
from vestis.models.explanation import Explanation, Region
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


def render_panel(photo: Image.Image, heatmap: np.ndarray | None, box, geo, stride: int, scale: float,
                 alpha: float = 0.5) -> Image.Image:
    """One region's panel: `photo` (the original scaled by `scale`) blended with the min-max normalised map
    `heatmap` (H, W) placed where the trunk saw it (letterbox `geo`, `stride` input pixels per cell), and the
    box (x0, y0, x1, y1 in cells) outlined in white over black. Either may be None: no heatmap, no box."""
    pw, ph = photo.size
    panel = photo.copy()
    if heatmap is not None:
        m = np.asarray(heatmap, dtype=np.float64)
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
    if box is not None:
        pd = ImageDraw.Draw(panel)
        bx0, by0, bx1, by1 = (np.asarray(geo.feature_to_image(tuple(float(v) for v in box), stride)) * scale).tolist()
        bx0, by0, bx1, by1 = max(bx0, 0), max(by0, 0), min(bx1, pw - 1), min(by1, ph - 1)
        pd.rectangle((bx0, by0, bx1, by1), outline=(255, 255, 255), width=3)
        pd.rectangle((bx0, by0, bx1, by1), outline=(0, 0, 0), width=1)
    return panel


def caption(region: Region) -> tuple[str, str]:
    """A panel's title and its second line: "name: label (confidence)", "name: unspecified (p)" where the label
    is unspecified, and then (second line) whose map the heatmap is."""
    title = f"{region.name}: {'unspecified' if region.label is None else region.label} ({region.confidence:.2f})"
    note = ""
    if region.heatmap is not None and region.map_label is not None and region.map_label != region.label:
        note = f"map: {region.map_label}" + (f" ({region.map_confidence:.2f})" if region.map_confidence is not None else "")
    return title, note


def render_overlay(image: str | Path | bytes, explanation: Explanation, resolution: tuple[int, int],
                   alpha: float = 0.5) -> bytes:
    """PNG bytes: per region, the photo with its (min-max normalised) heatmap laid over the part of the photo
    the map covers (the trunk's letterbox, `resolution` = (HEIGHT, WIDTH)), its box, and its caption above."""
    if not isinstance(explanation, Explanation):
        raise TypeError(f"render_overlay draws one Explanation (explain(maps)[i]), got {type(explanation).__name__}")
    img = load_rgb(image, draft=(PANEL, PANEL), reduce_to=(PANEL, PANEL))  # a 19 MP upload: small copies only
    w0, h0 = img.info.get("original_size", img.size)
    geo = letterbox_geometry(w0, h0, tuple(resolution))
    regions = explanation.regions
    scale = PANEL / max(w0, h0)
    pw, ph = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    photo = img.resize((pw, ph), Image.Resampling.BILINEAR)
    cols = min(COLS, max(1, len(regions)))
    rows = max(1, -(-len(regions) // cols))
    pad = 10
    font, small = _font(13), _font(11)
    captions = [caption(r) for r in regions]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    cw = max([pw, *(round(measure.textlength(t, font=font)) + 4 for t, _ in captions),
              *(round(measure.textlength(n, font=small)) + 4 for _, n in captions)])  # a column fits its titles
    sheet = Image.new("RGB", (cols * (cw + pad) + pad, rows * (ph + TITLE + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for j, (region, (title, note)) in enumerate(zip(regions, captions)):
        panel = render_panel(photo, region.heatmap, region.box, geo, explanation.stride, scale, alpha)
        r, c = divmod(j, cols)
        x, y = pad + c * (cw + pad), pad + r * (ph + TITLE + pad)
        if note:
            draw.text((x, y + 1), title, fill=(20, 20, 20), font=font)
            draw.text((x, y + 16), note, fill=(110, 110, 110), font=small)
        else:
            draw.text((x, y + 8), title, fill=(20, 20, 20), font=font)
        sheet.paste(panel, (x + (cw - pw) // 2, y + TITLE))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
