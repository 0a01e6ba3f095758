"""FAISS backend: known answers, filters inside the search, add/remove/upsert, save/load, recall."""

import numpy as np
import pytest

import vestis.index.faiss_index as fi
from vestis.errors import UnknownAttributeError, VestisError
from vestis.index import (
    IndexNotTrainedError,
    InvalidIdError,
    InvalidVectorError,
    UnknownIdError,
    UnsupportedIndexError,
    create_index,
    load_index,
)
from vestis.bench.index import clustered_vectors
from vestis.bench.recall import exact_scores, recall_at_k

# --- tiny hand-made catalogue -----------------------------------------------------------------
IDS = ["a", "b", "c", "d", "e"]
VECS = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0.3, 0, 0.4, 0], [0, 0, 0, 2], [-0.5, 0, 0, 0]], np.float32)
ATTRS = [{"color": "red", "size": "M"}, {"color": "blue", "size": "M"}, {"color": "red"},
         {"color": "green", "size": "L"}, {"color": "blue", "size": "S"}]
Q = np.array([[1, 0, 0, 0]], np.float32)
# with q = e1:  ip = q.x ;  l2 = |q - x|^2  (a 0, b 0.8, c 0.65, d 5, e 2.25)
EXPECTED = {"ip": (["a", "b", "c", "d", "e"], [1.0, 0.6, 0.3, 0.0, -0.5]),
            "l2": (["a", "c", "b", "e", "d"], [0.0, -0.65, -0.8, -2.25, -5.0])}
TINY_OPTIONS = {"flat": {}, "hnsw": {}, "ivfpq": {"nlist": 1, "nbits": 2}}
KINDS = ["flat", "hnsw", "ivfpq"]


def tiny(kind, metric="ip", **kw):
    idx = create_index("faiss", kind, 4, metric, **{**TINY_OPTIONS[kind], **kw})
    idx.add(IDS, VECS, ATTRS)
    return idx


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_known_answer_order_and_scores(kind, metric):
    idx = tiny(kind, metric)
    res = idx.search(Q, k=5)
    ids, scores = EXPECTED[metric]
    assert res.ids == [ids]
    np.testing.assert_allclose(res.scores[0], scores, atol=1e-5)
    assert res.scores[0].dtype == np.float32
    # k larger than the index: fewer results, no -1 padding
    res = idx.search(Q[0], k=50)
    assert res.ids == [ids] and len(res.scores[0]) == 5
    assert (len(idx), idx.dim, idx.metric, idx.kind, idx.backend) == (5, 4, metric, kind, "faiss")
    assert sorted(idx.ids()) == IDS


@pytest.mark.parametrize("kind", KINDS)
def test_filters(kind):
    idx = tiny(kind)
    s = lambda f, k=5: idx.search(Q, k, filters=f).ids[0]  # noqa: E731
    assert s({"color": "red"}) == ["a", "c"]
    assert s({"color": ["blue", "green"]}) == ["b", "d", "e"]
    assert s({"color": ["blue", "green"]}, k=2) == ["b", "d"]
    assert s({"color": "red", "size": "M"}) == ["a"]
    assert s({"color": ["red", "blue"], "size": ["M", "S"]}) == ["a", "b", "e"]
    assert s({"size": "unspecified"}) == ["c"]
    assert s({"color": "red", "size": ["unspecified", "L"]}) == ["c"]
    assert s({"color": "purple"}) == []
    assert s({"color": []}) == []
    assert s({"color": "red", "size": "L"}) == []
    with pytest.raises(UnknownAttributeError, match="shape") as e:
        idx.search(Q, 5, filters={"shape": "round"})
    assert isinstance(e.value, VestisError)
    empty = idx.search(np.vstack([Q, Q]), 3, filters={"color": "purple"})
    assert empty.ids == [[], []] and all(len(s) == 0 for s in empty.scores)


def test_declared_attribute_without_items():
    idx = create_index("faiss", "flat", 4, attributes=["pattern"])
    idx.add(IDS, VECS, ATTRS)
    assert idx.search(Q, 5, filters={"pattern": "striped"}).ids == [[]]
    assert idx.search(Q, 2, filters={"pattern": "unspecified"}).ids == [["a", "b"]]


def _near_and_far(n_near=3000, n_far=300, dim=16, seed=0):
    """Many 'red' items right around the query, fewer 'blue' ones in a wider shell around them:
    every red item is closer to the query than every blue one."""
    rng = np.random.default_rng(seed)
    q = np.zeros(dim, np.float32)
    q[0] = 1
    near = q + 0.05 * rng.standard_normal((n_near, dim)).astype(np.float32)
    far = q + 0.5 * rng.standard_normal((n_far, dim)).astype(np.float32)
    x = np.vstack([near, far]).astype(np.float32)
    ids = [f"n{i}" for i in range(n_near)] + [f"f{i}" for i in range(n_far)]
    attrs = [{"color": "red"}] * n_near + [{"color": "blue"}] * n_far
    return q, x, ids, attrs


@pytest.mark.parametrize("kind,opts", [("flat", {}), ("hnsw", {}), ("ivfpq", {"nlist": 16})])
def test_filter_is_applied_inside_the_search(kind, opts, monkeypatch):
    q, x, ids, attrs = _near_and_far()
    idx = create_index("faiss", kind, x.shape[1], "l2", **opts)
    idx.add(ids, x, attrs)
    used = []
    real = fi._selector
    monkeypatch.setattr(fi, "_selector", lambda mask: used.append(int(mask.sum())) or real(mask))
    exact = create_index("faiss", "flat", x.shape[1], "l2")
    exact.add(ids, x, attrs)
    # the 3000 best unfiltered results are all red: dropping non-matching results after a
    # top-k search would return nothing; the selector makes FAISS find the best blue ones
    assert all(i.startswith("n") for i in exact.search(q, 3000).ids[0])
    best = exact.search(q, 1, filters={"color": "blue"}).ids[0]
    assert best[0].startswith("f")
    assert idx.search(q, 1, filters={"color": "blue"}).ids[0] == best
    got = idx.search(q, 10, filters={"color": "blue"}).ids[0]
    assert got == exact.search(q, 10, filters={"color": "blue"}).ids[0]
    assert used and all(n == 300 for n in used)  # the bitmap selector held exactly the matching items


@pytest.mark.parametrize("kind,opts", [("hnsw", {}), ("ivfpq", {"nlist": 32})])
def test_graph_and_ivf_searches_filter_with_the_selector(kind, opts, monkeypatch):
    """exact_filter_fraction=0: the HNSW walk / IVF scan itself skips non-matching items."""
    x, centres = clustered_vectors(4000, 16, n_clusters=40, seed=4)
    q, _ = clustered_vectors(50, 16, seed=8, centers=centres)
    rng = np.random.default_rng(0)
    colors = np.where(rng.random(4000) < 0.1, "blue", "red")
    ids, attrs = [str(i) for i in range(4000)], [{"color": c} for c in colors]
    idx = create_index("faiss", kind, 16, exact_filter_fraction=0.0, **opts)
    idx.add(ids, x, attrs)
    exact = create_index("faiss", "flat", 16)
    exact.add(ids, x, attrs)
    calls = []
    real_exact = idx._search_exact
    monkeypatch.setattr(idx, "_search_exact", lambda *a: calls.append(1) or real_exact(*a))
    got = idx.search(q, 10, filters={"color": "blue"}).ids
    assert all(len(g) == 10 and all(colors[int(i)] == "blue" for i in g) for g in got)
    blue_scores = exact_scores(x, q)
    blue_scores[:, colors != "blue"] = -np.inf  # the exact top 10 among the blue items
    assert recall_at_k([[int(i) for i in g] for g in got], blue_scores, 10).plain >= 0.9
    assert not calls  # answered by the graph / the inverted lists, not by the exact fallback
    unfiltered = exact.search(q, 10).ids  # what "search, then drop non-matching" would have had to work with
    assert np.mean([sum(colors[int(i)] == "blue" for i in u) for u in unfiltered]) < 3


@pytest.mark.parametrize("kind", KINDS)
def test_add_remove_upsert_without_rebuild(kind):
    x, centres = clustered_vectors(2000, 16, n_clusters=50, seed=3)
    ids = [f"item{i}" for i in range(2000)]
    attrs = [{"color": ["red", "blue"][i % 2]} for i in range(2000)]
    opts = {"ivfpq": {"nlist": 16}}.get(kind, {})
    idx = create_index("faiss", kind, 16, **opts)
    idx.add(ids[:1500], x[:1500], attrs[:1500])
    faiss_obj = idx._index
    idx.add(ids[1500:], x[1500:], attrs[1500:])
    assert len(idx) == 2000
    # remove: gone from results, count updated
    gone = ids[:100]
    assert idx.remove(gone) == 100
    assert len(idx) == 1900 and "item0" not in idx and "item100" in idx
    res = idx.search(x[:100], 5)
    assert not set(sum(res.ids, [])) & set(gone)
    # removing unknown ids: clear error, nothing removed; or ignore and count
    with pytest.raises(UnknownIdError, match="item0"):
        idx.remove(["item100", "item0"])
    assert len(idx) == 1900 and "item100" in idx
    assert idx.remove(["item100", "item0"], missing="ignore") == 1
    # upsert: same id, new vector and attributes replace the old ones
    target = x[1999] * -1
    idx.add(["item500"], target[None], [{"color": "green"}])
    assert len(idx) == 1899
    assert idx.search(target, 1).ids[0] == ["item500"]
    assert idx.search(target, 5, filters={"color": "green"}).ids[0] == ["item500"]
    assert "item500" not in idx.search(x[500], 20, filters={"color": "red"}).ids[0]
    # re-adding a removed id works
    idx.add(["item0"], x[:1], [{"color": "red"}])
    assert idx.search(x[0], 1).ids[0] == ["item0"]
    assert idx._index is faiss_obj  # no rebuild happened
    if kind == "hnsw":
        assert idx._tombstones == 101 + 1  # removed + replaced versions, excluded by the selector


def test_hnsw_tombstones_compact_keeps_results():
    x, _ = clustered_vectors(1000, 16, n_clusters=20, seed=5)
    ids = [str(i) for i in range(1000)]
    idx = create_index("faiss", "hnsw", 16, max_tombstone_fraction=0.5)
    idx.add(ids, x)
    idx.remove(ids[:300])
    assert idx._tombstones == 300
    before = idx.search(x[:50], 10)
    assert idx.compact() == 300 and idx._tombstones == 0 and idx._index.ntotal == 700
    after = idx.search(x[:50], 10)
    assert after.ids == before.ids
    idx.remove(ids[300:700])  # now > 50 % of stored vectors are dead: automatic compaction
    assert idx._tombstones == 0 and idx._index.ntotal == 300 and len(idx) == 300
    assert set(idx.search(x[:5], 300).ids[0]) == set(ids[700:])


def test_input_errors():
    idx = create_index("faiss", "flat", 4)
    with pytest.raises(InvalidVectorError, match="embedding size 3"):
        idx.add(["a"], np.zeros((1, 3), np.float32))
    with pytest.raises(InvalidVectorError, match="NaN"):
        idx.add(["a", "b"], np.array([[0, 0, 0, 0], [np.nan, 0, 0, 0]], np.float32))
    with pytest.raises(InvalidVectorError, match="2 ids but 1 vectors"):
        idx.add(["a", "b"], np.zeros((1, 4), np.float32))
    with pytest.raises(InvalidIdError, match="more than once"):
        idx.add(["a", "a"], np.zeros((2, 4), np.float32))
    with pytest.raises(InvalidIdError):
        idx.add([3], np.zeros((1, 4), np.float32))
    with pytest.raises(InvalidIdError, match="strings"):
        idx.add(["a"], np.zeros((1, 4), np.float32), [{"color": 3}])
    assert len(idx) == 0  # nothing half-added
    idx.add(["a"], np.ones((1, 4), np.float64))  # other float dtypes are converted
    with pytest.raises(InvalidVectorError, match="queries have embedding size 5"):
        idx.search(np.zeros((1, 5), np.float32), 1)
    with pytest.raises(UnsupportedIndexError, match="k must be"):
        idx.search(np.zeros(4, np.float32), 0)
    with pytest.raises(UnsupportedIndexError, match="ef_search"):
        idx.search(np.zeros(4, np.float32), 1, ef_search=10)
    with pytest.raises(UnsupportedIndexError, match="efsearch"):
        create_index("faiss", "hnsw", 4, efsearch=10)
    with pytest.raises(UnsupportedIndexError, match="valid"):
        create_index("faiss", "annoy", 4)
    with pytest.raises(UnsupportedIndexError, match="metric"):
        create_index("faiss", "flat", 4, "cosine")
    with pytest.raises(UnsupportedIndexError, match="backend"):
        create_index("qdrant", "flat", 4)
    for err in (InvalidVectorError, InvalidIdError, UnknownIdError, UnsupportedIndexError, IndexNotTrainedError):
        assert issubclass(err, VestisError)


def test_ivfpq_training():
    x, _ = clustered_vectors(1000, 16, n_clusters=20, seed=1)
    idx = create_index("faiss", "ivfpq", 16)
    assert not idx.is_trained
    assert idx.search(x[:2], 3).ids == [[], []]
    with pytest.raises(IndexNotTrainedError, match="train"):
        idx.add(["a", "b"], x[:2])
    idx.train(x)  # explicit training on a sample
    assert idx.is_trained and idx.options()["nlist"] == fi.default_nlist(1000)
    idx.add(["a", "b"], x[:2])
    assert idx.search(x[0], 1).ids == [["a"]]
    auto = create_index("faiss", "ivfpq", 16)  # trains on the first add when it is large enough
    auto.add([str(i) for i in range(1000)], x)
    assert auto.is_trained and len(auto) == 1000


def test_default_parameter_helpers():
    assert fi.default_nlist(200_000) == 2048 and fi.default_nlist(5000) == 128 and fi.default_nlist(10) == 1
    assert fi.default_pq_m(128) == 32 and fi.default_pq_m(1280) == 64 and fi.default_pq_m(4) == 1


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_recall_at_10_vs_exact(kind):
    x, centres = clustered_vectors(5000, 32, n_clusters=100, seed=0)
    q, _ = clustered_vectors(200, 32, seed=1, centers=centres)
    idx = create_index("faiss", kind, 32)
    idx.add([str(i) for i in range(len(x))], x)
    found = [[int(i) for i in r] for r in idx.search(q, 10).ids]
    assert recall_at_k(found, exact_scores(x, q), 10).plain >= 0.9


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_save_load_round_trip(kind, metric, tmp_path):
    x, centres = clustered_vectors(1500, 16, n_clusters=30, seed=2)
    q, _ = clustered_vectors(30, 16, seed=9, centers=centres)
    ids = [f"id-{i}-ü\"'" for i in range(1500)]  # ids survive JSON with any characters
    attrs = [{"color": ["red", "blue", "gr\"een"][i % 3], **({"size": "M"} if i % 4 else {})} for i in range(1500)]
    opts = {"ivfpq": {"nlist": 16}}.get(kind, {})
    idx = create_index("faiss", kind, 16, metric, run_id="run-7", schema_digest="abc123", **opts)
    idx.add(ids, x, attrs)
    idx.remove(ids[:40])  # hnsw: tombstones are saved too
    idx.add(ids[50:60], x[:10], attrs[:10])
    idx.save(tmp_path / "ix")
    back = load_index(tmp_path / "ix", expect_run_id="run-7", expect_schema_digest="abc123", expect_dim=16)
    assert (back.kind, back.metric, back.dim, back.run_id, back.schema_digest, len(back)) == \
        (kind, metric, 16, "run-7", "abc123", len(idx))
    assert back.created_at == idx.created_at and sorted(back.ids()) == sorted(idx.ids())
    for flt in (None, {"color": "gr\"een"}, {"color": ["red", "blue"], "size": "unspecified"}):
        a, b = idx.search(q, 10, filters=flt), back.search(q, 10, filters=flt)
        assert a.ids == b.ids
        for sa, sb in zip(a.scores, b.scores):
            np.testing.assert_array_equal(sa, sb)
    # the loaded index keeps working: add / remove / save again
    back.remove(ids[100:110])
    back.add(["new"], x[:1], [{"color": "violet"}])
    assert back.search(x[0], 1, filters={"color": "violet"}).ids == [["new"]]
    back.save(tmp_path / "ix")
    again = load_index(tmp_path / "ix")
    assert len(again) == len(back) and again.search(q, 5).ids == back.search(q, 5).ids


def test_load_overrides_search_defaults(tmp_path):
    x, _ = clustered_vectors(500, 8, n_clusters=10)
    idx = create_index("faiss", "hnsw", 8, ef_search=16)
    idx.add([str(i) for i in range(500)], x)
    idx.save(tmp_path / "ix")
    assert load_index(tmp_path / "ix").options()["ef_search"] == 16
    assert load_index(tmp_path / "ix", ef_search=200).options()["ef_search"] == 200
    with pytest.raises(UnsupportedIndexError, match="cannot change"):
        load_index(tmp_path / "ix", M=8)
