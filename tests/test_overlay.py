"""Explanation overlays (vestis.overlay): the heatmap and box land where the map says, on the photo."""

import io

import numpy as np
import pytest
from PIL import Image

from vestis.models.explanation import Explanation, Region
from vestis.overlay import caption, colourise, render_overlay, render_panel
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


def _jpeg(size=(60, 80), colour=(90, 90, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_overlay_has_one_titled_panel_per_region():
    rng = np.random.default_rng(0)
    regions = [Region(n, heatmap=rng.random((10, 8)), box=(0, 0, 8, 10), label=v, confidence=0.5)
               for n, v in zip("abcd", "xyzw")]
    im = Image.open(io.BytesIO(render_overlay(_jpeg(), Explanation(regions, stride=16, map_size=(10, 8)), (160, 128))))
    assert im.format == "PNG" and im.width > 3 * 165 and im.height > 2 * 220  # 3 columns, 2 rows of 220-px panels


def test_a_box_only_region_is_the_photo_with_its_box():
    """A part box without a heatmap: the photo's colours untouched except for the outline."""
    photo = Image.new("RGB", (100, 200), (128, 128, 128))
    panel = np.asarray(render_panel(photo, None, (4, 2, 5, 3), letterbox_geometry(100, 200, (160, 128)), 16, 1.0))
    assert (panel[41, 51:70] > 230).all() and (panel[40, 51:70] < 30).all()  # white outline in black, photo y = 40
    outline = (panel != 128).any(-1)
    assert outline[35:65, 45:75].sum() == outline.sum() > 0  # nothing drawn away from the box


def test_unspecified_region_is_captioned_so_and_draws_no_box():
    heat = np.zeros((10, 8))
    heat[9, 0] = 1.0
    boxed = Region("length", heatmap=heat, box=(0, 9, 1, 10), label="knee", confidence=0.01, map_label="knee",
                   map_confidence=0.01, unspecified=0.99)
    unspec = Region("length", heatmap=heat, box=None, label=None, confidence=0.99, map_label="knee",
                    map_confidence=0.01, unspecified=0.99, heatmap_box=(0, 9, 1, 10))
    assert caption(boxed) == ("length: knee (0.01)", "")
    assert caption(unspec) == ("length: unspecified (0.99)", "map: knee (0.01)")
    assert caption(Region("sleeve", box=(0, 0, 1, 1), label=None, confidence=0.7)) == ("sleeve: unspecified (0.70)", "")

    def white(region):  # the box outline is the only pure white inside the panel of a dark photo
        png = render_overlay(_jpeg((80, 100), (40, 40, 40)), Explanation([region], 16, (10, 8)), (160, 128))
        a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)[40:]  # below the title band
        ys, xs = np.nonzero((a < 200).any(-1))  # the panel: everything not white paper
        inside = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        assert inside.shape[:2] == (220, 176)  # the photo at 220 px on its long side
        return int((inside > 250).all(-1).sum())

    assert white(boxed) > 20 and white(unspec) == 0


def test_render_overlay_takes_one_explanation():
    e = Explanation([Region("a", box=(0, 0, 1, 1), label="x")], 16, (10, 8))
    with pytest.raises(TypeError, match="one Explanation"):
        render_overlay(_jpeg(), [e], (160, 128))
