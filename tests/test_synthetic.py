"""The synthetic catalogue: determinism, schema, label applicability, geometry that matches the drawing."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vestis.catalog import AttributeSchema, Catalog
from vestis.catalog.synthetic import ATTRIBUTES, DEFAULT_SIZE, generate, make_contact_sheet
from vestis.catalog.synthetic.garments import COLOURS, OPTIONS, ROLES, jitter_colour, sample_garment
from vestis.catalog.synthetic.generate import Shot, plan, render_shot
from vestis.catalog.synthetic.patterns import sample_fabric
from vestis.catalog.synthetic import scene as scene_module
from vestis.catalog.synthetic.scene import Look, render, sample_look
from vestis.errors import VestisError

N = 40


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> tuple[Path, Catalog]:
    out = tmp_path_factory.mktemp("serial")
    return out, generate(n=N, seed=1, out=out, workers=1)


def test_same_seed_gives_identical_files(serial, tmp_path):
    out, _ = serial
    generate(n=N, seed=1, out=tmp_path, workers=1)
    first, second = digests(out), digests(tmp_path)
    assert len(first) == N + 2  # images + catalog.jsonl + schema.json
    assert first == second


def test_parallel_equals_serial(serial, tmp_path):
    out, _ = serial
    generate(n=N, seed=1, out=tmp_path, workers=2)
    assert digests(out) == digests(tmp_path)


def test_other_seed_differs_and_plan_is_prefix_stable():
    assert plan(30, seed=3)[:20] == plan(20, seed=3)
    assert plan(30, seed=3) != plan(30, seed=4)


def test_reads_back_with_fixed_schema(serial):
    out, returned = serial
    cat = Catalog.load(out)
    assert cat.schema == AttributeSchema(ATTRIBUTES)
    assert list(cat.schema.values("category"))[:3] == ["t-shirt", "shirt", "tank top"]  # fixed, not by frequency
    assert len(cat) == len(returned) == N
    assert [it.id for it in cat] == [f"s{i:06d}" for i in range(N)]
    for it in cat:
        assert re.fullmatch(r"g\d{6}", it.instance_id)
        assert it.image == out / "images" / f"{it.id}.jpg" and it.image.is_file()
        with Image.open(it.image) as im:
            assert im.size == DEFAULT_SIZE and im.mode == "RGB"
    assert cat.check_images() == {"missing": [], "unreadable": []}


def test_sampler_covers_every_value_and_respects_applicability():
    seen = defaultdict(set)
    for i in range(3000):
        g = sample_garment(np.random.default_rng([0, i]))
        cat = g.category
        assert set(g.attributes) == {"category", "colour", "pattern", "fit", *OPTIONS[cat]}
        for a, v in g.attributes.items():
            assert v in ATTRIBUTES[a]
            seen[a].add(v)
        if cat in ("trousers", "skirt", "shorts"):
            assert "sleeve" not in g.attributes and "neckline" not in g.attributes
        if cat == "tank top":
            assert g.get("sleeve") == "sleeveless"
        if cat not in ("dress", "skirt", "shorts"):
            assert "length" not in g.attributes
    assert {a: set(vs) for a, vs in ATTRIBUTES.items()} == dict(seen)


def test_boxes_and_regions_lie_inside_the_image(serial):
    _, cat = serial
    w, h = DEFAULT_SIZE
    boxes = []
    for it in cat:
        assert it.box is not None
        boxes += [it.box, *it.regions.values(), *(p.box for p in it.parts)]
        if not it.parts:
            assert set(it.regions) == set(it.attributes)
            assert "sleeve" in it.regions or "sleeve" not in it.attributes
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def _solid(category: str, colour: str, rng) -> Look:
    while True:
        g = sample_garment(rng, (category,))
        if "sleeve" in g.attributes:
            break
    g = replace(g, attributes={**g.attributes, "colour": colour, "pattern": "solid"}, rgb=jitter_colour(colour, rng))
    return Look(((g, sample_fabric("solid", g.rgb, rng)),), False)


@pytest.mark.parametrize("category", [c for c, o in OPTIONS.items() if "sleeve" in o])
def test_sleeve_and_neckline_regions_show_the_garment(category):
    """Geometry matches the drawing: the sleeve, neckline and garment boxes contain garment-coloured pixels."""
    for i in range(4):
        look = _solid(category, "green", np.random.default_rng([1, i]))
        view = render(look, np.random.default_rng([2, i]), DEFAULT_SIZE)
        px = np.asarray(view.image, np.int16)
        green = (px[..., 1] > px[..., 0] + 25) & (px[..., 1] > px[..., 2] + 25)
        for attribute in ("sleeve", "neckline", "colour"):
            x0, y0, x1, y1 = (int(round(v)) for v in view.regions[0][attribute])
            share = green[y0:y1, x0:x1].mean()
            assert share > 0.15, (category, i, attribute, share)


def test_outfits_have_a_top_and_a_bottom_part(tmp_path):
    item = render_shot(5, Shot(index=0, instance=0, outfit=True), DEFAULT_SIZE, tmp_path)
    assert item.attributes == {} and item.regions == {}
    assert [p.name for p in item.parts] == ["top", "bottom"]
    top, bottom = item.parts
    assert ROLES[top.attributes["category"]] == "top" and ROLES[bottom.attributes["category"]] == "bottom"
    assert top.box[1] < bottom.box[1]  # the top sits above the bottom
    x0, y0, x1, y1 = item.box
    for p in item.parts:
        assert x0 <= p.box[0] < p.box[2] <= x1 and y0 <= p.box[1] < p.box[3] <= y1


def test_views_share_instance_and_labels(serial):
    _, cat = serial
    groups = defaultdict(list)
    for it in cat:
        groups[it.instance_id].append(it)
    multi = [g for g in groups.values() if len(g) > 1]
    assert multi
    for views in multi:
        assert all(v.attributes == views[0].attributes for v in views)
        assert all([p.attributes for p in v.parts] == [p.attributes for p in views[0].parts] for v in views)
        assert len({v.image.read_bytes() for v in views}) == len(views)  # different nuisance, different image
    assert [it.id for it in cat] == sorted(it.id for it in cat)


def test_image_size_and_contact_sheet(tmp_path):
    cat = generate(n=6, seed=2, out=tmp_path, workers=1, contact_sheet=True, image_size=[128, 144])
    with Image.open(cat.items[0].image) as im:
        assert im.size == (128, 144)
    assert (tmp_path / "contact_sheet.png").is_file()
    sheet = make_contact_sheet(cat, tmp_path / "boxes.png", n=4, boxes=True)
    with Image.open(sheet) as im:
        assert im.width > 4 * 128


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(VestisError, match="at least 1 image"):
        generate(n=0, seed=0, out=tmp_path)
    with pytest.raises(VestisError, match="WIDTH HEIGHT"):
        generate(n=2, seed=0, out=tmp_path, image_size=(8, 8))
    with pytest.raises(VestisError, match="scene must be one of default, cluttered"):
        generate(n=2, seed=0, out=tmp_path, scene="busy")


def test_colours_are_the_schema_colours():
    assert tuple(COLOURS) == ATTRIBUTES["colour"]


# --- the "cluttered" scene ---------------------------------------------------------------------------
def _views(scene: str, n: int = 24):
    return [render(sample_look(np.random.default_rng([7, i]), False), np.random.default_rng([8, i]), DEFAULT_SIZE,
                   scene) for i in range(n)]


def _area(box) -> float:
    x0, y0, x1, y1 = box
    return (x1 - x0) * (y1 - y0) / (DEFAULT_SIZE[0] * DEFAULT_SIZE[1])


def test_cluttered_scenes_keep_the_garments_boxes_and_add_distractors_beside_it(monkeypatch):
    """The distractors are drawn into the background: without them (`_draw_clutter` a no-op) the same view has
    the same boxes and regions; with them, many pixels outside the garment's box change."""
    cluttered = _views("cluttered")
    monkeypatch.setattr(scene_module, "_draw_clutter", lambda bg, *a: bg)
    bare = _views("cluttered")
    changed = []
    for c, b in zip(cluttered, bare):
        assert c.boxes == b.boxes and c.regions == b.regions
        diff = np.abs(np.asarray(c.image, np.int16) - np.asarray(b.image, np.int16)).max(-1) > 40
        x0, y0, x1, y1 = (int(round(v)) for v in c.boxes[0])
        outside = np.ones_like(diff)
        outside[y0:y1, x0:x1] = False
        changed.append(diff[outside].mean())
    assert np.median(changed) > 0.05, changed  # a distractor covers a good part of the rest of the picture


def test_cluttered_scenes_frame_the_garment_smaller():
    default = [_area(v.boxes[0]) for v in _views("default")]
    cluttered = [_area(v.boxes[0]) for v in _views("cluttered")]
    assert np.mean(cluttered) < 0.6 * np.mean(default), (np.mean(cluttered), np.mean(default))


def test_cluttered_catalogue_is_deterministic_and_differs_from_default(serial, tmp_path):
    generate(n=12, seed=1, out=tmp_path / "a", workers=1, scene="cluttered")
    generate(n=12, seed=1, out=tmp_path / "b", workers=2, scene="cluttered")
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a == b
    out, cat = serial
    default = digests(out)
    assert all(a[k] != default[k] for k in a if k.startswith("images/"))
    labels = Catalog.load(tmp_path / "a")
    assert [it.attributes for it in labels] == [it.attributes for it in list(cat)[:12]]  # the same garments
