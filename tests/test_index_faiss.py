"""FAISS backend specifics: filters applied inside the search (the selector), in-place updates and HNSW
tombstones, IVF-PQ training and defaults, recall against exact search, search options on load. The contract
every backend shares (known answers, filters, add/remove/upsert, errors, save/load) is test_index_contract.py."""

import numpy as np
import pytest

import vestis.index.faiss_index as fi
from vestis.index import IndexNotTrainedError, UnsupportedIndexError, create_index, load_index
from vestis.bench.index import clustered_vectors
from vestis.bench.recall import exact_scores, recall_at_k

KINDS = ["flat", "hnsw", "ivfpq"]


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
    if kind in ("flat", "hnsw"):  # an exact search (HNSW: a selective filter) scans the filter's rows as their own
        assert [len(labels) for _, labels in idx._subsets.values()] == [300]  # IndexFlat: exactly the matching items
    else:
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
def test_updates_change_the_faiss_index_in_place(kind):
    """add / remove / upsert / re-add (what they do: test_index_contract.py) never rebuild the FAISS index;
    HNSW keeps removed and replaced versions as tombstones, which the selector excludes."""
    x, _ = clustered_vectors(2000, 16, n_clusters=50, seed=3)
    ids = [f"item{i}" for i in range(2000)]
    attrs = [{"color": ["red", "blue"][i % 2]} for i in range(2000)]
    idx = create_index("faiss", kind, 16, **{"ivfpq": {"nlist": 16}}.get(kind, {}))
    idx.add(ids[:1500], x[:1500], attrs[:1500])
    faiss_obj = idx._index
    idx.add(ids[1500:], x[1500:], attrs[1500:])
    assert idx.remove(ids[:101]) == 101
    idx.add(["item500"], -x[1999:], [{"color": "green"}])  # upsert
    idx.add(["item0"], x[:1], [{"color": "red"}])  # re-add a removed id
    assert len(idx) == 1900 and idx.search(-x[1999], 1).ids == [["item500"]]
    assert idx._index is faiss_obj  # no rebuild happened
    if kind == "hnsw":
        assert idx._tombstones == 101 + 1  # removed + replaced versions
        assert idx._index.ntotal == 2000 + 2


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


def test_load_overrides_search_defaults(tmp_path):
    x, _ = clustered_vectors(500, 8, n_clusters=10)
    idx = create_index("faiss", "hnsw", 8, ef_search=16)
    idx.add([str(i) for i in range(500)], x)
    idx.save(tmp_path / "ix")
    assert load_index(tmp_path / "ix").options()["ef_search"] == 16
    assert load_index(tmp_path / "ix", ef_search=200).options()["ef_search"] == 200
    with pytest.raises(UnsupportedIndexError, match="cannot change"):
        load_index(tmp_path / "ix", M=8)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_filter_subsets_give_the_selector_scan_results(metric, kind, monkeypatch):
    """An exact search (flat; HNSW's exact scan of a selective filter) searches a seen filter's rows as their own
    IndexFlat (SUBSET_ROWS): the same ids and the same scores, bit for bit, as the scan behind the selector, after
    adds, removals and relabels too."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((600, 24)).astype(np.float32)
    x[50] = x[51]  # a tie
    ids = [f"i{j}" for j in range(600)]
    colours = ["red", "blue", "green", "grey"]
    attrs = [{"colour": colours[j % 4], "size": "s" if j % 3 else "m"} for j in range(600)]
    q = np.vstack([x[50], rng.standard_normal((4, 24))]).astype(np.float32)
    built = []
    real_subset = fi.FaissIndex._subset
    monkeypatch.setattr(fi.FaissIndex, "_subset", lambda self, key, mask: built.append(key) or real_subset(self, key, mask))

    def both(idx, filters, k=40):
        got = idx.search(q, k, filters=filters)
        monkeypatch.setattr(fi, "SUBSET_ROWS", 0)
        saved, idx._subsets = idx._subsets, fi.OrderedDict()
        ref = idx.search(q, k, filters=filters)
        monkeypatch.setattr(fi, "SUBSET_ROWS", 4)
        idx._subsets = saved
        for a, b, c, d in zip(got.ids, ref.ids, got.scores, ref.scores):
            assert a == b and np.array_equal(c, d)
        return got

    # HNSW: every filter below matches at most half the items, so exact_filter_fraction 0.6 takes the exact scan
    idx = create_index("faiss", kind, 24, metric, **({"exact_filter_fraction": 0.6} if kind == "hnsw" else {}))
    idx.add(ids, x, attrs)
    for f in ({"colour": "red"}, {"colour": ["red", "blue"]}, {"colour": "green", "size": "m"}, {"size": "m"}):
        both(idx, f)
        both(idx, f)  # the second time from the cache
    assert len(idx._subsets) == 4 and built  # each at most half the items: all kept
    assert idx.search(q, 40, filters={"size": "s"}).ids  # two thirds of the items: the selector scan, not kept
    assert len(idx._subsets) == 4
    red = both(idx, {"colour": "red"})
    assert all(i in {f"i{j}" for j in range(0, 600, 4)} for i in red.ids[0])
    # changes drop the subsets: an added red item, a removed one, a relabelled one are seen at once
    idx.add(["new"], x[50:51] * 1.01, [{"colour": "red", "size": "s"}])
    assert not idx._subsets
    assert "new" in both(idx, {"colour": "red"}).ids[0][:3]
    idx.remove(["new", "i4"])
    assert "new" not in both(idx, {"colour": "red"}).ids[0] and "i4" not in idx.search(q, 600, filters={"colour": "red"}).ids[1]
    idx.set_attributes(["i1"], [{"colour": "red"}])
    assert "i1" in both(idx, {"colour": "red"}, k=200).ids[1]


def test_filter_subsets_stay_within_their_row_budget(monkeypatch):
    """The subsets hold at most SUBSET_ROWS x the index's rows: the least recently used go first, and the answers
    do not change when a subset is dropped and built again."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    values = [f"v{j}" for j in range(8)]  # 50 rows each
    idx = create_index("faiss", "flat", 8, "ip")
    idx.add([f"i{j}" for j in range(400)], x, [{"c": values[j % 8]} for j in range(400)])
    q = rng.standard_normal((2, 8)).astype(np.float32)
    monkeypatch.setattr(fi, "SUBSET_ROWS", 0.5)  # 200 rows: four filters of 50
    first = [idx.search(q, 10, filters={"c": v}) for v in values[:4]]
    assert list(idx._subsets) == [fi._filter_key({"c": (v,)}) for v in values[:4]]
    idx.search(q, 10, filters={"c": values[0]})  # used again: now the most recent
    idx.search(q, 10, filters={"c": values[4]})  # a fifth: the least recently used (v1) goes
    assert list(idx._subsets) == [fi._filter_key({"c": (v,)}) for v in (values[2], values[3], values[0], values[4])]
    assert sum(len(labels) for _, labels in idx._subsets.values()) <= 200
    again = [idx.search(q, 10, filters={"c": v}) for v in values[:4]]  # v1 rebuilt
    for a, b in zip(first, again):
        assert a.ids == b.ids and all(np.array_equal(s, t) for s, t in zip(a.scores, b.scores))
    monkeypatch.setattr(fi, "SUBSET_ROWS", 4)
    monkeypatch.setattr(fi, "SUBSET_BYTES", 100 * 4 * 8)  # 100 rows of 8 floats: two filters of 50
    idx._subsets.clear()
    for v in values[:5]:
        idx.search(q, 10, filters={"c": v})
    assert list(idx._subsets) == [fi._filter_key({"c": (v,)}) for v in values[3:5]]


def test_set_search_threads_bounds_batched_searches(monkeypatch):
    """A server process searches a batch of queries on one thread (`set_search_threads(1)`), not on every core."""
    rng = np.random.default_rng(0)
    idx = create_index("faiss", "flat", 8, "ip", threads=2)
    idx.add([f"i{j}" for j in range(50)], rng.standard_normal((50, 8)).astype(np.float32))
    asked = []
    monkeypatch.setattr(fi.faiss, "omp_set_num_threads", asked.append)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    before = idx.search(q, 5)
    idx.set_search_threads(1)
    after = idx.search(q, 5)
    assert asked == [2, 1] and before.ids == after.ids
    with pytest.raises(Exception, match="threads"):
        idx.set_search_threads(0)
