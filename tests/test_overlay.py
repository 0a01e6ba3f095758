"""Explanation overlays (vestis.overlay): the heatmap and box land where the map says, on the photo."""

import io

import numpy as np
import torch
from PIL import Image

from vestis.overlay import colourise, render_overlay, render_panel
from vestis.vision.preprocess import letterbox_geometry


def test_colourise_runs_from_blue_to_red():
    c = colourise(np.array([[0.0, 1.0]]))
    assert c[0, 0, 2] > c[0, 0, 0] and c[0, 1, 0] > c[0, 1, 2]


def test_hot_cell_and_box_land_on_the_right_photo_pixels():
    """A 100 x 200 photo letterboxed into 160 x 128 (HEIGHT x WIDTH): scale 0.8, 24 px of padding left and right.
    The stride-16 cell at row 2, column 4 covers input x 64-80, y 32-48, i.e. photo x 50-70, y 40-60."""
    geo = letterbox_geometry(100, 200, (160, 128))
    assert (geo.pad_x, geo.pad_y, geo.new_w) == (24, 0, 80)
    scale = 2.0
    photo = Image.new("RGB", (200, 400), (128, 128, 128))
    aam = np.zeros((10, 8))
    aam[2, 4] = 1.0
    panel = np.asarray(render_panel(photo, aam, (4, 2, 5, 3), geo, 16, scale)).astype(int)
    redness = panel[..., 0] - panel[..., 2]
    y, x = np.unravel_index(np.argmax(redness), redness.shape)
    assert abs(x / scale - 60) <= 3 and abs(y / scale - 50) <= 3, (x / scale, y / scale)
    assert redness[round(150 / scale), round(20 / scale)] < 0  # far from the hot cell: the cold end
    # the box's white outline runs along photo y = 40 from x = 50 to 70, and along x = 50
    assert (panel[81, 110:130] > 230).all() and (panel[90:110, 101] > 230).all()  # 3 px white inside a 1 px black edge
    assert (panel[80, 110:130] < 30).all()
    assert not (panel[60, 110:130] > 230).all()


def test_overlay_has_one_titled_panel_per_attribute():
    buf = io.BytesIO()
    Image.new("RGB", (60, 80), (90, 90, 200)).save(buf, format="JPEG")
    expl = {"attributes": ["a", "b", "c", "d"], "values": [["x", "y", "z", "w"]], "confidence": torch.full((1, 4), 0.5),
            "aam": torch.rand(1, 4, 10, 8), "stride": 16, "boxes": torch.tensor([[[0.0, 0.0, 8.0, 10.0]] * 4])}
    im = Image.open(io.BytesIO(render_overlay(buf.getvalue(), expl, (160, 128))))
    assert im.format == "PNG" and im.width > 3 * 165 and im.height > 2 * 220  # 3 columns, 2 rows of 220-px panels
