"""`Engine.keep_item_queries`: the catalogue items' query side (attribute probabilities, the model's map summary)
computed once before serving.

Item-id searches then read them instead of running the classifiers and reading the feature cache, and every answer
stays exactly what it was: alone and batched, labels on and off, every flat mode, a batch mixing kept and unkept
items, and an item whose image file changes after keeping (its new content is looked up again, never its old row).
`AttributeBaseline.query_summary` (the pooled stride-32 map as a 1 x 1 map) plans exactly as the whole map."""

from __future__ import annotations

import shutil

import pytest

from vestis.catalog import Catalog
from vestis.engine import QUERY_BLOCK, Engine

from test_serve_batching import _key, _queries


@pytest.fixture
def fresh(tiny_pipeline):
    """A new engine over the tiny pipeline (keeping mutates the engine; the module-wide one stays untouched)."""
    root, cat, run, idx, cache = tiny_pipeline
    return Engine.load(run, idx, cache_dir=cache)


def _count_forward(engine, monkeypatch) -> list[int]:
    rows: list[int] = []
    model = engine.model
    real = type(model).attribute_probabilities
    monkeypatch.setattr(type(model), "attribute_probabilities",
                        lambda self, maps: rows.append(len(next(iter(maps.values())))) or real(self, maps))
    return rows


def _count_maps(engine, monkeypatch) -> list[int]:
    read: list[int] = []
    real = Engine.item_maps
    monkeypatch.setattr(Engine, "item_maps", lambda self, ids, *a, **kw: read.append(len(ids)) or real(self, ids, *a, **kw))
    return read


def test_kept_queries_give_the_same_answers_without_the_classifiers_or_the_cache(fresh, monkeypatch):
    queries = _queries(fresh)
    alone = [_key(fresh.search(**q)) for q in queries]
    batched = [_key(r) for r in fresh.search_batch(queries)]
    n = fresh.keep_item_queries()
    cached = {it.id for it in fresh.catalog if fresh._cache.get(fresh._item_hash(it.id)) is not None}
    assert n == len(cached) > 0  # items without cached maps are skipped (a search encodes them)
    assert fresh.kept_bytes() == n * 4 * (sum(len(fresh.model.schema.values(a)) + 1 for a in fresh.model.schema.attributes)
                                          + fresh.model.channels["s32"])  # probabilities and the pooled s32 map
    forward, read = _count_forward(fresh, monkeypatch), _count_maps(fresh, monkeypatch)
    assert [_key(fresh.search(**q)) for q in queries] == alone
    assert [_key(r) for r in fresh.search_batch(queries)] == batched
    forward.clear(), read.clear()
    kept = [q for q in queries if q["item_id"] in cached]
    assert len(kept) >= len(queries) // 3
    assert [_key(r) for r in fresh.search_batch(kept)] == [b for q, b in zip(queries, batched) if q in kept]
    assert forward == [] and read == []  # every kept query's probabilities and summary read, none computed
    photo = fresh.catalog[queries[0]["item_id"]].image.read_bytes()
    fresh.search(image=photo)
    assert forward == [1]  # an upload is not a catalogue item: computed as before


def test_a_batch_of_kept_and_unkept_items_computes_only_the_unkept(fresh, monkeypatch):
    queries = [q for q in _queries(fresh) if not q.get("mode", "manipulate").startswith("attribute")]
    expected = [_key(r) for r in fresh.search_batch(queries)]
    first = [it.id for it in fresh.catalog][:2]
    assert fresh.keep_item_queries(limit=2) == 2
    assert fresh.keep_item_queries(limit=0) == 2  # 0: nothing more
    forward, read = _count_forward(fresh, monkeypatch), _count_maps(fresh, monkeypatch)
    others = [q for q in queries if q["item_id"] not in first]
    mixed = [{"item_id": first[0]}, others[0], {"item_id": first[1], "k": 3}, others[1]]
    want = [_key(fresh.search(**q)) for q in mixed]
    forward.clear(), read.clear()
    assert [_key(r) for r in fresh.search_batch(mixed)] == want
    assert forward == [QUERY_BLOCK]  # the two unkept items, one padded block
    assert read == [1, 1]  # only the unkept items' maps were read
    assert [_key(r) for r in fresh.search_batch(queries)] == expected
    n = fresh.keep_item_queries()  # the rest added to the kept ones
    assert n > 2
    assert [_key(r) for r in fresh.search_batch(queries)] == expected


def test_an_item_whose_image_changes_is_looked_up_by_its_new_content(tiny_pipeline, tmp_path):
    root, cat, run, idx, cache = tiny_pipeline
    copy = tmp_path / "catalogue"
    shutil.copytree(cat, copy)
    engine = Engine.load(run, idx, catalog=Catalog.load(copy), cache_dir=cache)
    assert engine.keep_item_queries() > 0
    a, b = [it for it in engine.catalog if engine.catalog.split_of(it.id) == "gallery"][:2]  # both kept
    before = _key(engine.search(item_id=a.id, mode="visual"))
    a.image.write_bytes(b.image.read_bytes())  # a now shows b's picture (cached maps, a kept row under b's content)
    unkept = Engine.load(run, idx, catalog=Catalog.load(copy), cache_dir=cache)
    now = engine.search(item_id=a.id, manipulations={"colour": engine.model.schema.values("colour")[0]})
    assert _key(now) == _key(unkept.search(item_id=a.id, manipulations={"colour": engine.model.schema.values("colour")[0]}))
    assert now.predicted == unkept.search(item_id=b.id).predicted  # b's probabilities: the picture's, not a's old row
    assert _key(engine.search(item_id=a.id, mode="visual")) != before


def test_serve_refuses_a_negative_precompute_count(tiny_pipeline, capsys):
    from vestis.cli import main

    root, cat, run, idx, cache = tiny_pipeline
    assert main(["serve", "--run", str(run), "--index", str(idx), "--cache", str(cache), "--port", "0",
                 "--precompute-items", "-1"]) != 0
    assert "--precompute-items must be at least 0" in capsys.readouterr().err


def test_attribute_baseline_plans_its_summary_exactly_as_the_whole_map(engine):
    """Every mode's probes, and the attribute probabilities, from the 1 x 1 summary equal those from the maps, bit for
    bit (a block of QUERY_BLOCK rows, as the engine runs both)."""
    import numpy as np
    import torch

    from vestis.engine import _pad
    from vestis.models import Request

    model = engine.model
    ids = [it.id for it in engine.catalog][:3]
    maps = _pad(engine.item_maps(ids, levels=engine.search_levels), QUERY_BLOCK)
    summary = model.query_summary(maps)
    assert summary["s32"].shape == (QUERY_BLOCK, model.channels["s32"], 1, 1)
    colour = model.schema.values("colour")[0]
    with torch.inference_mode():
        for a, p in model.attribute_probabilities(maps).items():
            assert torch.equal(p, model.attribute_probabilities(summary)[a])
        for mode in model.modes():
            manip = [{"colour": colour}] * QUERY_BLOCK if mode == "manipulate" else [{}] * QUERY_BLOCK
            whole, small = model.plan(maps, Request(mode, manip)), model.plan(summary, Request(mode, manip))
            assert len(whole) == len(small) > 0
            for w, s in zip(whole, small):
                assert w.space == s.space and w.filters == s.filters and np.array_equal(w.vectors, s.vectors), mode


def test_prepare_items_checks_each_image_once_and_keeps_answers(fresh, tmp_path):
    """`Service.prepare_items`: every item's image path checked and answer row built before serving; items whose image
    lies outside the allowed folders are left out (and still refused when asked for); answers unchanged."""
    from fastapi import HTTPException

    from vestis.serve.app import MAX_PIXELS, MAX_UPLOAD_BYTES, SearchRequest, Service

    items = fresh.catalog.items
    svc = Service(fresh, max_upload_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_PIXELS, image_roots=None)
    req = SearchRequest(item_id=items[1].id, manipulations={"colour": fresh.model.schema.values("colour")[0]})
    before = svc.search(req, None)
    assert svc.prepare_items(limit=5) == 5
    assert set(svc._item_rows) >= {it.id for it in items[:5]} and set(svc._image_paths) >= {it.id for it in items[:5]}
    after = svc.search(req, None)
    before.pop("took_ms"), after.pop("took_ms")
    assert after == before
    assert svc.prepare_items() == len(items)
    elsewhere = Service(fresh, max_upload_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_PIXELS, image_roots=[tmp_path])
    assert elsewhere.prepare_items() == 0 and not elsewhere._image_paths
    with pytest.raises(HTTPException) as e:
        elsewhere.image_path(items[0])
    assert e.value.status_code == 404 and "outside" in e.value.detail
