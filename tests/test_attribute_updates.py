"""Attribute updates without re-embedding (`vestis index --update-attributes`, vestis.attribute_updates): an
updated index answers exactly as an index rebuilt from the edited catalogue does - filters, labels on and off -
and bad input changes nothing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from vestis.attribute_updates import AttributeUpdateError, parse_rows, read_updates, update_attributes
from vestis.cli import main
from vestis.engine import Engine
from vestis.errors import UnknownAttributeError, UnknownValueError, VestisError
from vestis.indexing import ENGINE_FILE


def _changes(engine):
    """Three gallery items: a colour corrected, a pattern cleared, a category and a fit changed."""
    gallery = sorted(engine.spaces["main"].ids())
    cat = engine.catalog
    a, b, c = gallery[3], gallery[10], gallery[20]
    colours = [v for v in cat.schema.values("colour") if v != cat[a].attributes.get("colour")]
    categories = [v for v in cat.schema.values("category") if v != cat[c].attributes.get("category")]
    return {a: {"colour": colours[0]}, b: {"pattern": None}, c: {"category": categories[-1], "fit": "loose"}}


@pytest.fixture(scope="module")
def updated(tiny_pipeline, tmp_path_factory):
    """The tiny index updated through the CLI (a CSV and a JSONL file), and the same catalogue edited by hand and
    rebuilt from scratch: (updated index, rebuilt index, run, cache, changes)."""
    root, cat, run, idx, cache = tiny_pipeline
    tmp = tmp_path_factory.mktemp("updates")
    upd = tmp / "idx"
    shutil.copytree(idx, upd)
    engine = Engine.load(run, upd, cache_dir=cache)
    changes = _changes(engine)
    (a, ca), (b, cb), (c, cc) = changes.items()
    (tmp / "one.csv").write_text(f"id,colour,pattern\n{a},{ca['colour']},\n{b},,unspecified\n")
    (tmp / "two.jsonl").write_text(json.dumps({"id": c, "attributes": cc}) + "\n")
    before = json.loads((upd / ENGINE_FILE).read_text())["generation"]
    assert main(["index", "--update-attributes", str(tmp / "one.csv"), "--out", str(upd), "--cache", str(cache)]) == 0
    assert main(["index", "--update-attributes", str(tmp / "two.jsonl"), "--out", str(upd), "--cache", str(cache)]) == 0
    meta = json.loads((upd / ENGINE_FILE).read_text())
    assert meta["generation"] != before and not (upd / before).exists()  # a new generation, the old one removed
    assert meta["attribute_updates"]["items"] == 3
    # the same edit made to the catalogue file, then a full rebuild
    edited = tmp / "cat"
    shutil.copytree(cat, edited)
    lines = [json.loads(x) for x in (edited / "catalog.jsonl").read_text().splitlines() if x.strip()]
    for row in lines:
        for attr, value in changes.get(row["id"], {}).items():
            if value is None:
                row["attributes"].pop(attr, None)
            else:
                row["attributes"][attr] = value
    (edited / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rebuilt = tmp / "rebuilt"
    assert main(["index", "--run", str(run), "--catalog", str(edited), "--out", str(rebuilt), "--split", "gallery",
                 "--cache", str(cache)]) == 0
    return upd, rebuilt, run, cache, changes


def _same_ranking(r1, r2, where, tol=1e-4):
    """The same scores rank by rank, and the same items with the same scores and attributes; two items whose
    scores differ by less than `tol` may swap places (the recomputed label vectors of the updated items and the
    rebuild's agree to float32 rounding, not bit for bit)."""
    s1, s2 = [h.score for h in r1], [h.score for h in r2]
    np.testing.assert_allclose(s1, s2, atol=tol, err_msg=str(where))
    by1, by2 = {h.id: h for h in r1}, {h.id: h for h in r2}
    last = min(s1[-1], s2[-1]) if s1 else 0.0
    for a, b in ((by1, by2), (by2, by1)):
        for iid, h in a.items():
            if iid in b:
                assert abs(h.score - b[iid].score) < tol and h.attributes == b[iid].attributes, (where, iid)
            else:  # only at the cut-off, among near-ties
                assert h.score - last < tol, (where, iid, h.score, last)
    for i in range(len(s1)):
        if r1[i].id != r2[i].id:
            assert abs(s1[i] - s2[i]) < tol and abs(r1[i].score - by2.get(r1[i].id, r1[i]).score) < tol, (where, i)


def test_update_answers_like_a_rebuild_from_the_edited_catalogue(updated):
    upd, rebuilt, run, cache, changes = updated
    e1 = Engine.load(run, upd, cache_dir=cache)
    e2 = Engine.load(run, rebuilt, cache_dir=cache)
    (a, ca), (b, cb), (c, cc) = changes.items()
    assert e1.catalog[a].attributes["colour"] == ca["colour"]  # the engine's catalogue carries the updates
    assert "pattern" not in e1.catalog[b].attributes and e1.catalog[c].attributes["fit"] == "loose"
    assert {s: len(i) for s, i in e1.spaces.items()} == {s: len(i) for s, i in e2.spaces.items()}
    gallery = sorted(e1.spaces["main"].ids())
    queries = [gallery[0], gallery[7], a, b, c]
    requests = [({}, None), ({"colour": ca["colour"]}, None), ({"category": cc["category"]}, None),
                ({}, {"pattern": ["solid", "check", "floral"]}), ({"colour": ca["colour"]}, {"fit": ["loose", "slim"]})]
    for q in queries:
        for manip, filters in requests:
            for labels in (True, False):
                r1 = e1.search(item_id=q, manipulations=manip, filters=filters, k=40, labels=labels)
                r2 = e2.search(item_id=q, manipulations=manip, filters=filters, k=40, labels=labels)
                _same_ranking(r1, r2, (q, manip, filters, labels))
                assert r1.note == r2.note
    # the filters see the new labels: the corrected item is found under its new colour only
    hits = {h.id for h in e1.search(item_id=gallery[0], filters={"colour": ca["colour"]}, k=200, labels=False)}
    assert a in hits


def test_attribute_spaces_answer_like_a_rebuild(updated):
    """The per-attribute spaces (`attr_<name>`, "known" members): an item whose label is cleared leaves its space,
    one whose label changes stays with its new label; `attribute:<name>` queries, with and without filters on the
    changed labels, answer as the rebuilt index's do."""
    upd, rebuilt, run, cache, changes = updated
    e1 = Engine.load(run, upd, cache_dir=cache)
    e2 = Engine.load(run, rebuilt, cache_dir=cache)
    (a, ca), (b, cb), (c, cc) = changes.items()
    attr_spaces = sorted(s for s in e1.spaces if s.startswith("attr_"))
    assert attr_spaces == ["attr_category", "attr_colour", "attr_pattern"], attr_spaces
    for s in attr_spaces:
        assert sorted(e1.spaces[s].ids()) == sorted(e2.spaces[s].ids()), s
    assert a in e1.spaces["attr_colour"] and c in e1.spaces["attr_category"]  # changed: kept with the new label
    gallery = sorted(e1.spaces["main"].ids())
    for attr in ("category", "colour", "pattern"):
        for q in (gallery[0], gallery[7], a, b, c):
            for filters in (None, {"colour": ca["colour"]}, {"category": cc["category"]},
                            {"pattern": ["solid", "check", "floral"]}):
                r1 = e1.search(item_id=q, mode=f"attribute:{attr}", filters=filters, k=40, labels=False)
                r2 = e2.search(item_id=q, mode=f"attribute:{attr}", filters=filters, k=40, labels=False)
                _same_ranking(r1, r2, (attr, q, filters))
    # the changed labels are what the attribute spaces filter on
    hits = {h.id for h in e1.search(item_id=gallery[0], mode="attribute:category", k=200, labels=False,
                                    filters={"colour": ca["colour"]})}
    assert a in hits


def test_labels_cleared_and_gained_move_items_between_attribute_spaces(updated, tmp_path):
    """An item whose pattern is cleared leaves attr_pattern (and stays in the others); one with no known pattern that
    gets one enters it, embedded from its cached maps; attr_pattern then answers as one rebuilt from the catalogue
    edited the same way."""
    upd, rebuilt, run, cache, _ = updated
    idx = tmp_path / "idx"
    shutil.copytree(upd, idx)
    engine = Engine.load(run, idx, cache_dir=cache)
    gallery = sorted(engine.spaces["main"].ids())
    with_pattern = [i for i in gallery if engine.catalog[i].attributes.get("pattern")]
    without = [i for i in gallery if not engine.catalog[i].attributes.get("pattern")]
    assert with_pattern and without
    d, b = with_pattern[5], without[0]
    value = engine.catalog.schema.values("pattern")[0]
    assert d in engine.spaces["attr_pattern"] and b not in engine.spaces["attr_pattern"]
    in_colour = d in engine.spaces["attr_colour"]
    update_attributes(engine, idx, {d: {"pattern": None}, b: {"pattern": value}})
    fresh = Engine.load(run, idx, cache_dir=cache)
    for e in (engine, fresh):
        assert d not in e.spaces["attr_pattern"] and b in e.spaces["attr_pattern"]
        assert (d in e.spaces["attr_colour"]) == in_colour  # the other spaces keep it
    assert fresh.catalog[b].attributes["pattern"] == value and "pattern" not in fresh.catalog[d].attributes
    # a rebuild from the catalogue edited the same way answers the same
    edited = tmp_path / "cat"
    shutil.copytree(rebuilt.parent / "cat", edited)
    rows = [json.loads(x) for x in (edited / "catalog.jsonl").read_text().splitlines() if x.strip()]
    for row in rows:
        if row["id"] == b:
            row["attributes"]["pattern"] = value
        if row["id"] == d:
            row["attributes"].pop("pattern")
    (edited / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = tmp_path / "rebuilt"
    assert main(["index", "--run", str(run), "--catalog", str(edited), "--out", str(again), "--split", "gallery",
                 "--cache", str(cache)]) == 0
    e2 = Engine.load(run, again, cache_dir=cache)
    for s in ("attr_category", "attr_colour", "attr_pattern"):
        assert sorted(fresh.spaces[s].ids()) == sorted(e2.spaces[s].ids()), s
    for q in (b, d, gallery[0], gallery[5]):
        for filters in (None, {"pattern": value}):
            r1 = fresh.search(item_id=q, mode="attribute:pattern", filters=filters, k=40, labels=False)
            r2 = e2.search(item_id=q, mode="attribute:pattern", filters=filters, k=40, labels=False)
            _same_ranking(r1, r2, (q, filters))
    assert b in {h.id for h in fresh.search(item_id=gallery[0], mode="attribute:pattern", k=200, labels=False)}


def test_bad_updates_change_nothing(updated, tmp_path):
    upd, rebuilt, run, cache, changes = updated
    before = (upd / ENGINE_FILE).read_text()
    engine = Engine.load(run, upd, cache_dir=cache)
    some = sorted(engine.spaces["main"].ids())[0]
    cases = [
        ("id,colour\nno-such-item,red\n", AttributeUpdateError, "not in the index"),
        (f"id,shape\n{some},round\n", UnknownAttributeError, "shape"),
        (f"id,colour\n{some},ultraviolet\n", UnknownValueError, "ultraviolet"),
        (f"id,colour\n{some},red\n{some},blue\n", AttributeUpdateError, "more than once"),
        ("colour\nred\n", AttributeUpdateError, "`id` column"),
    ]
    for text, err, match in cases:
        f = tmp_path / "bad.csv"
        f.write_text(text)
        with pytest.raises(err, match=match):
            update_attributes(engine, upd, read_updates(f))
        assert main(["index", "--update-attributes", str(f), "--out", str(upd), "--cache", str(cache)]) == 2
        assert (upd / ENGINE_FILE).read_text() == before
    assert sorted(p.name for p in upd.iterdir() if p.name.startswith("gen-")) == [json.loads(before)["generation"]]
    for bad in ([{"id": some}], [{"id": some, "attributes": {"colour": 3}}], {"id": some}, [{"id": "", "attributes": {"a": "b"}}],
                [{"id": some, "attributes": {}}]):
        with pytest.raises(AttributeUpdateError):
            parse_rows(bad)
    with pytest.raises(AttributeUpdateError, match="csv or .jsonl"):
        read_updates(tmp_path / "x.txt")
    assert issubclass(AttributeUpdateError, VestisError)


def test_a_rebuild_says_it_drops_the_updates(updated, tiny_pipeline, capsys, tmp_path):
    upd, rebuilt, run, cache, changes = updated
    root, cat, run, idx, cache = tiny_pipeline
    copy = tmp_path / "idx"
    shutil.copytree(upd, copy)
    assert main(["index", "--run", str(run), "--catalog", str(cat), "--out", str(copy), "--split", "gallery",
                 "--cache", str(cache)]) == 0
    assert "not carried over" in capsys.readouterr().err
    assert "attribute_updates" not in json.loads((copy / ENGINE_FILE).read_text())


# --- the HTTP route (vestis serve --allow-writes) ------------------------------------------------------------------
def test_route_updates_the_served_engine_and_the_index(tiny_pipeline, tmp_path):
    from fastapi.testclient import TestClient

    from vestis.serve.app import create_app

    root, cat, run, idx, cache = tiny_pipeline
    shutil.copytree(idx, tmp_path / "idx")
    engine = Engine.load(run, tmp_path / "idx", cache_dir=cache)
    (a, ca), (b, cb), (c, cc) = _changes(engine).items()
    closed = TestClient(create_app(engine))  # writes off by default
    r = closed.patch("/items/attributes", json={"updates": [{"id": a, "attributes": ca}]})
    assert r.status_code == 403 and "--allow-writes" in r.json()["detail"]
    client = TestClient(create_app(engine, allow_writes=True))
    query = sorted(engine.spaces["main"].ids())[0]

    def found(colour):
        body = {"item_id": query, "k": 200, "filters": {"colour": colour}, "labels": "off", "mode": "visual"}
        return {h["id"]: h["attributes"] for h in client.post("/search", json=body).json()["results"]}

    old = engine.catalog[a].attributes["colour"]
    assert a in found(old) and a not in found(ca["colour"])
    before = (tmp_path / "idx" / ENGINE_FILE).read_text()
    bad = [({"updates": [{"id": "nope", "attributes": ca}]}, 404, "not in the index"),
           ({"updates": [{"id": a, "attributes": {"shape": "round"}}]}, 400, "shape"),
           ({"updates": [{"id": a, "attributes": {"colour": "ultraviolet"}}]}, 400, "ultraviolet"),
           ({"updates": [{"id": a, "attributes": {"colour": "red"}}, {"id": "nope", "attributes": {"colour": "red"}}]},
            404, "nope"),
           ({"updates": []}, 400, "no updates"), ({"changes": []}, 400, "updates"), ([1], 400, "updates")]
    for body, status, words in bad:
        r = client.patch("/items/attributes", json=body)
        assert r.status_code == status and words in r.json()["detail"], (body, r.text)
    r = client.patch("/items/attributes", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert (tmp_path / "idx" / ENGINE_FILE).read_text() == before and a in found(old)  # nothing changed
    r = client.patch("/items/attributes", json={"updates": [{"id": a, "attributes": ca},
                                                            {"id": b, "attributes": {"pattern": "unspecified"}}]})
    assert r.status_code == 200 and r.json()["updated"] == 2, r.text
    hits = found(ca["colour"])
    assert a in hits and hits[a]["colour"] == ca["colour"] and a not in found(old)  # filters and answers follow
    assert client.get(f"/items/{a}").json()["attributes"]["colour"] == ca["colour"]
    assert "pattern" not in client.get(f"/items/{b}").json()["attributes"]
    reloaded = Engine.load(run, tmp_path / "idx", cache_dir=cache)  # and so does the index on disk
    assert reloaded.catalog[a].attributes["colour"] == ca["colour"]
    r1 = engine.search(item_id=query, manipulations={"colour": ca["colour"]}, k=20)
    r2 = reloaded.search(item_id=query, manipulations={"colour": ca["colour"]}, k=20)
    assert [h.id for h in r1] == [h.id for h in r2] and a in [h.id for h in r1]


@pytest.mark.parametrize("options", [[], ["--options", '{"partition_attribute": "colour"}']], ids=["fields", "partitions"])
def test_milvus_lite_index_updates_its_attribute_fields(updated, tiny_pipeline, tmp_path, options):
    """`vestis index --update-attributes` on a Milvus index (Lite): the catalogue's attributes are scalar fields of its
    collections, and after the update its filters find what the updated FAISS index finds: a changed colour, a cleared
    pattern ("unspecified" in its field), a changed category and fit. With `partition_attribute` (the option reaches
    the main space's index through `--options`) the changed colour moves its item to the new colour's partition."""
    pytest.importorskip("pymilvus", reason="pymilvus not installed (pip install 'vestis[milvus]')")
    pytest.importorskip("milvus_lite", reason="milvus-lite not installed (pip install 'vestis[milvus]')")
    root, cat, run, idx, cache = tiny_pipeline
    upd, rebuilt, run, cache, changes = updated
    out = tmp_path / "milvus-idx"
    assert main(["index", "--run", str(run), "--catalog", str(cat), "--out", str(out), "--split", "gallery",
                 "--backend", "milvus", "--kind", "flat", "--cache", str(cache), *options]) == 0
    (tmp_path / "u.jsonl").write_text("".join(json.dumps({"id": i, "attributes": a}) + "\n" for i, a in changes.items()))
    assert main(["index", "--update-attributes", str(tmp_path / "u.jsonl"), "--out", str(out), "--cache", str(cache)]) == 0
    m, f = Engine.load(run, out, cache_dir=cache), Engine.load(run, upd, cache_dir=cache)
    try:
        assert set(m.spaces["main"].attribute_fields) >= {"category", "colour", "pattern", "fit"}
        assert m.spaces["main"].options()["partition_attribute"] == ("colour" if options else None)
        (a, ca), (b, cb), (c, cc) = changes.items()
        query = sorted(f.spaces["main"].ids())[0]
        for flt, changed in (({"colour": ca["colour"]}, a), ({"category": cc["category"]}, c), ({"fit": "loose"}, c)):
            want = [h.id for h in f.search(item_id=query, filters=flt, k=200, labels=False)]
            got = [h.id for h in m.search(item_id=query, filters=flt, k=200, labels=False)]
            assert got == want and changed in got, flt
        mi, fi = m.spaces["main"], f.spaces["main"]  # (the engine takes catalogue values only; the index "unspecified")
        q = np.ones((1, mi.dim), np.float32)
        got = set(mi.search(q, 200, filters={"pattern": "unspecified"}).ids[0])
        assert got == set(fi.search(q, 200, filters={"pattern": "unspecified"}).ids[0]) and b in got
    finally:
        for idx_ in m.spaces.values():
            idx_.close()
