"""The foreground crop of a shopper photo (vestis.vision.crop) on drawn photos with known garment boxes."""

import io

import numpy as np
from PIL import Image, ImageDraw

from vestis.vision.crop import crop_to_foreground, foreground_box
from vestis.vision.extract import encode_images


def _photo(size=(400, 300), box=(120, 60, 280, 250), bg=(200, 190, 170), fg=(30, 40, 120), texture=True, seed=0):
    rng = np.random.default_rng(seed)
    a = np.empty((size[1], size[0], 3), np.float32)
    a[:] = bg
    if texture:  # a bed sheet's weave: small noise and stripes
        a += rng.normal(0, 6, a.shape)
        a[::12] -= 25
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    ImageDraw.Draw(im).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=fg)
    return im


def _iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_finds_the_garment_on_a_textured_background():
    for seed, box in enumerate([(120, 60, 280, 250), (20, 30, 150, 200), (200, 100, 390, 290)]):
        got = foreground_box(_photo(box=box, seed=seed))
        assert got is not None and _iou(got, box) > 0.75, (box, got)
        # the padded box holds the whole garment
        assert got[0] <= box[0] and got[1] <= box[1] and got[2] >= box[2] - 1 and got[3] >= box[3] - 1


def test_declines_without_a_clear_foreground():
    plain = _photo(box=(0, 0, 1, 1))
    assert foreground_box(plain) is None
    full = _photo(box=(5, 5, 395, 295))  # the garment fills the photo: the whole photo is the crop
    assert foreground_box(full) is None
    img, box = crop_to_foreground(plain)
    assert box is None and img.size == plain.size


def test_encode_images_crop_reports_boxes_in_original_pixels():
    big = _photo(size=(1600, 1200), box=(480, 240, 1120, 1000)).resize((1600, 1200))
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=90)

    seen = []

    def backend(batch):
        seen.append(batch)
        return {"s32": np.zeros((len(batch), 2, 1, 1), np.float32)}

    boxes: list = []
    encode_images(backend, (160, 128), [buf.getvalue()], crop=True, boxes=boxes)
    assert boxes[0] is not None and _iou(boxes[0], (480, 240, 1120, 1000)) > 0.75
    boxes2: list = []
    encode_images(backend, (160, 128), [buf.getvalue()], crop=False, boxes=boxes2)
    assert boxes2 == [None]

    # what the trunk saw is the crop: the garment fills much more of its input than of the whole photo's
    def share(arr):
        return (np.abs(arr.astype(float) - (30, 40, 120)).sum(-1) < 60).mean()

    assert share(seen[0][0]) > share(seen[1][0]) + 0.15


def test_engine_search_with_crop_answers_the_box(engine):
    item = next(iter(engine.catalog))
    garment = Image.open(item.image).convert("RGB").resize((120, 150))
    photo = _photo(size=(400, 300), box=(0, 0, 1, 1))
    photo.paste(garment, (150, 80))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=92)
    res = engine.search(image=buf.getvalue(), k=5, crop=True)
    assert len(res.hits) == 5 and res.crop is not None
    x0, y0, x1, y1 = res.crop
    assert x0 <= 155 and y0 <= 85 and x1 >= 265 and y1 >= 225 and (x1 - x0) * (y1 - y0) < 0.6 * 400 * 300
    assert engine.search(image=buf.getvalue(), k=5).crop is None


def test_studio_background_tells_packshots_from_shoppers_photos():
    from vestis.vision.crop import studio_background

    packshot = _photo(bg=(255, 255, 255), texture=False)
    assert studio_background(packshot)
    nearly = _photo(bg=(238, 236, 240), texture=False)  # an off-white studio sweep still counts
    assert studio_background(nearly)
    assert not studio_background(_photo())  # a bed sheet
    assert not studio_background(_photo(bg=(215, 215, 215), texture=False))  # grey is not studio white
    edge = _photo(bg=(255, 255, 255), box=(0, 0, 400, 200), texture=False)  # the garment covers most of the border
    assert not studio_background(edge)
    assert not studio_background(Image.new("RGB", (3, 3), (255, 255, 255)))


def test_encode_images_studio_flags_leave_the_maps_unchanged():
    bufs = []
    for im in (_photo(bg=(255, 255, 255), texture=False), _photo()):
        b = io.BytesIO()
        im.save(b, "JPEG", quality=90)
        bufs.append(b.getvalue())
    seen = []

    def backend(batch):
        seen.append(batch.copy())
        return {"s32": np.zeros((len(batch), 2, 1, 1), np.float32)}

    studio: list = []
    encode_images(backend, (160, 128), bufs, studio=studio)
    encode_images(backend, (160, 128), bufs)
    assert studio == [True, False]
    np.testing.assert_array_equal(seen[0], seen[1])  # the same decode and letterbox as the fast path


def test_nearest_distance_is_the_distance_to_the_closest_reference():
    from vestis.vision.crop import _nearest_distance

    refs = np.array([[0, 0, 0], [255, 255, 255], [200, 10, 10]], np.float32)
    px = np.array([[[3, 4, 0], [250, 250, 250]], [[200, 10, 10], [100, 100, 100]]], np.float32)
    want = np.array([[5.0, np.sqrt(75.0)], [0.0, np.sqrt(100.0 ** 2 + 2 * 90.0 ** 2)]])  # grey: nearest the red
    np.testing.assert_allclose(_nearest_distance(px, refs), want, atol=1e-2)
    rng = np.random.default_rng(0)  # against the plain (pixels, refs, 3) differences
    a, r = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32), rng.uniform(0, 255, (12, 3)).astype(np.float32)
    brute = np.min(np.linalg.norm(a[:, :, None, :] - r[None, None], axis=-1), axis=-1)
    np.testing.assert_allclose(_nearest_distance(a, r), brute, atol=0.05)


def test_a_shared_thumbnail_gives_the_same_answers():
    from vestis.vision.crop import studio_background, thumbnail

    for seed in range(3):
        img = _photo(box=(40, 30, 140, 120), seed=seed)
        t = thumbnail(img)
        assert foreground_box(img, thumb=t) == foreground_box(img)
        assert crop_to_foreground(img, t)[1] == crop_to_foreground(img)[1]
        assert studio_background(img, t) == studio_background(img)
