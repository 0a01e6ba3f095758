import pytest
from PIL import Image

from vestis.images import ImageReadError, load_rgb


def test_loads_and_converts_modes(tmp_path):
    Image.new("L", (5, 4), 7).save(tmp_path / "g.png")
    im = load_rgb(tmp_path / "g.png")
    assert im.mode == "RGB" and im.size == (5, 4)
    rgba = Image.new("RGBA", (3, 3), (255, 0, 0, 0))
    rgba.save(tmp_path / "t.png")
    assert load_rgb(tmp_path / "t.png").getpixel((1, 1)) == (255, 255, 255)  # transparent -> white


def test_clear_errors(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(ImageReadError, match="cannot decode"):
        load_rgb(tmp_path / "x.jpg")
    with pytest.raises(ImageReadError, match="cannot open"):
        load_rgb(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError, match="over the limit"):
        Image.new("RGB", (200, 200)).save(tmp_path / "big.png")
        load_rgb(tmp_path / "big.png", max_pixels=10_000)


def test_truncated_jpeg_is_an_error(tmp_path):
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "n.jpg")
    data = (tmp_path / "n.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError):
        load_rgb(tmp_path / "cut.jpg")


def _garment(w: int, h: int) -> Image.Image:
    """An asymmetric picture (so a wrong rotation or flip shows): white, a dark block top-left, a red bar."""
    import numpy as np

    a = np.full((h, w, 3), 255, np.uint8)
    a[h // 10:h // 2, w // 8:w // 2] = (30, 40, 50)
    a[3 * h // 4:7 * h // 8, w // 4:] = (200, 20, 20)
    return Image.fromarray(a)


def _save_sideways(upright: Image.Image, path, orientation: int = 6) -> None:
    """Store the pixels as a phone does: rotated, with the EXIF tag that tells a viewer how to turn them back."""
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # tag 6 means "rotate 90 degrees clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("size", [(64, 96), (512, 1280)])  # small; big and narrow for the DCT draft path
def test_exif_orientation_6_is_decoded_upright(tmp_path, size):
    import numpy as np

    from vestis.vision.preprocess import load_letterboxed

    upright = _garment(*size)
    upright.save(tmp_path / "upright.jpg", quality=95)
    _save_sideways(upright, tmp_path / "sideways.jpg")
    assert Image.open(tmp_path / "sideways.jpg").size == size[::-1]  # stored sideways

    im = load_rgb(tmp_path / "sideways.jpg")
    assert im.size == size
    drafted = load_rgb(tmp_path / "sideways.jpg", draft=(128, 160))
    assert drafted.info.get("original_size", drafted.size) == size  # the upright size: overlays rely on it
    if size[0] > 256:
        assert drafted.size == (size[0] // 4, size[1] // 4)  # decoded at reduced scale, upright

    a, geo_a = load_letterboxed(tmp_path / "upright.jpg", (160, 128))
    b, geo_b = load_letterboxed(tmp_path / "sideways.jpg", (160, 128))
    assert geo_a == geo_b and (geo_b.src_w, geo_b.src_h) == size
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) < 20  # only JPEG re-encoding noise
    ignored = np.asarray(Image.open(tmp_path / "sideways.jpg").convert("RGB").resize((128, 160)))
    assert np.abs(a.astype(np.int16) - ignored.astype(np.int16)).mean() > 10 * diff.mean()  # the tag matters


def test_broken_exif_is_ignored_not_fatal(tmp_path):
    upright = _garment(64, 96)
    _save_sideways(upright, tmp_path / "odd.jpg", orientation=42)  # not a valid orientation
    assert load_rgb(tmp_path / "odd.jpg").size == (96, 64)  # kept as stored
