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
