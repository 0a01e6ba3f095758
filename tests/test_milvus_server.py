"""End to end on a real Milvus server (conftest's `milvus_server`): `vestis index --backend milvus --options
'{"uri": ...}'` builds every space as a collection on the server, `vestis serve` (the app) answers from it exactly
as from the FAISS index of the same run, and an attribute update reaches the server's collections."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
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
        # the catalogue's attributes are scalar fields of every collection (filters compare them, not JSON paths)
        assert all(set(idx.attribute_fields) >= {"category", "colour", "pattern"} for idx in m.spaces.values())
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


def _bench_search_args(tiny_pipeline, milvus_server, tmp_path) -> tuple[list[str], Path]:
    """`vestis bench search` on the tiny pipeline's query file with 300 items on the server and a narrow colour
    filter; the JSON report's path."""
    root, cat, run, idx, cache = tiny_pipeline
    q = tmp_path / "q.jsonl"
    assert main(["queries", "--catalog", str(cat), "--protocol", "manipulation", "--out", str(q),
                 "--attributes", "category,colour", "--per-attribute", "2"]) == 0
    from vestis.catalog import Catalog

    colour = Catalog.load(cat).schema.values("colour")[0]
    out = tmp_path / "bench.json"
    return (["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(q), "--n", "4",
             "--repeats", "1", "--items", "300", "--milvus-items", "300", "--milvus-uri", milvus_server.uri,
             "--filters", json.dumps({"narrow": {"colour": colour}}), "--json", str(out), "--cache", str(cache)], out)


def test_bench_search_runs_its_milvus_rows_on_a_server(tiny_pipeline, milvus_server, tmp_path, capsys):
    """`vestis bench search --milvus-uri`: the Milvus row (and its filtered rows) on the server, every query timed;
    the flat collection is exact, so its recall is 1."""
    args, out = _bench_search_args(tiny_pipeline, milvus_server, tmp_path)
    assert main(args + ["--kinds", "flat"]) == 0
    capsys.readouterr()
    rows = [r for r in json.loads(out.read_text())["rows"] if r["backend"] == "milvus-server"]
    assert [(r["items"], r["queries"], r["filter"]) for r in rows] == [(300, 4, None), (300, 4, "narrow")]
    assert all(r["recall"] >= 0.9 for r in rows)
    # the build is the insert plus the wait for the server's index, both recorded; searches at Session consistency
    assert all(r["build_s"] == pytest.approx(r["insert_s"] + r["index_s"], abs=0.15) for r in rows)
    assert all(r["options"]["consistency"] == "Session" and r["options"]["scalar_fields"] is True for r in rows)


def test_bench_search_milvus_rows_only_with_their_options_and_ef_rows(tiny_pipeline, milvus_server, tmp_path, capsys):
    """--kinds '' skips the FAISS rows; --milvus-options builds the Milvus collection with them; --ef-search adds a
    row per efSearch on it; --filter-settings first measures the filters with the first setting only."""
    base, out = _bench_search_args(tiny_pipeline, milvus_server, tmp_path)
    args = base + ["--kinds", "", "--milvus-options", json.dumps({"M": 8, "ef_construction": 40}),
                   "--ef-search", "16,64", "--filter-settings", "first"]
    assert main(args) == 0
    text = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["filter"], r["options"].get("ef_search")) for r in rows] == [
        ("milvus-server", None, 256), ("milvus-server", "narrow", 256), ("milvus-server", None, 16),
        ("milvus-server", None, 64)]
    assert all(r["options"]["M"] == 8 and r["options"]["ef_construction"] == 40 for r in rows)
    assert "insert +" in text and "index)" in text
    capsys.readouterr()
    assert main(args[:-2] + ["--milvus-options", '{"kind": "cube"}']) == 2
    assert "--milvus-options kind must be flat, hnsw or ivfpq" in capsys.readouterr().err


def _server_index(milvus_server, name: str, n: int, dim: int = 8, **opts):
    from vestis.index import create_index

    x = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    idx = create_index("milvus", "hnsw", dim, "ip", uri=milvus_server.uri,
                       collection=f"vestis_{name}_{os.getpid()}", overwrite=True, **opts)
    idx.add([f"i{j}" for j in range(n)], x)
    return idx, x


def test_searches_run_at_session_consistency_without_the_strong_wait(milvus_server, tmp_path):
    """Searches default to Session consistency: they see this client's writes at once (the query's own vector is its
    first hit right after the add), without a Strong search's wait for the server's time tick (about 200 ms on a 2.3
    server, every search). A loaded index can ask for Strong again."""
    import time

    from vestis.index import load_index

    idx, x = _server_index(milvus_server, "consistency", 200)
    strong = None
    try:
        assert idx.options()["consistency"] == "Session"
        assert idx.search(x[7], 5).ids[0][0] == "i7"
        idx.save(tmp_path / "idx")
        strong = load_index(tmp_path / "idx", consistency="Strong")
        assert strong.options()["consistency"] == "Strong" and strong.search(x[7], 5).ids[0][0] == "i7"

        def median_ms(index):
            t = []
            for i in range(9):
                t0 = time.perf_counter()
                index.search(x[i], 5)
                t.append(time.perf_counter() - t0)
            return 1000 * float(np.median(t))

        session_ms, strong_ms = median_ms(idx), median_ms(strong)
        assert session_ms < strong_ms / 2, (session_ms, strong_ms)
    finally:
        with contextlib.suppress(Exception):
            idx._c().drop_collection(idx._collection)
        idx.close()
        if strong is not None:
            strong.close()


def test_a_session_search_right_after_a_remove_does_not_return_the_removed_items(milvus_server):
    """A 2.3 server's delete gives the client no timestamp to wait for at Session consistency; `remove` waits for it
    itself, so a search straight after it never sees a removed item (without that, most rounds here return them)."""
    idx, x = _server_index(milvus_server, "remove_session", 50)
    try:
        for r in range(6):
            gone = [f"i{j}" for j in range(8 * r, 8 * r + 8)]
            assert idx.remove(gone) == 8
            assert all(not set(row) & set(gone) for row in idx.search(x[8 * r: 8 * r + 8], 10).ids)
    finally:
        with contextlib.suppress(Exception):
            idx._c().drop_collection(idx._collection)
        idx.close()


@pytest.mark.slow
def test_wait_for_index_returns_once_every_segment_is_served_indexed(milvus_server):
    """After `wait_for_index` the query node serves every segment of a freshly filled collection with its HNSW index
    (Milvus builds it in the background after a flush: tens of seconds), and the answers are the exact ones."""
    idx, x = _server_index(milvus_server, "wait_index", 3000)
    try:
        waited = idx.wait_for_index(timeout=600)
        segments = idx._c().list_loaded_segments(idx._collection)
        assert waited > 0 and segments and all(s.index_id for s in segments)
        assert sum(s.num_rows for s in segments) == 3000
        exact = np.argsort(-(x[:20] @ x.T), axis=1)[:, :10]
        found = idx.search(x[:20], 10).ids
        assert np.mean([len({f"i{j}" for j in e} & set(f)) / 10 for e, f in zip(exact, found)]) >= 0.95
    finally:
        with contextlib.suppress(Exception):
            idx._c().drop_collection(idx._collection)
        idx.close()
