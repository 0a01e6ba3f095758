"""Letterbox preprocessing keeps the aspect ratio; boxes map image <-> input <-> feature map and back."""

import numpy as np
import pytest
from PIL import Image

from vestis.vision.preprocess import PAD_RGB, letterbox, letterbox_geometry, load_letterboxed, normalize


def test_wide_image_is_padded_top_and_bottom_not_stretched():
    img = Image.new("RGB", (200, 50), (200, 0, 0))  # 4:1, wide
    out, geo = letterbox(img, (160, 128))
    assert out.shape == (160, 128, 3) and out.dtype == np.uint8
    assert (geo.new_w, geo.new_h) == (128, 32) and geo.pad_x == 0 and geo.pad_y == 64
    red = (out[..., 0] > 150) & (out[..., 1] < 50)
    rows = np.flatnonzero(red.any(1))
    cols = np.flatnonzero(red.any(0))
    assert rows.min() == 64 and rows.max() == 95 and cols.min() == 0 and cols.max() == 127
    assert (out[:64] == PAD_RGB).all() and (out[96:] == PAD_RGB).all()


def test_tall_image_is_padded_left_and_right():
    img = Image.new("RGB", (60, 80), (0, 0, 255))  # the dataset's 60x80 photos
    out, geo = letterbox(img, (160, 128))
    assert (geo.new_w, geo.new_h, geo.pad_x, geo.pad_y) == (120, 160, 4, 0)
    assert (out[:, :4] == PAD_RGB).all() and (out[:, 124:] == PAD_RGB).all()
    assert geo.sx == pytest.approx(geo.sy)


def test_box_round_trip_and_feature_coordinates():
    geo = letterbox_geometry(60, 80, (160, 128))
    box = (10.0, 20.0, 50.0, 70.0)
    for stride in (16, 32):
        f = geo.image_to_feature(box, stride)
        assert geo.feature_to_image(f, stride) == pytest.approx(box)
    assert geo.input_to_image(geo.image_to_input(box)) == pytest.approx(box)
    # the whole image maps onto the content box; at stride 16 the 128-wide input is 8 cells wide
    assert geo.image_to_input((0, 0, 60, 80)) == pytest.approx(geo.content_box)
    assert geo.image_to_feature((0, 0, 60, 80), 16) == pytest.approx((4 / 16, 0, 124 / 16, 10))
    # arrays of boxes work too
    many = np.array([box, (0, 0, 60, 80)])
    assert np.allclose(geo.feature_to_image(geo.image_to_feature(many, 32), 32), many)
    # a wide image: y is shifted by the top padding
    wide = letterbox_geometry(451, 300, (160, 128))
    assert wide.image_to_input((0, 0, 451, 300))[1] == pytest.approx(wide.pad_y)


def test_normalize_and_load(tmp_path):
    p = tmp_path / "a.jpg"
    Image.new("RGB", (30, 40), (255, 255, 255)).save(p)
    arr, geo = load_letterboxed(p, (64, 64))
    x = normalize(np.stack([arr, arr]), (0.5,) * 3, (0.5,) * 3)
    assert x.shape == (2, 3, 64, 64) and x.dtype.is_floating_point
    assert float(x.max()) == pytest.approx(1.0, abs=0.02) and float(x.min()) > 0.9  # all white


def test_large_jpeg_draft_decoding_keeps_enough_pixels(tmp_path):
    p = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 2000), (10, 200, 30)).save(p)
    arr, geo = load_letterboxed(p, (160, 128))
    assert (geo.src_w, geo.src_h) == (1600, 2000)  # geometry refers to the original size
    assert arr.shape == (160, 128, 3) and abs(int(arr[80, 64, 1]) - 200) < 6
