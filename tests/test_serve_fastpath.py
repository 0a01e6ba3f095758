"""The serving shortcuts answer exactly as the paths they shortcut (tiny synthetic pipeline):

- POST /search with a JSON body through `SearchFastPath` against the FastAPI route itself (a body sent without a
  Content-Type goes to the route: the middleware takes only application/json), for answers and for every kind of
  error;
- `Engine.search`, which hands the query's attribute probabilities to the model's plan, against the plan that
  computes them itself;
- `Engine._describe` (numpy, torch's order where values tie) against the torch implementation it replaced."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vestis.serve.app import SearchFastPath, create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine))


def _bodies(engine) -> list:
    schema = engine.model.schema
    gallery = sorted(engine.spaces["main"].ids())
    queries = [it.id for it in engine.catalog if engine.catalog.split_of(it.id) == "query"][:4] + gallery[:2]
    colours, cats = schema.values("colour"), schema.values("category")
    out = []
    for i, iid in enumerate(queries):
        out += [{"item_id": iid},
                {"item_id": iid, "k": 7, "manipulations": {"colour": colours[i % len(colours)]}},
                {"item_id": iid, "k": 50, "manipulations": {"category": cats[i % len(cats)],
                                                            "colour": colours[(i + 1) % len(colours)]}},
                {"item_id": iid, "manipulations": {"colour": colours[i % len(colours)]}, "labels": "off"},
                {"item_id": iid, "filters": {"colour": [colours[0], colours[1]]}, "k": 5},
                {"item_id": iid, "mode": "visual", "k": 4},
                {"item_id": iid, "mode": "same_item"},
                {"item_id": iid, "mode": f"attribute:{schema.attributes[0]}", "k": 3},
                {"item_id": iid, "text": f"same but {colours[(i + 2) % len(colours)]}"}]
    return out


BAD = [  # every kind of bad JSON request: the fast path must hand each to the route, which answers it
    b'{"item_id": "no-such-item"}', b'{"item_id": 5}', b'{"k": 3}', b'{"item_id": "x", "k": 0}',
    b'{"item_id": "x", "k": true}', b'{"item_id": "x", "bogus": 1}', b"[1, 2]", b'"text"', b"{not json",
    b'{"item_id": "x", "k": NaN}', b'{"item_id": "\\ud800"}', b"", b"[" * 100_000,
    b'{"item_id": "x", "mode": "nope"}', b'{"item_id": "x", "labels": "maybe"}',
]


def _pair(client, raw: bytes):
    """(fast path, route) answers to the same body: as application/json, and with no Content-Type."""
    fast = client.post("/search", content=raw, headers={"Content-Type": "application/json"})
    route = client.post("/search", content=raw)
    return fast, route


def _same(fast, route):
    assert fast.status_code == route.status_code, (fast.text[:300], route.text[:300])
    a, b = fast.json(), route.json()
    if isinstance(a, dict):
        a.pop("took_ms", None), b.pop("took_ms", None)
    assert a == b
    assert {k: v for k, v in fast.headers.items() if k != "content-length"} == \
        {k: v for k, v in route.headers.items() if k != "content-length"}


def test_fast_path_answers_as_the_route(client, engine, monkeypatch):
    replayed, answered = [], []
    real, answer = SearchFastPath._replay, SearchFastPath._answer
    monkeypatch.setattr(SearchFastPath, "_replay", staticmethod(lambda m, r: replayed.append(1) or real(m, r)))

    async def counted(self, body):
        out = await answer(self, body)
        answered.append(1)
        return out

    monkeypatch.setattr(SearchFastPath, "_answer", counted)
    bodies = _bodies(engine)
    first = set(engine.catalog.by_id[bodies[0]["item_id"]].attributes)
    for body in bodies:
        fast, route = _pair(client, json.dumps(body).encode())
        assert fast.status_code == 200, fast.text
        _same(fast, route)
    assert not replayed, "the fast path handed a request it can answer to the route"
    assert len(answered) == len(bodies)  # (the route's answers come from the route: sent without a Content-Type)
    assert first  # the query items have labels (the match flags were compared, not empty)


@pytest.mark.parametrize("raw", BAD, ids=lambda r: r[:30].decode("latin-1"))
def test_fast_path_errors_are_the_routes(client, engine, raw, monkeypatch):
    replayed = []
    real = SearchFastPath._replay
    monkeypatch.setattr(SearchFastPath, "_replay", staticmethod(lambda m, r: replayed.append(1) or real(m, r)))
    item = sorted(engine.spaces["main"].ids())[0]
    raw = raw.replace(b'"x"', json.dumps(item).encode())
    fast, route = _pair(client, raw)
    assert 400 <= fast.status_code < 500
    _same(fast, route)
    assert replayed


def test_fast_path_unknown_value_and_upload_unchanged(client, engine):
    item = sorted(engine.spaces["main"].ids())[0]
    fast, route = _pair(client, json.dumps({"item_id": item, "manipulations": {"colour": "plaid-ish"}}).encode())
    assert fast.status_code == 400 and fast.json()["attribute"] == "colour"
    _same(fast, route)
    # other content types never enter the fast path
    r = client.post("/search", content=b"item_id=x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_fast_path_waits_for_a_busy_engine(client, engine):
    """While another thread holds the engine, the fast path waits for it (and then gives the same answer)."""
    import threading

    svc = client.app.state.service
    item = sorted(engine.spaces["main"].ids())[1]
    want = client.post("/search", json={"item_id": item, "k": 5}).json()
    got, held, release = {}, threading.Event(), threading.Event()

    def hold():
        with svc.lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    asker = threading.Thread(target=lambda: got.update(client.post("/search", json={"item_id": item, "k": 5}).json()))
    asker.start()
    asker.join(0.5)
    assert asker.is_alive(), "the search ran while another thread held the engine"
    release.set()
    asker.join(30)
    t.join(10)
    got.pop("took_ms"), want.pop("took_ms")
    assert got == want


def test_engine_search_reuses_probabilities_exactly(engine):
    """The plan given the query's probabilities ranks exactly as the plan that computes them."""
    from vestis.models import Request

    colours = engine.model.schema.values("colour")
    for i, iid in enumerate(sorted(engine.spaces["main"].ids())[:8]):
        maps = engine.item_maps([iid])
        m = [{"colour": colours[i % len(colours)]}]
        probs = engine._probabilities(maps)
        (a,) = engine.model.plan(maps, Request("manipulate", m))
        (b,) = engine.model.plan(maps, Request("manipulate", m, probs))
        assert np.array_equal(a.vectors, b.vectors)
        slow = engine.search_maps(maps, m, 10, exclude=[iid], query_labels=[engine.catalog[iid].attributes])[0]
        fast = engine.search(item_id=iid, manipulations=m[0], k=10)
        assert [(h.id, h.score, h.matches) for h in slow] == [(h.id, h.score, h.matches) for h in fast]


def test_embed_query_matches_torch_one_hot(engine):
    """attribute_baseline's query vector (one-hot targets built in numpy) against the torch one-hot it replaced."""
    import torch.nn.functional as F

    model = engine.model
    ids = sorted(engine.spaces["main"].ids())[:6]
    maps = engine.item_maps(ids)
    colours = model.schema.values("colour")
    manips = [{"colour": colours[i % len(colours)]} if i % 3 else {} for i in range(len(ids))]
    with torch.inference_mode():
        got = model.embed_query(maps, manips)
        probs = model.predict_attributes(maps)
        parts = []
        for attr, p in zip(model.schema.attributes, probs):
            target = p.argmax(-1)
            for i, m in enumerate(manips):
                if attr in m:
                    target[i] = model.schema.index(attr, m[attr])
            parts.append(F.one_hot(target, p.shape[-1]).float())
        want = torch.cat([*parts, model._visual(maps), torch.zeros(len(ids), 1)], dim=-1)
    assert torch.equal(got, want)
    ties = {a: torch.full((1, p.shape[-1]), 1.0 / p.shape[-1]) for a, p in zip(model.schema.attributes, probs)}
    with torch.inference_mode():  # equal maxima: the first one, as torch's argmax
        v = model.embed_query({k: t[:1] for k, t in maps.items()}, [{}], ties)
    off = 0
    for p in probs:
        assert v[0, off] == 1.0 and v[0, off:off + p.shape[-1]].sum() == 1.0
        off += p.shape[-1]


def _describe_torch(schema, probs, top=3):
    """The implementation `Engine._describe` replaced (torch ops per attribute and row)."""
    out = []
    for i in range(len(next(iter(probs.values())))):
        row = {}
        for a, p in probs.items():
            names = [*schema.values(a), None]
            pi = p[i].float()
            order = torch.argsort(pi, descending=True)[:top].tolist()
            best = int(pi.argmax())
            row[a] = {"value": names[best], "probability": round(float(pi[best]), 4),
                      "top": [{"value": names[j], "probability": round(float(pi[j]), 4)} for j in order]}
        out.append(row)
    return out


def test_describe_matches_torch_with_ties(engine):
    schema = engine.model.schema
    g = torch.Generator().manual_seed(0)
    n = 300
    probs = {}
    for j, a in enumerate(schema.attributes):
        k = len(schema.values(a)) + 1
        p = torch.softmax(torch.randn(n, k, generator=g) * 3, -1)
        ties = torch.randint(0, 4, (n, k), generator=g).float() / 4  # rows of many equal values, top ones included
        p[: n // 2] = ties[: n // 2]
        probs[a] = p
    maps = engine.item_maps(sorted(engine.spaces["main"].ids())[:4])
    probs_real = engine._probabilities(maps)
    for top in (0, 1, 2, 3, 5):
        assert engine._describe(probs, top) == _describe_torch(schema, probs, top)
        assert engine._describe(probs_real, top) == _describe_torch(schema, probs_real, top)
