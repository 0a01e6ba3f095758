"""End to end on a real Milvus server (conftest's `milvus_server`): `vestis index --backend milvus --options
'{"uri": ...}'` builds every space as a collection on the server, `vestis serve` (the app) answers from it exactly
as from the FAISS index of the same run, and an attribute update reaches the server's collections."""

from __future__ import annotations

import contextlib
import json
import os

import pytest

from vestis.cli import main
from vestis.engine import Engine
from vestis.indexing import ENGINE_FILE


def test_index_and_serve_against_a_milvus_server(tiny_pipeline, milvus_server, tmp_path):
    from fastapi.testclient import TestClient

    from vestis.serve.app import create_app

    root, cat, run, faiss_idx, cache = tiny_pipeline
    out = tmp_path / "milvus-idx"
    collection = f"vestis_e2e_{os.getpid()}"
    opts = json.dumps({"uri": milvus_server.uri, "collection": collection})
    assert main(["index", "--run", str(run), "--catalog", str(cat), "--out", str(out), "--split", "gallery",
                 "--backend", "milvus", "--kind", "flat", "--options", opts, "--cache", str(cache)]) == 0
    meta = json.loads((out / ENGINE_FILE).read_text())
    assert meta["backend"] == "milvus" and set(meta["spaces"]) == {"main", "visual", "labels", "attr_category",
                                                                "attr_colour", "attr_pattern"}
    m = Engine.load(run, out, cache_dir=cache)
    f = Engine.load(run, faiss_idx, cache_dir=cache)
    try:
        assert all(not idx.local for idx in m.spaces.values())  # every space lives on the server
        client = TestClient(create_app(m, allow_writes=True))
        assert client.get("/health").json()["indexed"] == len(f.spaces["main"])
        query = sorted(f.spaces["main"].ids())[0]
        colour = next(v for v in m.model.schema.values("colour") if v != m.catalog[query].attributes.get("colour"))
        for body in ({"item_id": query, "k": 10}, {"item_id": query, "k": 10, "manipulations": {"colour": colour}},
                     {"item_id": query, "k": 10, "labels": "off", "filters": {"colour": colour}}):
            got = client.post("/search", json=body).json()
            want = f.search(item_id=query, manipulations=body.get("manipulations"), filters=body.get("filters"), k=10,
                            labels=body.get("labels", "on") == "on")
            assert [h["id"] for h in got["results"]] == [h.id for h in want], body
            assert [h["score"] for h in got["results"]] == pytest.approx([h.score for h in want], abs=1e-4)
        # an attribute update reaches the server's collections
        other = sorted(f.spaces["main"].ids())[5]
        r = client.patch("/items/attributes", json={"updates": [{"id": other, "attributes": {"colour": colour}}]})
        assert r.status_code == 200, r.text
        hits = client.post("/search", json={"item_id": query, "k": 100, "labels": "off", "mode": "visual",
                                            "filters": {"colour": colour}}).json()["results"]
        assert other in [h["id"] for h in hits]
        reloaded = Engine.load(run, out, cache_dir=cache)
        assert reloaded.catalog[other].attributes["colour"] == colour
        assert other in [h.id for h in reloaded.search(item_id=query, filters={"colour": colour}, k=100, labels=False)]
        for idx in reloaded.spaces.values():
            idx.close()
    finally:
        for idx in m.spaces.values():
            with contextlib.suppress(Exception):
                idx._c().drop_collection(idx._collection)
            idx.close()


def test_bench_search_runs_its_milvus_rows_on_a_server(tiny_pipeline, milvus_server, tmp_path, capsys):
    """`vestis bench search --milvus-uri`: the Milvus row (and its filtered rows) on the server, every query timed;
    the flat collection is exact, so its recall is 1."""
    root, cat, run, idx, cache = tiny_pipeline
    q = tmp_path / "q.jsonl"
    assert main(["queries", "--catalog", str(cat), "--protocol", "manipulation", "--out", str(q),
                 "--attributes", "category,colour", "--per-attribute", "2"]) == 0
    from vestis.catalog import Catalog

    colour = Catalog.load(cat).schema.values("colour")[0]
    out = tmp_path / "bench.json"
    assert main(["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(q), "--n", "4",
                 "--repeats", "1", "--items", "300", "--kinds", "flat", "--milvus-items", "300",
                 "--milvus-uri", milvus_server.uri, "--filters", json.dumps({"narrow": {"colour": colour}}),
                 "--json", str(out), "--cache", str(cache)]) == 0
    capsys.readouterr()
    rows = [r for r in json.loads(out.read_text())["rows"] if r["backend"] == "milvus-server"]
    assert [(r["items"], r["queries"], r["filter"]) for r in rows] == [(300, 4, None), (300, 4, "narrow")]
    assert all(r["recall"] >= 0.9 for r in rows)
