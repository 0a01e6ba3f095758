"""Image -> trunk input: aspect-preserving resize + letterbox pad to the trunk resolution, normalisation,
and the geometry that maps boxes between original-image pixels, input pixels and feature-map cells.

Letterbox: the image is scaled by s = min(W / w, H / h) (bicubic; JPEGs are DCT-downscaled while decoding
when much larger than needed) so it fits, and centred; the rest is filled with WHITE. Catalogue product
shots are photographed on white (in fashion-product-images the median border brightness is 254/255 and 98%
of images have a border mean above 225), so a white pad continues the background: no artificial step edge
around the photo for the trunk to respond to, and images of different aspect ratios look alike at the
border. A grey pad would put a strong edge - a "feature" that only encodes the aspect ratio - around almost
every garment.

Coordinates: boxes are (x0, y0, x1, y1) in continuous pixel coordinates, x1/y1 exclusive (as in
`vestis.catalog.item.Box`). Input pixel = original * scale + pad. Feature coordinates at stride s are input
coordinates / s: cell (i, j) covers input pixels [j*s, (j+1)*s) x [i*s, (i+1)*s) (the usual convention, e.g.
ROIAlign with spatial_scale = 1/s). The receptive-field offset of TF-"same" padding is ignored: input-gradient
centroids of Lite0's centre cells lie within ~2 px (s16) and ~10 px (s32, a third of a cell) of the cell centres.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vestis.images import load_rgb

PAD_RGB = (255, 255, 255)
RESAMPLE = Image.Resampling.BICUBIC


@dataclass(frozen=True)
class Letterbox:
    """Where an image of src_w x src_h lands in an input of resolution (H, W)."""

    src_w: int
    src_h: int
    height: int
    width: int
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int

    @property
    def sx(self) -> float:
        return self.new_w / self.src_w

    @property
    def sy(self) -> float:
        return self.new_h / self.src_h

    @property
    def content_box(self) -> tuple[float, float, float, float]:
        """The image's own pixels inside the input (everything else is padding), input coordinates."""
        return (float(self.pad_x), float(self.pad_y), float(self.pad_x + self.new_w), float(self.pad_y + self.new_h))

    # Boxes may be one (x0, y0, x1, y1) or an array of shape (..., 4); the same kind comes back.
    def image_to_input(self, box):
        return _affine(box, self.sx, self.sy, self.pad_x, self.pad_y)

    def input_to_image(self, box):
        return _affine(box, 1 / self.sx, 1 / self.sy, -self.pad_x / self.sx, -self.pad_y / self.sy)

    def image_to_feature(self, box, stride: int):
        return _affine(box, self.sx / stride, self.sy / stride, self.pad_x / stride, self.pad_y / stride)

    def feature_to_image(self, box, stride: int):
        return _affine(box, stride / self.sx, stride / self.sy, -self.pad_x / self.sx, -self.pad_y / self.sy)

    def feature_content_box(self, stride: int) -> tuple[float, float, float, float]:
        """The image's content in feature-map coordinates at `stride` (cells outside are mostly padding)."""
        return tuple(float(v) / stride for v in self.content_box)


def _affine(box, ax: float, ay: float, bx: float, by: float):
    a = np.asarray(box, dtype=np.float64)
    if a.shape[-1] != 4:
        raise ValueError(f"a box needs 4 numbers x0,y0,x1,y1, got shape {a.shape}")
    out = a * np.array([ax, ay, ax, ay]) + np.array([bx, by, bx, by])
    if isinstance(box, (tuple, list)) and a.ndim == 1:
        return tuple(float(v) for v in out)
    return out


def letterbox_geometry(src_w: int, src_h: int, resolution: tuple[int, int]) -> Letterbox:
    """The letterbox for an image of src_w x src_h at resolution (HEIGHT, WIDTH): depends on sizes only."""
    h, w = resolution
    if src_w < 1 or src_h < 1:
        raise ValueError(f"empty image {src_w}x{src_h}")
    s = min(w / src_w, h / src_h)
    new_w = min(w, max(1, round(src_w * s)))
    new_h = min(h, max(1, round(src_h * s)))
    return Letterbox(src_w, src_h, h, w, new_w, new_h, (w - new_w) // 2, (h - new_h) // 2)


def image_geometry(image: str | Path | bytes, resolution: tuple[int, int]) -> Letterbox:
    """The letterbox of an image file or bytes at resolution (HEIGHT, WIDTH), from its (EXIF-upright) size."""
    img = load_rgb(image)
    w0, h0 = img.info.get("original_size", img.size)
    return letterbox_geometry(w0, h0, tuple(resolution))


def input_box_in_photo(box, geometry: Letterbox) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) in trunk-input pixels -> pixels of the original photo, clipped to it."""
    x0, y0, x1, y1 = geometry.input_to_image(tuple(float(v) for v in box))
    return (max(x0, 0.0), max(y0, 0.0), min(x1, float(geometry.src_w)), min(y1, float(geometry.src_h)))


def letterbox(img: Image.Image, resolution: tuple[int, int], fill=PAD_RGB) -> tuple[np.ndarray, Letterbox]:
    """RGB PIL image -> (uint8 array H x W x 3, geometry). The geometry refers to the original image size
    (`img.info["original_size"]` when the image was decoded at reduced scale, see `load_rgb(draft=...)`)."""
    src_w, src_h = img.info.get("original_size", img.size)
    geo = letterbox_geometry(src_w, src_h, resolution)
    if img.mode != "RGB":
        img = img.convert("RGB")
    if (geo.new_w, geo.new_h) != img.size:
        img = img.resize((geo.new_w, geo.new_h), RESAMPLE)
    if (geo.width, geo.height) != img.size:
        canvas = Image.new("RGB", (geo.width, geo.height), tuple(fill))
        canvas.paste(img, (geo.pad_x, geo.pad_y))
        img = canvas
    return np.asarray(img), geo


def load_letterboxed(source: str | Path | bytes, resolution: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Decode (raises ImageReadError) and letterbox one image."""
    h, w = resolution
    return letterbox(load_rgb(source, draft=(w, h)), resolution)


def normalize(batch: np.ndarray | torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, H, W, 3) or (H, W, 3) -> float32 (N, 3, H, W) normalised as (x/255 - mean) / std."""
    if isinstance(batch, np.ndarray) and not batch.flags.writeable:  # np.asarray(PIL image) is read-only
        batch = batch.copy()
    x = torch.as_tensor(batch)
    if x.ndim == 3:
        x = x[None]
    x = x.permute(0, 3, 1, 2).to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return x.sub_(m).div_(s).contiguous()
