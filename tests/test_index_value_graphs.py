"""Value graphs (issue 15): an HNSW graph per value of chosen attributes, answering broad filters on those values.
Each test compares against the exact filtered search and checks the graphs against the item table (`check`)."""

import json

import numpy as np
import pytest

import vestis.index.value_graphs as vgm
from vestis.bench.recall import exact_scores, recall_at_k
from vestis.index import CorruptIndexError, UnsupportedIndexError, create_index, load_index
from vestis.index.manifest import MANIFEST


def _two_sides(n=5000, dim=32, off=3.0, noise=0.2, seed=0):
    """Items of 50 clusters, each split by gender along one axis (women +off, men -off), and queries that ask for
    men (a cluster centre, -off): a women-only filter contradicts every query, whose graph neighbourhood holds
    men only."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, dim)).astype(np.float32)
    women = rng.random(n) < 0.5
    x = centres[rng.integers(0, 50, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    x[:, 0] += np.where(women, off, -off)
    q = centres[rng.integers(0, 50, 100)] + noise * rng.standard_normal((100, dim)).astype(np.float32)
    q[:, 0] -= off
    attrs = [{"gender": "Women" if w else "Men"} for w in women]
    return x, q, [str(i) for i in range(n)], attrs, women


def _recall(got, x, q, match, metric="l2", k=30):
    s = exact_scores(x, q, metric)
    s[:, ~match] = -np.inf
    return recall_at_k([[int(i) for i in g] for g in got], s, k).plain


def _check(idx):
    idx._graphs.check(idx._items.alive, idx._items.codes_of)


def test_broad_filter_against_the_query_the_walk_loses_the_value_graph_does_not(monkeypatch):
    x, q, ids, attrs, women = _two_sides()
    idx = create_index("faiss", "hnsw", x.shape[1], "l2", M=16, ef_construction=40, ef_search=64, threads=1,
                       value_graphs=["gender"])
    idx.add(ids, x, attrs)
    calls = []
    real = idx._search_exact
    monkeypatch.setattr(idx, "_search_exact", lambda q_, *a: calls.append(len(q_)) or real(q_, *a))
    walk = idx.search(q, 30, filters={"gender": "Women"}, value_graphs=False).ids  # today's walk of the main graph
    assert calls and calls[0] >= 10  # many walks met fewer than 30 women (measured 27 of 100): re-run exactly
    calls.clear()
    graphs = idx.search(q, 30, filters={"gender": "Women"}).ids
    assert not calls  # the value graph alone answered every query
    assert all(len(g) == 30 and all(women[int(i)] for i in g) for g in graphs)
    r_walk, r_graphs = _recall(walk, x, q, women), _recall(graphs, x, q, women)
    assert r_walk < 0.98 and r_graphs >= 0.995, (r_walk, r_graphs)  # measured 0.965 / 1.0


def _catalogue(n=1200, dim=16, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    gender = rng.choice(["Women", "Men", "Unisex"], n, p=[0.45, 0.45, 0.10])
    colour = rng.choice(["red", "blue", "green"], n, p=[0.6, 0.3, 0.1])
    attrs = [{"gender": g, "colour": c} if i % 10 else {"colour": c}  # every tenth item: gender unspecified
             for i, (g, c) in enumerate(zip(gender, colour))]
    return x, [f"i{i}" for i in range(n)], attrs, rng.standard_normal((20, dim)).astype(np.float32)


FILTERS = [{"gender": "Women"}, {"gender": ["Women", "Men"]}, {"gender": ["Men", "unspecified"]},
           {"gender": "Women", "colour": "red"}, {"gender": ["Women", "Unisex"], "colour": ["red", "blue"]},
           {"gender": "Nobody"}]


def _same_as_exact(idx, q, filters=FILTERS, k=20):
    for f in filters:
        got, want = idx.search(q, k, filters=f), idx.search(q, k, filters=f, exact=True)
        assert got.ids == want.ids, f
        for a, b in zip(got.scores, want.scores):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_value_graph_searches_equal_the_exact_filtered_search(metric, monkeypatch):
    """On a small index searched widely (efSearch 400 over graphs of a few hundred items) the graphs are exact:
    single values, several values (merged by score), unspecified, a broad value with a further attribute (the
    selector inside the value graphs), and a value no item has."""
    x, ids, attrs, q = _catalogue()
    idx = create_index("faiss", "hnsw", x.shape[1], metric, ef_search=400, exact_filter_fraction=0.05, threads=1,
                       value_graphs=["gender"])
    idx.add(ids, x, attrs)
    _check(idx)
    assert {c for (_, c) in idx._graphs.graphs} == {-1, 0, 1, 2}  # Women, Men, Unisex and unspecified
    used = []
    real = vgm.ValueGraphs.search
    monkeypatch.setattr(vgm.ValueGraphs, "search", lambda self, g, *a: used.append(len(g)) or real(self, g, *a))
    _same_as_exact(idx, q)
    assert used == [1, 2, 2, 1, 2]  # every filter but the empty one went through its values' graphs
    # without graphs the same index walks the main graph; the unfiltered search never touches the value graphs
    used.clear()
    idx.search(q, 20)
    idx.search(q, 20, filters={"colour": "red"})
    assert used == []


def test_adds_removals_upserts_and_attribute_updates_keep_the_graphs_in_step():
    x, ids, attrs, q = _catalogue()
    rng = np.random.default_rng(3)
    idx = create_index("faiss", "hnsw", x.shape[1], "ip", ef_search=400, exact_filter_fraction=0.05, threads=1,
                       value_graphs=["gender", "colour"], max_tombstone_fraction=0.9)
    idx.add(ids[:800], x[:800], attrs[:800])
    idx.add(ids[800:], x[800:], attrs[800:])
    _check(idx)
    idx.remove(ids[:100])
    idx.add(ids[100:150], rng.standard_normal((50, x.shape[1])).astype(np.float32), attrs[100:150])  # upserts
    _check(idx)
    assert idx._graphs.graph("gender", idx._items.codes["gender"]["Women"]).stale > 0
    _same_as_exact(idx, q)
    # moves: Women -> Men, then some back (their stale Women entries become valid again, no second entry)
    women = [i for i, a in zip(ids, attrs) if a.get("gender") == "Women" and i in idx][:60]
    idx.set_attributes(women, [{"gender": "Men", "colour": "blue"}] * 60)
    _check(idx)
    w_graph = idx._graphs.graph("gender", idx._items.codes["gender"]["Women"])
    entries = w_graph.entries
    idx.set_attributes(women[:30], [{"gender": "Women", "colour": "blue"}] * 30)
    _check(idx)
    assert w_graph.entries == entries  # moved back: the old entries, not new ones
    assert not set(women[:30]) & set(idx.search(q, 1200, filters={"gender": "Men"}).ids[0])
    assert set(women[:30]) <= set(idx.search(q, 1200, filters={"gender": "Women"}).ids[0])
    idx.set_attributes(women[30:40], [{"colour": "red"}] * 10)  # gender dropped: to the unspecified graph
    _check(idx)
    _same_as_exact(idx, q)
    idx.remove(women[:5])
    _check(idx)
    _same_as_exact(idx, q)
    # compaction drops every stale entry and keeps the answers
    idx.compact()
    _check(idx)
    assert all(g.stale == 0 for g in idx._graphs.graphs.values())
    assert sum(g.entries for (a, _), g in idx._graphs.graphs.items() if a == "gender") == len(idx)
    _same_as_exact(idx, q)


def test_graphs_compact_themselves_past_the_tombstone_fraction():
    x, ids, attrs, q = _catalogue()
    idx = create_index("faiss", "hnsw", x.shape[1], "ip", ef_search=400, threads=1, value_graphs=["gender"],
                       max_tombstone_fraction=0.2)
    idx.add(ids, x, attrs)
    unisex = [i for i, a in zip(ids, attrs) if a.get("gender") == "Unisex"]
    g = idx._graphs.graph("gender", idx._items.codes["gender"]["Unisex"])
    idx.set_attributes(unisex[: len(unisex) // 2], [{"gender": "Women"}] * (len(unisex) // 2))  # half move out
    g2 = idx._graphs.graph("gender", idx._items.codes["gender"]["Unisex"])
    assert g2 is not g and g2.stale == 0 and g2.entries == len(unisex) - len(unisex) // 2  # rebuilt
    _check(idx)
    _same_as_exact(idx, q)


def test_save_load_round_trip_and_mismatched_or_corrupt_value_graphs(tmp_path):
    x, ids, attrs, q = _catalogue()
    idx = create_index("faiss", "hnsw", x.shape[1], "ip", ef_search=400, exact_filter_fraction=0.05, threads=1,
                       value_graphs=["gender"])
    idx.add(ids, x, attrs)
    idx.remove(ids[:20])
    idx.set_attributes(ids[20:40], [{"gender": "Men"}] * 20)
    idx.save(tmp_path / "i")
    manifest = json.loads((tmp_path / "i" / MANIFEST).read_text())
    assert manifest["options"]["value_graphs"] == ["gender"]
    back = load_index(tmp_path / "i")
    _check(back)
    assert {k: (g.entries, g.stale) for k, g in back._graphs.graphs.items()} == \
        {k: (g.entries, g.stale) for k, g in idx._graphs.graphs.items()}
    for f in FILTERS:
        assert back.search(q, 20, filters=f).ids == idx.search(q, 20, filters=f).ids
    _same_as_exact(back, q)
    with pytest.raises(UnsupportedIndexError, match="value_graphs"):
        load_index(tmp_path / "i", value_graphs=[])  # structural: cannot change on load
    # a manifest that names other value graphs than the files hold
    for opt in (["colour"], []):
        manifest["options"]["value_graphs"] = opt
        (tmp_path / "i" / MANIFEST).write_text(json.dumps(manifest))
        with pytest.raises(CorruptIndexError, match="value graphs|value_graphs"):
            load_index(tmp_path / "i")


def test_value_graphs_that_disagree_with_the_items_are_refused(tmp_path):
    """A graph file consistent with its checksum but not with the item table (written by a buggy or foreign
    writer): the load recomputes membership and refuses it."""
    x, ids, attrs, q = _catalogue(n=300)
    idx = create_index("faiss", "hnsw", x.shape[1], "ip", threads=1, value_graphs=["gender"])
    idx.add(ids, x, attrs)
    women = idx._items.codes["gender"]["Women"]
    one = next(i for i, a in zip(ids, attrs) if a.get("gender") == "Women")
    g = idx._graphs.graph("gender", women)
    g.index.add_with_ids(x[:1], np.array([idx._items.label_of[one]], dtype=np.int64))  # a second entry for one item
    idx.save(tmp_path / "twice")
    with pytest.raises(CorruptIndexError, match="twice"):
        load_index(tmp_path / "twice")
    del idx._graphs.graphs[("gender", women)]  # the women's graph lost: its items are in no graph
    idx.save(tmp_path / "lost")
    with pytest.raises(CorruptIndexError, match="do not hold every live item"):
        load_index(tmp_path / "lost")


def test_value_graph_options():
    with pytest.raises(UnsupportedIndexError, match="value_graphs"):
        create_index("faiss", "hnsw", 8, value_graphs="gender")  # a string, not a list
    with pytest.raises(UnsupportedIndexError, match="value_graphs"):
        create_index("faiss", "hnsw", 8, value_graphs=["gender", "gender"])
    flat = create_index("faiss", "auto", 8, n_items=100, value_graphs=["gender"])  # auto -> flat: exact, no graphs
    assert flat.kind == "flat" and not flat._graphs and flat.options()["value_graphs"] == ["gender"]
    h = create_index("faiss", "hnsw", 8, value_graphs=["gender"])
    h.add(["a"], np.ones((1, 8), np.float32), [{"gender": "Women"}])
    with pytest.raises(UnsupportedIndexError, match="true or false"):
        h.search(np.ones(8, np.float32), 1, filters={"gender": "Women"}, value_graphs="no")
    with pytest.raises(UnsupportedIndexError, match="unknown search option"):
        flat.search(np.ones(8, np.float32), 1, value_graphs=False)


def test_an_attribute_no_item_has_yet_starts_as_one_unspecified_graph():
    x, ids, attrs, q = _catalogue(n=400)
    idx = create_index("faiss", "hnsw", x.shape[1], "ip", ef_search=400, threads=1, value_graphs=["season"],
                       exact_filter_fraction=0.01)
    idx.add(ids, x, attrs)
    assert list(idx._graphs.graphs) == [("season", -1)] and idx._graphs.graphs[("season", -1)].entries == 400
    idx.set_attributes(ids[:200], [{**a, "season": "Summer"} for a in attrs[:200]])  # the column appears
    _check(idx)
    _same_as_exact(idx, q, [{"season": "Summer"}, {"season": "unspecified"}, {"season": ["Summer", "unspecified"]},
                            {"season": "Summer", "colour": "red"}])
    assert len(idx.search(q, 400, filters={"season": "Summer"}).ids[0]) == 200
