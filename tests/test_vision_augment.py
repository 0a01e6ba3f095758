"""Shopper-photo views of a packshot (vestis.vision.augment.shopper_view): deterministic in the seed, the white
surround replaced, the garment kept (white garment parts too), sizes kept."""

import numpy as np
from PIL import Image, ImageDraw

from vestis.vision.augment import WHITE, shopper_view


def _packshot():
    im = Image.new("RGB", (120, 160), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.rectangle([30, 30, 89, 139], fill=(20, 30, 160))  # a blue garment
    d.rectangle([50, 60, 69, 100], fill=(250, 250, 250))  # with a white panel inside it
    return im


def test_same_seed_same_bytes_other_seed_other_view():
    p = _packshot()
    a, b, c = (np.asarray(shopper_view(p, s)) for s in (7, 7, 8))
    assert a.shape == (160, 120, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5


def test_white_surround_becomes_background_and_the_garment_stays():
    p = _packshot()
    white_before = (np.asarray(p) >= WHITE).all(-1).mean()
    for seed in range(8):
        v = np.asarray(shopper_view(p, seed)).astype(int)
        assert (v >= WHITE).all(-1).mean() < 0.25 * white_before  # the studio white is gone
        blue = (v[..., 2] - v[..., 0] > 60).mean()  # the garment is still there, at 0.55-1.0 scale
        assert 0.55 ** 2 * 0.25 < blue < 0.6, (seed, blue)


def test_white_inside_the_garment_is_kept():
    p = _packshot()
    p2 = _packshot()
    ImageDraw.Draw(p2).rectangle([50, 60, 69, 100], fill=(20, 30, 160))  # same garment without the white panel
    # the same seed places both identically: only the panel differs, and it stays light (not background)
    v1, v2 = (np.asarray(shopper_view(x, 3)).astype(int) for x in (p, p2))
    diff = np.abs(v1 - v2).sum(-1) > 60
    assert diff.mean() > 0.01
    assert v1[diff].mean() > v2[diff].mean() + 40
