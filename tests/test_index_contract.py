"""The `VectorIndex` contract (vestis/index/base.py), checked the same way on every backend: known answers,
filters, add / remove / upsert, input errors, save / load round trips, manifest expectations, empty indexes,
ids and values with any characters, kind="auto".

Backend-specific behaviour stays in test_index_faiss.py (kinds' options, the selector inside the search,
tombstones, IVF-PQ training, recall) and test_index_milvus.py (expression escaping, Milvus Lite limits).

A backend is one `Backend` in BACKENDS. "milvus-server" is a real Milvus standalone server (the session fixture
`milvus_server` in conftest.py starts one, or `VESTIS_TEST_MILVUS_URI` names an existing server or cluster): each
index gets its own collection there, dropped at teardown, and `snapshot_saves=False` because a server keeps one
copy of the data, so changes after `save` show in what `load_index` opens. A restart of that server keeps
collections and answers (`test_server_restart_keeps_collections_and_answers`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pytest

from vestis.errors import UnknownAttributeError, VestisError
from vestis.index import (
    AUTO_HNSW,
    auto_kind,
    IndexMismatchError,
    IndexNotTrainedError,
    InvalidIdError,
    InvalidVectorError,
    UnknownIdError,
    UnsupportedIndexError,
    create_index,
    load_index,
    read_manifest,
)
from vestis.bench.index import clustered_vectors
from vestis.index.errors import VectorIndexError


@dataclass(frozen=True)
class Backend:
    name: str                      # the test id
    backend: str                   # create_index's backend
    kinds: tuple[str, ...]         # the kinds it builds
    needs: tuple[str, ...] = ()    # importable modules, else its tests are skipped
    tiny_options: dict = field(default_factory=dict)   # per kind, for the 5-item catalogue (e.g. a 1-list IVF)
    options: dict = field(default_factory=dict)        # per kind, for a few thousand items
    server: bool = False           # a server backend: its uri comes from the `milvus_server` fixture
    snapshot_saves: bool = True    # save() copies the data; False where it stays on a server
    slow_kinds: tuple[str, ...] = ()   # kinds checked only by `make test-all` (slow: a server round trip per call)


BACKENDS = [
    Backend("faiss", "faiss", ("flat", "hnsw", "ivfpq"),
            tiny_options={"ivfpq": {"nlist": 1, "nbits": 2}}, options={"ivfpq": {"nlist": 16}}),
    Backend("milvus-lite", "milvus", ("flat", "hnsw"), needs=("pymilvus", "milvus_lite")),
    Backend("milvus-server", "milvus", ("flat", "hnsw", "ivfpq"), needs=("pymilvus",), server=True,
            tiny_options={"ivfpq": {"nlist": 1, "nbits": 2, "m": 2}}, options={"ivfpq": {"nlist": 16}},
            snapshot_saves=False, slow_kinds=("hnsw", "ivfpq")),
]
KINDS = [pytest.param((b, k), id=f"{b.name}-{k}", marks=[pytest.mark.slow] if k in b.slow_kinds else [])
         for b in BACKENDS for k in b.kinds]

# --- tiny hand-made catalogue -----------------------------------------------------------------
IDS = ["a", "b", "c", "d", "e"]
VECS = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0.3, 0, 0.4, 0], [0, 0, 0, 2], [-0.5, 0, 0, 0]], np.float32)
ATTRS = [{"color": "red", "size": "M"}, {"color": "blue", "size": "M"}, {"color": "red"},
         {"color": "green", "size": "L"}, {"color": "blue", "size": "S"}]
Q = np.array([[1, 0, 0, 0]], np.float32)
# with q = e1:  ip = q.x ;  l2 = |q - x|^2  (a 0, b 0.8, c 0.65, d 5, e 2.25)
EXPECTED = {"ip": (["a", "b", "c", "d", "e"], [1.0, 0.6, 0.3, 0.0, -0.5]),
            "l2": (["a", "c", "b", "e", "d"], [0.0, -0.65, -0.8, -2.25, -5.0])}


@cache
def _unavailable(name: str) -> str | None:
    """Why backend `name` cannot run here, or None (asked once per session)."""
    spec = next(b for b in BACKENDS if b.name == name)
    for m in spec.needs:
        if importlib.util.find_spec(m) is None:
            return f"{m} not installed (pip install 'vestis[{spec.backend}]')"
    if spec.backend == "milvus" and not spec.server:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            try:
                create_index("milvus", "flat", 4, work_dir=d).close()
            except VectorIndexError as e:
                return f"Milvus Lite cannot start here: {e}"
    return None


class Maker:
    """Creates and reopens indexes of one backend in a temporary folder and closes them all at the end."""

    _serial = itertools.count()

    def __init__(self, spec: Backend, tmp, request):
        reason = _unavailable(spec.name)
        if reason:
            pytest.skip(reason)
        self.spec, self.tmp, self.made = spec, tmp, []
        self.server = request.getfixturevalue("milvus_server") if spec.server else None  # started on first use

    def _placement(self) -> dict:
        """Where a new index keeps its data: a private working folder (Lite), a fresh collection (server)."""
        n = next(self._serial)
        if self.server is not None:
            return {"uri": self.server.uri, "collection": f"vestis_contract_{os.getpid()}_{n}"}
        if self.spec.backend == "milvus":
            return {"work_dir": str(self.tmp / f"work-{n}")}
        return {}

    def create(self, kind: str = "flat", dim: int = 4, metric: str = "ip", *, tiny: bool = False, **kw):
        opts = (self.spec.tiny_options if tiny else self.spec.options).get(kind, {})
        idx = create_index(self.spec.backend, kind, dim, metric, **{**self._placement(), **opts, **kw})
        self.made.append(idx)
        return idx

    def tiny(self, kind: str = "flat", metric: str = "ip", **kw):
        kw.setdefault("attributes", ["color", "size"])  # declared: a Milvus collection gets a scalar field for each
        idx = self.create(kind, 4, metric, tiny=True, **kw)
        idx.add(IDS, VECS, ATTRS)
        return idx

    def load(self, index_dir, **kw):
        place = {"work_dir": str(self.tmp / f"work-{next(self._serial)}")} if self.spec.backend == "milvus" \
            and not self.spec.server else {"uri": self.server.uri} if self.server is not None else {}
        idx = load_index(index_dir, **{**place, **kw})
        self.made.append(idx)
        return idx

    def close(self):
        for idx in self.made:
            client = getattr(idx, "_client", None)
            if self.server is not None and client is not None:
                with contextlib.suppress(Exception):  # (a client of a server that restarted since)
                    if client.has_collection(idx._collection):
                        client.drop_collection(idx._collection)  # a server keeps collections after close()
            idx.close()


@pytest.fixture(params=[pytest.param(b, id=b.name) for b in BACKENDS])
def make(request, tmp_path):
    m = Maker(request.param, tmp_path, request)
    yield m
    m.close()


@pytest.fixture(params=KINDS)
def make_kind(request, tmp_path):
    spec, kind = request.param
    m = Maker(spec, tmp_path, request)
    yield m, kind
    m.close()


@pytest.fixture(scope="module")
def known(tmp_path_factory, request):
    """The tiny catalogue in every (backend, kind, metric), built once: read-only tests share them."""
    makers, made = {}, {}

    def get(spec: Backend, kind: str, metric: str):
        if spec.name not in makers:
            makers[spec.name] = Maker(spec, tmp_path_factory.mktemp(f"known-{spec.name}"), request)
        if (spec.name, kind, metric) not in made:
            made[spec.name, kind, metric] = makers[spec.name].tiny(kind, metric)
        return made[spec.name, kind, metric]

    yield get
    for m in makers.values():
        m.close()


# --- known answers and filters ----------------------------------------------------------------
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("spec_kind", KINDS)
def test_known_answer_order_and_scores(known, spec_kind, metric):
    spec, kind = spec_kind
    idx = known(spec, kind, metric)
    res = idx.search(Q, k=5)
    ids, scores = EXPECTED[metric]
    assert res.ids == [ids] and res.metric == metric
    np.testing.assert_allclose(res.scores[0], scores, atol=1e-5)
    assert res.scores[0].dtype == np.float32
    res = idx.search(Q[0], k=50)  # one (dim,) vector is one query; k above the count: fewer, no padding
    assert res.ids == [ids] and len(res.scores[0]) == 5
    assert (len(idx), idx.dim, idx.metric, idx.kind, idx.backend) == (5, 4, metric, kind, spec.backend)
    assert sorted(idx.ids()) == IDS and "c" in idx and "z" not in idx
    assert set(idx.attribute_names) == {"color", "size"}


@pytest.mark.parametrize("spec_kind", KINDS)
def test_filters(known, spec_kind):
    idx = known(*spec_kind, "ip")
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
    with pytest.raises(UnsupportedIndexError, match="strings"):
        idx.search(Q, 5, filters={"color": 3})
    empty = idx.search(np.vstack([Q, Q]), 3, filters={"color": "purple"})
    assert empty.ids == [[], []] and all(len(s) == 0 for s in empty.scores)


def test_declared_attribute_without_items(make):
    idx = make.create(attributes=["pattern"])
    idx.add(IDS, VECS, ATTRS)
    assert idx.attribute_names[0] == "pattern"
    assert idx.search(Q, 5, filters={"pattern": "striped"}).ids == [[]]
    assert idx.search(Q, 2, filters={"pattern": "unspecified"}).ids == [["a", "b"]]


def test_any_characters_in_ids_attribute_names_and_values(make):
    """Quotes, backslashes and would-be expression injections are plain data (on Milvus: "color" a declared
    attribute, so a scalar field, 'we"ird' one seen on items only, so a JSON path)."""
    idx = make.create(attributes=["color"])
    nasty = ['say "hi"', "it's", "back\\slash", '\\"', 'x" or attributes["color"] != "']
    ids = ['id"1', "id'2", "id\\3", 'id4"] or id != ["', "id5-ü"]
    idx.add(ids, VECS, [{"color": v, 'we"ird': v} for v in nasty])
    for i, v in enumerate(nasty):  # each value matches exactly its own item, injection included
        assert idx.search(Q, 5, filters={"color": v}).ids[0] == [ids[i]]
        assert idx.search(Q, 5, filters={'we"ird': [v, "none"]}).ids[0] == [ids[i]]
    assert sorted(idx.ids()) == sorted(ids) and ids[3] in idx
    assert idx.remove([ids[3], ids[0]]) == 2
    assert sorted(idx.ids()) == sorted([ids[1], ids[2], ids[4]])
    with pytest.raises(UnknownIdError):
        idx.remove([ids[3]])


# --- add / remove / upsert --------------------------------------------------------------------
def test_add_remove_upsert(make_kind):
    make, kind = make_kind
    idx = make.tiny(kind)
    assert idx.remove(["a", "d"]) == 2
    assert idx.search(Q, 5).ids == [["b", "c", "e"]]
    with pytest.raises(UnknownIdError, match="'a'"):
        idx.remove(["b", "a"])
    assert len(idx) == 3 and "b" in idx  # nothing removed
    assert idx.remove(["b", "a"], missing="ignore") == 1
    with pytest.raises(UnsupportedIndexError, match="missing"):
        idx.remove(["c"], missing="skip")
    idx.add(["e"], np.array([[2, 0, 0, 0]], np.float32), [{"color": "gold"}])  # upsert: vector and attributes
    assert len(idx) == 2
    res = idx.search(Q, 5)
    assert res.ids == [["e", "c"]]
    np.testing.assert_allclose(res.scores[0], [2.0, 0.3], atol=1e-5)
    assert idx.search(Q, 5, filters={"color": "blue"}).ids == [[]]  # its old attributes are gone
    assert idx.search(Q, 5, filters={"color": "gold"}).ids == [["e"]]
    idx.add(["a"], VECS[:1], [ATTRS[0]])  # a removed id comes back
    assert idx.search(Q, 1).ids == [["e"]] and idx.search(Q, 5, filters={"size": "M"}).ids == [["a"]]


def test_set_attributes_keeps_vectors(make_kind, tmp_path):
    """Attributes change without re-embedding: filters see the new ones, scores and order stay; an unknown id
    changes nothing; the change survives a save / load."""
    make, kind = make_kind
    idx = make.tiny(kind)
    before = idx.search(Q, 5)
    idx.set_attributes(["c", "e"], [{"color": "blue", "size": "XL", "fit": "slim"}, {"size": None, "color": "unspecified"}])
    after = idx.search(Q, 5)
    assert after.ids == before.ids
    np.testing.assert_array_equal(after.scores[0], before.scores[0])
    s = lambda f: idx.search(Q, 5, filters=f).ids[0]  # noqa: E731
    assert s({"color": "red"}) == ["a"]  # c is no longer red
    assert s({"color": "blue"}) == ["b", "c"]  # c is blue now, e has no colour
    assert s({"color": "unspecified"}) == ["e"] and s({"size": "unspecified"}) == ["e"]
    assert s({"size": "XL"}) == ["c"] and s({"fit": "slim"}) == ["c"]  # a new attribute becomes filterable
    assert "fit" in idx.attribute_names
    with pytest.raises(UnknownIdError, match="'zz'"):
        idx.set_attributes(["a", "zz"], [{"color": "gold"}, {"color": "gold"}])
    assert s({"color": "gold"}) == [] and s({"color": "red"}) == ["a"]  # nothing changed
    with pytest.raises(InvalidVectorError, match="2 attribute mappings but 1"):
        idx.set_attributes(["a"], [{}, {}])
    with pytest.raises(InvalidIdError, match="strings"):
        idx.set_attributes(["a"], [{"color": 3}])
    assert s({"color": "red"}) == ["a"]
    idx.save(tmp_path / "ix")
    back = make.load(tmp_path / "ix")
    assert back.search(Q, 5, filters={"color": "blue"}).ids[0] == ["b", "c"]
    assert back.search(Q, 5, filters={"size": "XL"}).ids[0] == ["c"]
    np.testing.assert_array_equal(back.search(Q, 5).scores[0], before.scores[0])


def test_add_remove_upsert_at_scale(make_kind):
    make, kind = make_kind
    x, _ = clustered_vectors(2000, 16, n_clusters=50, seed=3)
    ids = [f"item{i}" for i in range(2000)]
    attrs = [{"color": ["red", "blue"][i % 2]} for i in range(2000)]
    idx = make.create(kind, 16, attributes=["color"])
    idx.add(ids[:1500], x[:1500], attrs[:1500])
    idx.add(ids[1500:], x[1500:], attrs[1500:])
    assert len(idx) == 2000
    gone = ids[:100]
    assert idx.remove(gone) == 100
    assert len(idx) == 1900 and "item0" not in idx and "item100" in idx
    assert not set(sum(idx.search(x[:100], 5).ids, [])) & set(gone)
    with pytest.raises(UnknownIdError, match="item0"):
        idx.remove(["item100", "item0"])
    assert len(idx) == 1900 and "item100" in idx
    assert idx.remove(["item100", "item0"], missing="ignore") == 1
    target = x[1999] * -1  # upsert: the same id, a new vector and new attributes
    idx.add(["item500"], target[None], [{"color": "green"}])
    assert len(idx) == 1899
    assert idx.search(target, 1).ids[0] == ["item500"]
    assert idx.search(target, 5, filters={"color": "green"}).ids[0] == ["item500"]
    assert "item500" not in idx.search(x[500], 20, filters={"color": "red"}).ids[0]
    idx.add(["item0"], x[:1], [{"color": "red"}])
    assert idx.search(x[0], 1).ids[0] == ["item0"]


def test_input_errors(make):
    idx = make.create()
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
    with pytest.raises(InvalidIdError, match="single string"):
        idx.add("a", np.zeros((1, 4), np.float32))
    with pytest.raises(InvalidIdError, match="strings"):
        idx.add(["a"], np.zeros((1, 4), np.float32), [{"color": 3}])
    assert len(idx) == 0  # nothing half-added
    idx.add(["a"], np.ones((1, 4), np.float64))  # other float dtypes are converted
    assert idx.search(np.ones(4), 1).ids == [["a"]]
    with pytest.raises(InvalidVectorError, match="queries have embedding size 5"):
        idx.search(np.zeros((1, 5), np.float32), 1)
    with pytest.raises(UnsupportedIndexError, match="k must be"):
        idx.search(np.zeros(4, np.float32), 0)
    with pytest.raises(UnsupportedIndexError, match="ef_search"):  # a flat index has no search options
        idx.search(np.zeros(4, np.float32), 1, ef_search=10)
    with pytest.raises(UnsupportedIndexError, match="efsearch"):
        make.create("hnsw", efsearch=10)
    with pytest.raises(UnsupportedIndexError, match="valid"):
        make.create("annoy")
    with pytest.raises(UnsupportedIndexError, match="metric"):
        make.create("flat", metric="cosine")
    with pytest.raises(InvalidVectorError, match="dim"):
        make.create("flat", dim=0)


def test_unknown_backend_and_every_index_error_is_a_vestis_error():
    with pytest.raises(UnsupportedIndexError, match="backend"):
        create_index("qdrant", "flat", 4)
    for err in (InvalidVectorError, InvalidIdError, UnknownIdError, UnsupportedIndexError, IndexNotTrainedError,
                IndexMismatchError):
        assert issubclass(err, VestisError)


# --- empty indexes ----------------------------------------------------------------------------
def test_empty_index(make_kind, tmp_path):
    make, kind = make_kind
    idx = make.create(kind, 4, "l2", tiny=True, attributes=["color"])
    assert len(idx) == 0 and idx.ids() == [] and "a" not in idx
    res = idx.search(np.vstack([Q, Q]), 3)
    assert res.ids == [[], []] and all(len(s) == 0 for s in res.scores)
    assert idx.search(Q, 3, filters={"color": "red"}).ids == [[]]
    with pytest.raises(UnknownIdError):
        idx.remove(["a"])
    assert idx.remove(["a"], missing="ignore") == 0
    idx.save(tmp_path / "ix")
    assert read_manifest(tmp_path / "ix").count == 0
    back = make.load(tmp_path / "ix")
    assert len(back) == 0 and back.search(Q, 3).ids == [[]] and back.attribute_names == ["color"]
    back.add(IDS, VECS, ATTRS)
    assert back.search(Q, 5).ids == [EXPECTED["l2"][0]]


# --- save / load ------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_save_load_round_trip(make_kind, metric, tmp_path):
    make, kind = make_kind
    x, centres = clustered_vectors(1500, 16, n_clusters=30, seed=2)
    q, _ = clustered_vectors(30, 16, seed=9, centers=centres)
    ids = [f"id-{i}-ü\"'" for i in range(1500)]  # ids survive the files with any characters
    attrs = [{"color": ["red", "blue", "gr\"een"][i % 3], **({"size": "M"} if i % 4 else {})} for i in range(1500)]
    idx = make.create(kind, 16, metric, run_id="run-7", schema_digest="abc123", attributes=["color", "size"])
    idx.add(ids, x, attrs)
    idx.remove(ids[:40])
    idx.add(ids[50:60], x[:10], attrs[:10])  # upserts
    idx.save(tmp_path / "ix")
    m = read_manifest(tmp_path / "ix")
    assert (m.backend, m.kind, m.metric, m.dim, m.count, m.run_id, m.schema_digest, m.created_at) == \
        (make.spec.backend, kind, metric, 16, 1460, "run-7", "abc123", idx.created_at)
    assert set(m.attributes) == {"color", "size"}
    filters = (None, {"color": "gr\"een"}, {"color": ["red", "blue"], "size": "unspecified"})
    before = {str(f): idx.search(q, 10, filters=f) for f in filters}
    if make.spec.snapshot_saves:
        idx.remove(ids[40:50])  # the saved copy is not affected by later changes
        assert len(idx) == 1450
    back = make.load(tmp_path / "ix", expect_run_id="run-7", expect_schema_digest="abc123", expect_dim=16,
                     expect_backend=make.spec.backend)
    assert (back.backend, back.kind, back.metric, back.dim, back.run_id, back.schema_digest, len(back)) == \
        (make.spec.backend, kind, metric, 16, "run-7", "abc123", 1460)
    assert back.created_at == idx.created_at and set(back.attribute_names) == {"color", "size"}
    assert sorted(back.ids()) == sorted(set(ids[40:]))
    for f in filters:
        a, b = before[str(f)], back.search(q, 10, filters=f)
        assert a.ids == b.ids and all(len(i) == 10 for i in b.ids)
        for sa, sb in zip(a.scores, b.scores):
            np.testing.assert_array_equal(sa, sb)
    # the loaded index keeps working: add / remove / save again
    back.remove(ids[100:110])
    back.add(["new"], x[:1], [{"color": "violet"}])
    assert back.search(x[0], 1, filters={"color": "violet"}).ids == [["new"]]
    back.save(tmp_path / "ix")
    again = make.load(tmp_path / "ix")
    assert len(again) == len(back) == 1451 and again.search(q, 5).ids == back.search(q, 5).ids


def test_load_refuses_another_run_schema_size_or_backend(make, tmp_path):
    make.tiny(run_id="run-1", schema_digest="schema-1").save(tmp_path / "ix")
    ok = make.load(tmp_path / "ix", expect_run_id="run-1", expect_schema_digest="schema-1", expect_dim=4,
                   expect_backend=make.spec.backend)
    assert len(ok) == 5
    other = "milvus" if make.spec.backend == "faiss" else "faiss"
    cases = [({"expect_run_id": "run-2"}, "model run id", "run-2", "run-1"),
             ({"expect_schema_digest": "schema-2"}, "schema digest", "schema-2", "schema-1"),
             ({"expect_dim": 128}, "embedding size", 128, 4),
             ({"expect_backend": other}, "backend", other, make.spec.backend)]
    for kwargs, fld, expected, found in cases:
        with pytest.raises(IndexMismatchError) as e:
            make.load(tmp_path / "ix", **kwargs)
        assert (e.value.field, e.value.expected, e.value.found) == (fld, expected, found)
        assert fld in str(e.value) and repr(expected) in str(e.value) and repr(found) in str(e.value)


# --- kind="auto" ------------------------------------------------------------------------------
def test_auto_kind(make):
    small = make.create("auto", n_items=5)
    assert small.kind == "flat"
    big = make.create("auto", n_items=10_000_000)
    want = auto_kind(10_000_000, big.dim)[1]  # the large-catalogue efSearch
    assert big.kind == "hnsw" and {k: big.options()[k] for k in want} == want and want["ef_search"] == 512
    big.add(IDS, VECS, ATTRS)
    assert big.search(Q, 5).ids == [EXPECTED["ip"][0]]
    with pytest.raises(UnsupportedIndexError, match="n_items"):
        make.create("auto")


# --- filters against a reference, and Milvus's scalar attribute fields ---------------------------------
def _random_catalogue(n: int = 400, seed: int = 5):
    """Random vectors (no ties) and labels with missing ones, quotes and an empty-string value."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    values = {"gender": ["Women", "Men", "Unisex", None], "colour": ["navy", 'say "hi"', "", None, None],
              "usage": ["Casual", "Formal", None]}
    attrs = [{a: vs[rng.integers(len(vs))] for a, vs in values.items()} for _ in range(n)]
    return [f"it{i}" for i in range(n)], x, attrs


UNSPEC = "unspecified"
RANDOM_FILTERS = [{"gender": "Women"}, {"gender": ["Men", "unspecified"]}, {"colour": ['say "hi"', ""]},
                  {"colour": "unspecified", "usage": "Formal"}, {"gender": ["Women", "Unisex"], "usage": "Casual"},
                  {"gender": "Girls"}, {"usage": "unspecified"}]


def _reference(x, attrs, q, flt, k):
    """The exact top k among the items passing `flt` (None / "unspecified" = no label), by inner product."""
    ok = [all((UNSPEC if a.get(f) is None else a[f]) in ((v,) if isinstance(v, str) else tuple(v)) for f, v in flt.items())
          for a in attrs]
    cand = np.flatnonzero(ok)
    order = cand[np.argsort(-(x[cand] @ q))][:k]
    return [f"it{i}" for i in order]


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "seen"])
def test_filters_match_an_exact_reference(make, declared):
    """Every backend returns the exact filtered top 20 of a flat index on random data: declared attributes (Milvus:
    scalar fields) and attributes only seen on items (Milvus: JSON paths) alike, missing labels included."""
    ids, x, attrs = _random_catalogue()
    idx = make.create("flat", 8, attributes=["gender", "colour", "usage"] if declared else None)
    idx.add(ids, x, attrs)
    if make.spec.backend == "milvus":
        assert bool(idx.attribute_fields) is declared
    for flt in RANDOM_FILTERS:
        got = idx.search(x[:6], 20, filters=flt).ids
        assert got == [_reference(x, attrs, q, flt, 20) for q in x[:6]], flt


@pytest.fixture(params=[pytest.param(b, id=b.name) for b in BACKENDS if b.backend == "milvus"])
def make_milvus(request, tmp_path):
    m = Maker(request.param, tmp_path, request)
    yield m
    m.close()


def _fields_of(idx) -> dict:
    """{field name: Milvus data type name} of an index's collection."""
    return {f["name"]: f["type"].name for f in idx._c().describe_collection(idx._collection)["fields"]}


def test_milvus_declared_attributes_become_scalar_fields_kept_in_step(make_milvus, tmp_path):
    """A field per declared attribute (attr_0, attr_1 in declared order, recorded in the manifest), holding each item's
    label or "unspecified"; adds, upserts, attribute updates and removals keep the fields and the JSON in step, and a
    saved index reopens with them."""
    idx = make_milvus.tiny(attributes=["size", 'co"lor'])
    assert idx.attribute_fields == {"size": "attr_0", 'co"lor': "attr_1"}
    assert _fields_of(idx) == {"id": "VARCHAR", "vector": "FLOAT_VECTOR", "attributes": "JSON", "attr_0": "VARCHAR",
                               "attr_1": "VARCHAR"}

    def stored(i):
        row = idx._c().query(idx._collection, filter=f'id == "{i}"', output_fields=["attributes", "attr_0", "attr_1"],
                             consistency_level="Strong")[0]
        return row["attributes"], row["attr_0"], row["attr_1"]

    assert stored("c") == ({"color": "red"}, "unspecified", "unspecified")  # 'co"lor' was declared, "color" not
    idx.add(["c"], VECS[2:3], [{"size": "XS", 'co"lor': "teal"}])  # upsert
    assert stored("c") == ({"size": "XS", 'co"lor': "teal"}, "XS", "teal")
    idx.set_attributes(["c", "a"], [{"size": None, 'co"lor': "navy"}, {"size": "L"}])
    assert stored("c") == ({'co"lor': "navy"}, "unspecified", "navy") and stored("a")[1:] == ("L", "unspecified")
    s = lambda f: idx.search(Q, 5, filters=f).ids[0]  # noqa: E731
    assert s({"size": "L"}) == ["a", "d"] and s({"size": "XS"}) == [] and s({'co"lor': "navy"}) == ["c"]
    assert s({"size": ["unspecified", "S"]}) == ["c", "e"] and s({"color": "blue"}) == ["b", "e"]  # a JSON path beside
    idx.remove(["a"])
    assert s({"size": "L"}) == ["d"]
    idx.save(tmp_path / "ix")
    assert read_manifest(tmp_path / "ix").options["attribute_fields"] == {"size": "attr_0", 'co"lor': "attr_1"}
    back = make_milvus.load(tmp_path / "ix")
    assert back.attribute_fields == idx.attribute_fields and back.options()["scalar_fields"] is True
    assert back.search(Q, 5, filters={"size": ["unspecified", "S"]}).ids[0] == ["c", "e"]
    with pytest.raises(UnsupportedIndexError, match="65535 bytes"):
        back.set_attributes(["b"], [{"size": "x" * 70000}])
    assert back.search(Q, 5, filters={"size": "M"}).ids[0] == ["b"]  # nothing changed


def test_milvus_collection_without_scalar_fields_still_filters(make_milvus, tmp_path):
    """A collection made the old way (id, vector, JSON; `scalar_fields=False`) and an index directory saved before
    the fields existed (its manifest has no attribute_fields) load, filter through the JSON field and take updates."""
    import json

    idx = make_milvus.tiny(scalar_fields=False)
    assert idx.attribute_fields == {} and set(_fields_of(idx)) == {"id", "vector", "attributes"}
    idx.save(tmp_path / "ix")
    manifest = tmp_path / "ix" / "manifest.json"
    m = json.loads(manifest.read_text())
    for key in ("attribute_fields", "scalar_fields", "scalar_index"):  # as session 8 wrote it
        del m["options"][key]
    manifest.write_text(json.dumps(m))
    back = make_milvus.load(tmp_path / "ix")
    assert back.attribute_fields == {} and back.options()["scalar_fields"] is False
    s = lambda f: back.search(Q, 5, filters=f).ids[0]  # noqa: E731
    assert s({"color": ["blue", "green"]}) == ["b", "d", "e"] and s({"size": "unspecified"}) == ["c"]
    back.set_attributes(["c"], [{"color": "blue", "size": "XL"}])
    back.add(["f"], VECS[:1] * 0.5, [{"color": "blue"}])
    assert s({"color": "blue"}) == ["b", "f", "c", "e"] and s({"size": "unspecified"}) == ["f"]


# --- a Milvus server restart ------------------------------------------------------------------
def test_server_restart_keeps_collections_and_answers(request, tmp_path):
    """Stop the Milvus server and start it again on the same data: the collection, its count, ids, attribute
    updates and search answers (with and without filters) are unchanged."""
    m = Maker(next(b for b in BACKENDS if b.server), tmp_path, request)
    try:
        x, centres = clustered_vectors(1000, 16, n_clusters=30, seed=4)
        q, _ = clustered_vectors(20, 16, seed=8, centers=centres)
        ids = [f"r{i}" for i in range(1000)]
        idx = m.create("flat", 16, run_id="run-r", attributes=["color"])  # (exact: HNSW answers may change when a restart seals segments)
        idx.add(ids, x, [{"color": ["red", "blue", "green"][i % 3]} for i in range(1000)])
        idx.remove(ids[-5:])
        idx.set_attributes(ids[:10], [{"color": "gold"}] * 10)
        idx.save(tmp_path / "ix")
        filters = (None, {"color": "gold"}, {"color": ["red", "blue"]})
        before = {str(f): idx.search(q, 10, filters=f) for f in filters}
        assert all(len(i) == 10 for i in before["None"].ids) and before[str(filters[1])].ids[0][0].startswith("r")
        m.server.restart()
        back = m.load(tmp_path / "ix", expect_run_id="run-r")
        assert len(back) == 995 and sorted(back.ids()) == sorted(ids[:-5])
        for f in filters:
            a, b = before[str(f)], back.search(q, 10, filters=f)
            assert a.ids == b.ids, f
            for sa, sb in zip(a.scores, b.scores):
                np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-6)
        assert sorted(back.search(q, 20, filters={"color": "gold"}).ids[0]) == sorted(ids[:10])
    finally:
        m.close()
