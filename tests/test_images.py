import os
import platform
import sys
from pathlib import Path

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


def _photo(w: int, h: int) -> Image.Image:
    """A large picture with gradients and edges (so resampling differences would show)."""
    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // w, yy * 255 // h, ((xx // (w // 20) + yy // (h // 20)) % 2) * 200], -1)
    return Image.fromarray(a.astype(np.uint8))


def test_a_12_mp_jpeg_is_letterboxed_from_a_draft_decode_as_from_the_full_one(tmp_path, monkeypatch):
    """Uploads and extraction decode a 12 MP JPEG at 1/8 scale (DCT draft) - 0.19 MP instead of 12 in memory -
    and the trunk input matches the full decode's within resampling noise."""
    import numpy as np

    from vestis.vision import preprocess

    p = tmp_path / "12mp.jpg"
    _photo(4000, 3000).save(p, quality=90)
    decoded = []
    monkeypatch.setattr(preprocess, "load_rgb", lambda *a, **kw: decoded.append(load_rgb(*a, **kw)) or decoded[-1])
    drafted, geo = preprocess.load_letterboxed(p.read_bytes(), (160, 128))
    assert decoded[0].size == (500, 375) and decoded[0].info["original_size"] == (4000, 3000)
    full, full_geo = preprocess.letterbox(load_rgb(p), (160, 128))
    assert geo == full_geo and (geo.src_w, geo.src_h) == (4000, 3000)
    diff = np.abs(drafted.astype(np.int16) - full.astype(np.int16))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) < 16, (diff.mean(), np.percentile(diff, 99))


def test_reduce_to_bounds_a_large_png_before_orientation_and_transparency(tmp_path):
    """PNG has no draft: `reduce_to` shrinks it right after decoding, and the picture is the full decode's."""
    import numpy as np

    upright = _photo(1200, 1800).convert("RGBA")
    upright.putalpha(Image.new("L", upright.size, 255))
    upright.paste((0, 0, 0, 0), (0, 0, 300, 300))  # a transparent corner: white once composited
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif.tobytes())

    full = load_rgb(tmp_path / "sideways.png")
    small = load_rgb(tmp_path / "sideways.png", reduce_to=(220, 220))
    assert full.size == (1200, 1800) and small.info["original_size"] == (1200, 1800)
    assert small.size == (240, 360) and small.mode == "RGB"  # reduced 5x (1200 // 220), upright
    assert small.getpixel((10, 10)) == (255, 255, 255)
    a = np.asarray(full.resize((147, 220), Image.Resampling.BILINEAR), np.int16)
    b = np.asarray(small.resize((147, 220), Image.Resampling.BILINEAR), np.int16)
    assert np.abs(a - b).mean() < 2.0
    assert load_rgb(tmp_path / "sideways.png", reduce_to=(700, 1000)).size == (1200, 1800)  # under 2x: as is


_DECODE_IN_THREADS = """
import concurrent.futures as cf, io, sys
import numpy as np
from PIL import Image
from vestis.images import load_rgb, return_large_buffers
assert return_large_buffers()
yy, xx = np.mgrid[0:3000, 0:4000]
arr = np.stack([xx * 255 // 4000, yy * 255 // 3000, ((xx // 200 + yy // 200) % 2) * 200], -1).astype(np.uint8)
buf = io.BytesIO()
Image.fromarray(arr).save(buf, "PNG", compress_level=1)
data = buf.getvalue()
del arr, xx, yy
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
load_rgb(data)
before = rss()
with cf.ThreadPoolExecutor(8) as ex:
    list(ex.map(lambda _: load_rgb(data).size, range(16)))
print(rss() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc; RSS from /proc")
def test_decoded_large_images_go_back_to_the_system(tmp_path):
    """16 decodes of a 12 MP PNG in 8 threads: without `return_large_buffers` glibc kept ~50 MiB of them here
    (and 1 GB after 16 concurrent 19 MP uploads to `vestis serve`); with it, RSS returns to where it was."""
    import subprocess

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", _DECODE_IN_THREADS], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) < 16  # MiB kept
