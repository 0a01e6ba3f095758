"""`vestis synth --collages-from`: collages of a (tiny, fake) catalogue's photos, in the generic format, each garment
with its labels and the exact box of its pasted photo, training collages from train photos only and evaluation
collages from query photos only."""

import json

import numpy as np
import pytest
from PIL import Image

from vestis.catalog import AttributeSchema, Catalog, Item
from vestis.catalog.readers import generic
from vestis.cli import main

SUB = {"top": "Topwear", "bottom": "Bottomwear", "shoes": "Shoes", "bag": "Bags"}


@pytest.fixture
def fake(tmp_path):
    """Two photos per role and split, each one flat colour of its own (so a pasted photo tells its source)."""
    items, colours = [], {}
    rng = np.random.default_rng(0)
    for split in ("train", "query", "gallery"):
        for role, sub in SUB.items():
            for j in range(2):
                iid = f"{split}-{role}-{j}"
                colour = tuple(int(v) for v in rng.integers(0, 200, 3))
                colours[iid] = colour
                path = tmp_path / "src" / f"{iid}.png"
                path.parent.mkdir(exist_ok=True)
                Image.new("RGB", (60, 80), colour).save(path)
                items.append(Item(iid, path, {"subCategory": sub, "baseColour": f"c{j}"}, split=split))
    schema = AttributeSchema({"subCategory": list(SUB.values()), "baseColour": ["c0", "c1"]})
    generic.write(Catalog(items, schema), tmp_path / "src" / "catalog.jsonl")
    return tmp_path / "src", colours


def test_collages_keep_labels_boxes_and_splits(fake, tmp_path, capsys):
    src, colours = fake
    out = tmp_path / "collages"
    assert main(["synth", "--collages-from", str(src), "-n", "6", "--eval-collages", "4", "--seed", "3",
                 "--out", str(out)]) == 0
    assert "6 training, 0 validation and 4 evaluation collages" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "catalog.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(r["attributes"] == {} for r in rows)
    cat = Catalog.load(out)
    assert len(cat.split("train")) == 6 and len(cat.split("query")) == 4
    assert cat.schema.attributes == ["subCategory", "baseColour"]
    extras = 0
    for it in cat:
        names = [p.name for p in it.parts]
        assert names[:3] == ["top", "bottom", "shoes"] and len(names) in (3, 4)
        extras += len(names) == 4
        img = np.asarray(Image.open(it.image).convert("RGB")).astype(int)
        assert img.shape == (320, 256, 3)
        for p in it.parts:
            assert p.attributes["subCategory"] == SUB[p.name]
            x0, y0, x1, y1 = (int(v) for v in p.box)
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 320
            # the box holds exactly one flat photo (JPEG noise aside) of the collage's own split and role
            inside = img[y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3).mean(0)
            source = min(colours, key=lambda i: np.abs(np.array(colours[i]) - inside).sum())
            assert np.abs(np.array(colours[source]) - inside).max() < 6
            assert source.startswith(f"{it.split}-{p.name}-")
            assert p.attributes["baseColour"] == f"c{source[-1]}"
            # and white just outside it (within the collage), where there is room
            if x1 + 3 < 256 and x1 % 128 < 125:
                assert (img[(y0 + y1) // 2, x1 + 2] > 240).all()
    assert extras > 0  # some collages carry a bag


def test_singles_are_train_photos_with_their_labels(fake, tmp_path):
    src, _ = fake
    from vestis.catalog.collages import make_collages

    cat = make_collages(Catalog.load(src), tmp_path / "c", 2, 1, singles=3)
    singles = [it for it in cat if not it.parts]
    assert len(singles) == 3 and len(cat) == 6
    source = Catalog.load(src)
    for it in singles:
        orig = source[it.id[1:]]
        assert cat.split_of(it.id) == "train" and source.split_of(orig.id) == "train"
        assert it.attributes == orig.attributes and it.image.resolve() == orig.image.resolve()


def test_collages_need_the_roles(fake, tmp_path):
    src, _ = fake
    from vestis.catalog.collages import make_collages
    from vestis.errors import VestisError

    cat = Catalog.load(src)
    no_shoes = Catalog([it for it in cat if it.attributes["subCategory"] != "Shoes"], cat.schema)
    with pytest.raises(VestisError, match="top, a bottom and shoes"):
        make_collages(no_shoes, tmp_path / "x", 2, 0)
    with pytest.raises(VestisError, match="subCategory"):
        make_collages(cat.with_attributes(["baseColour"]), tmp_path / "y", 2, 0)


def _source(img, box, colours):
    x0, y0, x1, y1 = (int(v) for v in box)
    inside = img[y0 + 2:y1 - 2, x0 + 2:x1 - 2].reshape(-1, 3).mean(0)
    source = min(colours, key=lambda i: np.abs(np.array(colours[i]) - inside).sum())
    assert np.abs(np.array(colours[source]) - inside).max() < 6
    return source


def test_validation_collages_use_held_out_train_photos(fake, tmp_path, capsys):
    """Validation collages cut only train-split photos, none of which a training collage or a single uses (and none
    from the query split); the same seed gives the same collages."""
    src, colours = fake
    out = tmp_path / "collages"
    assert main(["synth", "--collages-from", str(src), "-n", "12", "--eval-collages", "3", "--val-collages", "5",
                 "--singles", "4", "--seed", "3", "--out", str(out)]) == 0
    assert "12 training, 5 validation and 3 evaluation collages" in capsys.readouterr().out
    cat = Catalog.load(out)
    assert len(cat.split("val")) == 5 and len(cat.split("query")) == 3 and len(cat.split("train")) == 16
    used = {"train": set(), "val": set(), "query": set()}
    for it in cat:
        if not it.parts:  # a single: its id is "p" + the source photo's
            used["train"].add(it.id[1:])
            continue
        img = np.asarray(Image.open(it.image).convert("RGB")).astype(int)
        for p in it.parts:
            used[cat.split_of(it.id)].add(_source(img, p.box, colours))
    assert used["val"] and all(s.startswith("train-") for s in used["val"])
    assert all(s.startswith("train-") for s in used["train"]) and all(s.startswith("query-") for s in used["query"])
    assert not used["val"] & used["train"]
    # one of each role's two train photos is held out: every role of the validation collages has its own photo
    assert {s.rsplit("-", 1)[0] for s in used["val"]} >= {"train-top", "train-bottom", "train-shoes"}
    again = tmp_path / "again"
    main(["synth", "--collages-from", str(src), "-n", "12", "--eval-collages", "3", "--val-collages", "5",
          "--singles", "4", "--seed", "3", "--out", str(again)])
    assert (again / "catalog.jsonl").read_text().replace(str(again), "") == \
        (out / "catalog.jsonl").read_text().replace(str(out), "")
    for f in sorted((out / "images").iterdir()):
        assert f.read_bytes() == (again / "images" / f.name).read_bytes()


def test_validation_needs_two_photos_per_role(fake, tmp_path):
    src, _ = fake
    from vestis.catalog.collages import make_collages
    from vestis.errors import VestisError

    cat = Catalog.load(src)
    one_top = Catalog([it for it in cat if it.id != "train-top-1"], cat.schema)
    make_collages(one_top, tmp_path / "ok", 2, 1)  # nothing held out: one top is enough
    with pytest.raises(VestisError, match="two train-split photos of role 'top'"):
        make_collages(one_top, tmp_path / "x", 2, 1, n_val=1)
