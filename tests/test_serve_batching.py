"""Concurrent item-id searches answered in one batch give exactly the one-at-a-time answers:

- `Engine.search_batch` against `Engine.search` per query (tiny synthetic pipeline): manipulations (one and two
  values), labels on and off, filters, every flat mode, several k, unknown items and values mixed in, batches
  larger than a block;
- the model's query side in fixed blocks (`QUERY_BLOCK`): a row's probabilities the same alone and among other
  rows, at a realistic size (1280 channels, 512 hidden units), where MKL's kernels for 1-3 rows round otherwise;
- `SearchBatcher`: requests that arrive while a batch runs are answered together (engine calls counted), each
  answer equal to `Service.search`'s, errors to their own request only."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi import HTTPException  # noqa: E402

from vestis.engine import QUERY_BLOCK, Engine, EngineError, Result  # noqa: E402
from vestis.errors import VestisError  # noqa: E402


def _queries(engine) -> list[dict]:
    schema, cat_schema = engine.model.schema, engine.catalog.schema
    gallery = sorted(engine.spaces["main"].ids())
    items = [it.id for it in engine.catalog if engine.catalog.split_of(it.id) == "query"][:5] + gallery[:3]
    colours, cats = schema.values("colour"), schema.values("category")
    fa = cat_schema.attributes[0]
    out = []
    for i, iid in enumerate(items):
        out += [{"item_id": iid},
                {"item_id": iid, "k": 7, "manipulations": {"colour": colours[i % len(colours)]}},
                {"item_id": iid, "manipulations": {"colour": colours[(i + 1) % len(colours)]}},  # same as a neighbour's
                {"item_id": iid, "k": 12, "manipulations": {"category": cats[i % len(cats)],
                                                            "colour": colours[(i + 2) % len(colours)]}},
                {"item_id": iid, "manipulations": {"colour": colours[i % len(colours)]}, "labels": False},
                {"item_id": iid, "filters": {fa: list(cat_schema.values(fa)[:2])}, "k": 5,
                 "manipulations": {"colour": colours[(i + 3) % len(colours)]}},
                {"item_id": iid, "mode": "visual", "k": 4},
                {"item_id": iid, "mode": "same_item"},
                {"item_id": iid, "mode": f"attribute:{schema.attributes[0]}", "k": 3}]
    return out


def _key(r: Result):
    """Everything a Result says, floats exactly."""
    return ([(g.label, g.box, g.score, [(h.id, h.score, h.matches, h.part) for h in g.hits]) for g in r.groups],
            r.predicted, r.labels, r.note)


def test_search_batch_answers_exactly_as_search_alone(engine):
    queries = _queries(engine)
    alone = [engine.search(**q) for q in queries]
    bad = [{"item_id": "no-such-item"}, {"item_id": queries[0]["item_id"], "manipulations": {"colour": "plaid"}},
           {"item_id": queries[0]["item_id"], "k": 0}, {"item_id": queries[0]["item_id"], "mode": "nope"}]
    rng = np.random.default_rng(0)
    for size in (2, 3, QUERY_BLOCK, QUERY_BLOCK + 3, len(queries)):
        order = rng.permutation(len(queries))[:size].tolist()
        mixed = [queries[i] for i in order]
        slots = sorted(rng.choice(size + 1, 2, replace=False).tolist())
        for j, s in enumerate(slots):  # bad queries in between: each fails alone
            mixed.insert(s + j, bad[(size + j) % len(bad)])
        got = engine.search_batch(mixed)
        assert len(got) == len(mixed)
        it = iter(order)
        for q, r in zip(mixed, got):
            if q in bad:
                assert isinstance(r, VestisError)
                with pytest.raises(VestisError, match=str(r)[:30].replace("(", r"\(").replace("[", r"\[")):
                    engine.search(**q)
            else:
                assert _key(r) == _key(alone[next(it)]), q


def test_search_batch_shares_one_model_pass_and_one_search_per_request(engine, monkeypatch):
    """A batch of queries asking the same thing runs the classifiers once per block and the index once."""
    queries = _queries(engine)
    same = [{"item_id": q["item_id"], "manipulations": {"colour": engine.model.schema.values("colour")[0]}}
            for q in queries[::9][:QUERY_BLOCK]]
    assert len(same) == QUERY_BLOCK
    forward, searched = [], []
    model = engine.model
    real_probs = type(model).attribute_probabilities
    monkeypatch.setattr(type(model), "attribute_probabilities",
                        lambda self, maps: forward.append(len(maps["s32"])) or real_probs(self, maps))
    label_index = engine.spaces["labels"]
    real_search = type(label_index).search
    monkeypatch.setattr(type(label_index), "search",
                        lambda self, q, k, **kw: searched.append(len(q)) or real_search(self, q, k, **kw))
    engine.search_batch(same)
    assert forward == [QUERY_BLOCK]  # one pass of the classifiers for the whole block
    assert searched[0] == QUERY_BLOCK  # one index search for every query asking the same values
    forward.clear()
    engine.search(**same[0])
    assert forward == [QUERY_BLOCK]  # alone: the same block (padded), so the same rounding
    forward.clear()
    photo = engine.catalog[same[0]["item_id"]].image.read_bytes()
    engine.search(image=photo, manipulations=same[0]["manipulations"])
    assert forward == [1]  # an uploaded photo is never batched: its one row, no padding


def test_photo_search_answers_as_the_query_file_runner(engine):
    """A photo searched alone (no block) ranks as the protocol runner ranks it within a batch of photos."""
    from vestis.eval.runners import rank_queries

    items = [it for it in engine.catalog if engine.catalog.split_of(it.id) == "query"][:4]
    colour = engine.model.schema.values("colour")[1]
    queries = [{"query_id": f"q{i}", "image": str(it.image), "manipulations": {"colour": colour}}
               for i, it in enumerate(items)]
    rows = rank_queries(engine, queries, k=10, progress=False, labels=True)
    for q, row in zip(queries, rows):
        alone = engine.search(image=q["image"], manipulations=q["manipulations"], k=10)
        assert [h.id for h in alone.hits] == row["ranked"], q["query_id"]


def test_query_block_rows_do_not_depend_on_their_neighbours():
    """At a realistic size (MKL multiplies 1-3 rows with other kernels, which round differently), a row's attribute
    probabilities in a fixed block are the same alone, anywhere in a batch, and in a batch of more than a block."""
    from vestis.catalog.schema import AttributeSchema
    from vestis.models.attribute_baseline import AttributeBaseline

    schema = AttributeSchema({"colour": [f"c{i}" for i in range(40)], "category": [f"k{i}" for i in range(120)],
                              "gender": ["a", "b", "c", "d", "e"]})
    torch.manual_seed(0)
    model = AttributeBaseline(schema, {"s32": 1280}, {"hidden": 512}).eval()
    host = SimpleNamespace(model=model)
    x = torch.randn(QUERY_BLOCK + 5, 1280, 4, 4).abs()
    batch = Engine._probabilities(host, {"s32": x}, QUERY_BLOCK)
    for i in range(len(x)):
        alone = Engine._probabilities(host, {"s32": x[i:i + 1]}, QUERY_BLOCK)
        pair = Engine._probabilities(host, {"s32": x[[i, (i + 1) % len(x)]]}, QUERY_BLOCK)
        for a in alone:
            assert torch.equal(alone[a][0], batch[a][i]) and torch.equal(pair[a][0], batch[a][i]), (i, a)


@pytest.fixture(scope="module")
def service(engine):
    from vestis.serve.app import MAX_PIXELS, MAX_UPLOAD_BYTES, Service

    return Service(engine, max_upload_bytes=MAX_UPLOAD_BYTES, max_pixels=MAX_PIXELS, image_roots=None)


def test_batcher_answers_waiting_requests_together(service, engine, monkeypatch):
    """While the engine is busy, requests queue; the next batch answers all of them in one engine call, each with
    `Service.search`'s answer; a bad request fails alone."""
    from vestis.serve.app import SearchRequest

    reqs = [SearchRequest.model_validate({k: (v if k != "labels" else ("on" if v else "off")) for k, v in q.items()})
            for q in _queries(engine)[:6]]
    reqs.insert(3, SearchRequest(item_id="no-such-item"))
    want = [service.search(r, None) if r.item_id != "no-such-item" else None for r in reqs]
    calls = []
    real = engine.search_batch
    monkeypatch.setattr(engine, "search_batch", lambda qs: calls.append(len(qs)) or real(qs))
    held, release = threading.Event(), threading.Event()

    def hold():
        with service.lock:
            held.set()
            release.wait(10)

    async def main():
        first = asyncio.ensure_future(service.search_async(reqs[0]))  # starts at once, then waits for the engine
        await asyncio.sleep(0.2)
        rest = [asyncio.ensure_future(service.search_async(r)) for r in reqs[1:]]
        await asyncio.sleep(0.2)
        release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    got = asyncio.run(main())
    t.join(10)
    # the lone first request, then everything that arrived meanwhile together (the unknown item is the API's 404,
    # found before the engine)
    assert calls == [1, len(reqs) - 2]
    for r, g, w in zip(reqs, got, want):
        if w is None:
            assert isinstance(g, HTTPException) and g.status_code == 404
        else:
            g.pop("took_ms"), w.pop("took_ms")
            assert g == w


def test_batcher_keeps_batches_within_the_block(service, engine, monkeypatch):
    from vestis.serve.app import MAX_BATCH, SearchRequest

    item = sorted(engine.spaces["main"].ids())[0]
    calls = []
    real = engine.search_batch
    monkeypatch.setattr(engine, "search_batch", lambda qs: calls.append(len(qs)) or real(qs))

    async def main():
        with service.lock:  # every request queues before the first batch can run
            tasks = [asyncio.ensure_future(service.search_async(SearchRequest(item_id=item, k=3)))
                     for _ in range(2 * MAX_BATCH + 1)]
            await asyncio.sleep(0.1)
        return await asyncio.gather(*tasks)

    answers = asyncio.run(main())
    assert max(calls) == MAX_BATCH and sum(calls) == 2 * MAX_BATCH + 1 and len(calls) <= 4
    assert len({tuple(h["id"] for h in a["results"]) for a in answers}) == 1
    assert service.batcher.searches >= 2 * MAX_BATCH + 1


def test_searches_read_only_the_levels_the_model_reads(engine, monkeypatch):
    """`search` and `search_batch` convert only `Engine.search_levels` of the cached maps (the model's levels and
    s32), and answer exactly as with every level."""
    queries = _queries(engine)[:12]
    assert engine.search_levels == frozenset((*engine.model.levels, "s32"))
    read = []
    real = Engine.item_maps
    monkeypatch.setattr(Engine, "item_maps", lambda self, ids, encode_missing=True, levels=None: read.append(
        sorted(m := real(self, ids, encode_missing, levels))) or m)
    narrow = [_key(engine.search(**q)) for q in queries]
    batched = [_key(r) for r in engine.search_batch(queries)]
    assert read and all(lv == sorted(engine.search_levels) for lv in read)
    every = real(engine, [queries[0]["item_id"]])
    assert set(every) > engine.search_levels  # the tiny pipeline caches more levels than the model reads
    monkeypatch.setattr(engine, "search_levels", None)
    assert narrow == batched == [_key(engine.search(**q)) for q in queries]
    assert sorted(read[-1]) == sorted(every)


def test_search_batch_refuses_a_query_without_item(engine):
    (r,) = engine.search_batch([{"manipulations": {}}])
    assert isinstance(r, EngineError)


def test_served_concurrent_answers_equal_one_at_a_time(tiny_pipeline, engine):
    """A real `vestis serve`: the same requests sent one at a time and then from 8 connections at once give the same
    JSON, and the concurrent ones were batched; the bench's own client counts the bad answers."""
    import concurrent.futures
    import os
    from pathlib import Path

    import httpx

    from vestis.bench import serve as bench

    root, cat, run, idx, cache = tiny_pipeline
    bodies = [{k: (v if k != "labels" else ("on" if v else "off")) for k, v in q.items()} for q in _queries(engine)]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    server = bench._start(run, idx, cat, cache, bench._free_port(), 1, env)
    try:
        base = bench._base_of(server)
        with httpx.Client(base_url=base, timeout=60) as c:
            alone = [c.post("/search", json=b).json() for b in bodies]
        before = bench._batched(base)

        def ask(b):
            with httpx.Client(base_url=base, timeout=60) as c:
                return [c.post("/search", json=x).json() for x in b]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = sum(pool.map(ask, [bodies[i::8] for i in range(8)]), [])
        after = bench._batched(base)
        order = sum([list(range(len(bodies)))[i::8] for i in range(8)], [])
        for j, g in zip(order, got):
            a = alone[j]
            a.pop("took_ms"), g.pop("took_ms")
            assert g == a, bodies[j]
        searches, batches = after[0] - before[0], after[1] - before[1]
        assert searches == len(bodies) and batches < searches  # some arrived together
        lat, n_err, wall, errs = bench._run_json(base, bodies[:10] + [{"item_id": "no-such-item"}] * 2, 4)
        assert n_err == 2 and all(e.startswith("404") for e in errs) and (lat > 0).all() and wall > 0
    finally:
        bench._stop(server)


def test_search_many_reports_each_failure_to_its_own_request(service, engine, monkeypatch):
    """An unexpected error in one request's own part (here: before the engine) fails that request only."""
    from vestis.serve.app import SearchRequest

    items = sorted(engine.spaces["main"].ids())[:3]
    reqs = [SearchRequest(item_id=i, k=4) for i in items]
    want = [service.search(r, None) for r in reqs]
    real = type(service)._prepare

    def prepare(self, req, image):
        if req.item_id == items[1]:
            raise RuntimeError("boom")
        return real(self, req, image)

    monkeypatch.setattr(type(service), "_prepare", prepare)
    got = service.search_many(reqs)
    assert isinstance(got[1], RuntimeError)
    for g, w in ((got[0], want[0]), (got[2], want[2])):
        g.pop("took_ms"), w.pop("took_ms")
        assert g == w
