"""Shopper-photo views in training (`vestis train --shopper-views K`, issue 18): the content-keyed view files, the
joined TrainData (domains, label sets, balanced batches), and the command line end to end (views made and encoded
once, then reused by a second run)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from vestis.catalog import AttributeSchema, Catalog, Item
from vestis.models import TrainData
from vestis.models.loop import NO_LOSS, data_batches
from vestis.train import MIX_DOMAIN, VIEWS_DOMAIN, join_train_data, mix_train_data
from vestis.vision.shopper_views import VERSION, shopper_view_catalog, views_folder

from test_train_mix import MAPPING, SCHEMA, _fixture, _levels


def _packshot(path, colour):
    a = np.full((80, 60, 3), 255, np.uint8)
    a[20:60, 15:45] = colour  # a garment on white
    Image.fromarray(a).save(path)
    return path


def test_shopper_view_catalog_is_content_keyed_and_resumable(tmp_path):
    schema = AttributeSchema({"colour": ["red", "blue"]})
    red = _packshot(tmp_path / "a.png", (200, 20, 20))
    copy = tmp_path / "copy.png"
    copy.write_bytes(red.read_bytes())  # another item with the very same photo
    blue = _packshot(tmp_path / "b.png", (20, 20, 200))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    part = Catalog([Item("a", red, {"colour": "red"}), Item("c", copy, {"colour": "red"}),
                    Item("b", blue, {"colour": "blue"}, instance_id="prod-b"), Item("x", broken, {"colour": "red"}),
                    Item("gone", tmp_path / "missing.png", {"colour": "red"})], schema)
    cache = tmp_path / "cache"
    views, rec = shopper_view_catalog(part, 2, cache, seed=3, progress=False)
    assert sorted(it.id for it in views) == ["a~s1", "a~s2", "b~s1", "b~s2", "c~s1", "c~s2"]
    assert rec["items"] == 4 and rec["views"] == 6 and rec["made_now"] == 4  # a and c share their two files
    assert views["a~s1"].image == views["c~s1"].image != views["a~s2"].image
    assert views["a~s1"].image.parent == views_folder(cache) and VERSION in str(views_folder(cache))
    assert views["b~s2"].attributes == {"colour": "blue"} and views["b~s2"].instance_id == "prod-b"
    assert views["a~s1"].instance_id == "a" and views.split_of("a~s1") == "train"
    v = np.asarray(Image.open(views["b~s1"].image).convert("RGB"), np.float32)
    assert v.shape == (80, 60, 3)
    corner = v[:6, :6].reshape(-1, 3)
    assert np.abs(corner - 255).mean() > 15  # the white surround became something else
    # a re-run makes nothing; another seed makes new views
    again, rec2 = shopper_view_catalog(part, 2, cache, seed=3, progress=False)
    assert rec2["made_now"] == 0 and [it.image for it in again] == [it.image for it in views]
    other, rec3 = shopper_view_catalog(part, 1, cache, seed=4, progress=False)
    assert rec3["made_now"] == 2 and other["a~s1"].image != views["a~s1"].image
    with pytest.raises(Exception, match="at least 1"):
        shopper_view_catalog(part, 0, cache)


def test_join_train_data_keeps_domains_sets_and_balances_three_ways():
    packshots, photos, feats, _, _ = _fixture()
    n0 = len(packshots)
    rng = np.random.default_rng(1)
    nv = 60
    views = TrainData([f"p{i}~s1" for i in range(nv)], _levels(rng.normal(0, 1, (nv, 8, 2, 2)).astype(np.float16)),
                      packshots.labels[:nv].copy(), np.full(nv, -1), SCHEMA)
    joined = join_train_data(packshots, views, VIEWS_DOMAIN)
    assert joined.n_primary == n0 and joined.mixed and len(joined) == n0 + nv
    assert (joined.domains[n0:] == VIEWS_DOMAIN).all() and np.array_equal(joined.labels[n0:], packshots.labels[:nv])
    assert np.array_equal(joined.maps["s16"][n0:], views.maps["s16"])
    assert joined.primary().labels.shape == (n0, 2)
    # then the photos (--mix): their label sets are kept, the earlier rows get all-False sets
    mixed, _ = mix_train_data(joined, photos, feats, MAPPING)
    assert len(mixed) == n0 + nv + 120 and mixed.n_primary == n0
    assert (mixed.domains[n0 + nv:] == MIX_DOMAIN).all()
    assert not mixed.label_sets[0][:n0 + nv].any() and mixed.label_sets[0][n0 + nv:].any()
    assert (mixed.labels[n0 + nv:, 1] == NO_LOSS).all()
    batch = next(data_batches(mixed, 30, np.random.default_rng(0)))
    assert [(mixed.domains[batch] == d).sum() for d in (0, MIX_DOMAIN, VIEWS_DOMAIN)] == [10, 10, 10]


def test_cli_train_with_shopper_views_records_and_reuses_them(tiny_pipeline, train_tiny, tmp_path):
    root, cat, run, idx, cache = tiny_pipeline
    config = {"epochs": 1, "hidden": 16, "batch_size": 32, "attributes": ["category", "colour"]}
    first = train_tiny(tmp_path, cat, "attribute_baseline", config, cache, "--shopper-views", "1",
                       "--views-seed", "7", name="views1")
    rec = json.loads((first / "run.json").read_text())["history"]["shopper_views"]
    trained = json.loads((first / "run.json").read_text())["history"]["train_items"]
    assert rec["views_per_image"] == 1 and rec["seed"] == 7 and rec["items"] == trained
    assert rec["views_trained_on"] == rec["views"] == trained and rec["made_now"] == trained
    # a second run with another model reuses the files (and their cached maps)
    second = train_tiny(tmp_path, cat, "global_embed", {"epochs": 1, "batch_size": 32, "attributes": ["category"]},
                        cache, "--shopper-views", "1", "--views-seed", "7", name="views2")
    rec2 = json.loads((second / "run.json").read_text())["history"]["shopper_views"]
    assert rec2["made_now"] == 0 and rec2["views_trained_on"] == trained
