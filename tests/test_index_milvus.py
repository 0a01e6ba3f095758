"""Milvus backend against Milvus Lite: the same known answers and filters as FAISS, escaping,
add/remove/upsert, save/load. Skipped (with the reason) when pymilvus / milvus-lite are absent."""

import sys

import numpy as np
import pytest

from vestis.errors import UnknownAttributeError, VestisError
from vestis.index import (
    CorruptIndexError,
    IndexMismatchError,
    MissingDependencyError,
    UnknownIdError,
    UnsupportedIndexError,
    create_index,
    load_index,
    read_manifest,
)
from vestis.index.errors import VectorIndexError
from vestis.index.milvus_index import filter_expression, quote

IDS = ["a", "b", "c", "d", "e"]
VECS = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0.3, 0, 0.4, 0], [0, 0, 0, 2], [-0.5, 0, 0, 0]], np.float32)
ATTRS = [{"color": "red", "size": "M"}, {"color": "blue", "size": "M"}, {"color": "red"},
         {"color": "green", "size": "L"}, {"color": "blue", "size": "S"}]
Q = np.array([[1, 0, 0, 0]], np.float32)
EXPECTED = {"ip": (["a", "b", "c", "d", "e"], [1.0, 0.6, 0.3, 0.0, -0.5]),
            "l2": (["a", "c", "b", "e", "d"], [0.0, -0.65, -0.8, -2.25, -5.0])}


# --- expression building: pure functions, no Milvus needed ---------------------------------------
def test_quote_escapes_quotes_backslashes_and_newlines():
    assert quote("plain") == '"plain"'
    assert quote('say "hi"') == r'"say \"hi\""'
    assert quote("it's") == '"it\'s"'
    assert quote("back\\slash") == r'"back\\slash"'
    assert quote('\\"') == r'"\\\""'  # a backslash then a quote cannot close the literal early
    assert quote("two\nlines\t") == r'"two\nlines\t"'
    with pytest.raises(UnsupportedIndexError, match="control character"):
        quote("bell\x07")


def test_filter_expression():
    assert filter_expression(None) is None
    assert filter_expression({"color": ("red",)}) == 'attributes["color"] == "red"'
    assert filter_expression({"color": ("red", 'bl"ue'), "size": ("M",)}) == \
        '(attributes["color"] == "red" or attributes["color"] == "bl\\"ue") and attributes["size"] == "M"'
    assert filter_expression({"size": ("unspecified",)}) == 'not (exists attributes["size"])'
    assert filter_expression({"color": ()}) == "false"
    assert filter_expression({'we"ird': ("x",)}) == 'attributes["we\\"ird"] == "x"'


def test_missing_pymilvus_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'vestis\[milvus\]'") as e:
        create_index("milvus", "flat", 4)
    assert isinstance(e.value, VestisError)


def test_ivfpq_refused_on_milvus_lite():
    pytest.importorskip("pymilvus")
    with pytest.raises(UnsupportedIndexError, match="IVF_SQ8"):
        create_index("milvus", "ivfpq", 4)


# --- against Milvus Lite -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite_ok(tmp_path_factory):
    pytest.importorskip("pymilvus", reason="pymilvus not installed (pip install 'vestis[milvus]')")
    pytest.importorskip("milvus_lite", reason="milvus-lite not installed (pip install 'vestis[milvus]')")
    try:
        idx = create_index("milvus", "flat", 4, work_dir=str(tmp_path_factory.mktemp("probe")))
    except VectorIndexError as e:
        pytest.skip(f"Milvus Lite cannot start here: {e}")
    idx.close()
    return True


def tiny(kind, metric, tmp_path, **kw):
    idx = create_index("milvus", kind, 4, metric, work_dir=str(tmp_path / f"work-{kind}-{metric}"), **kw)
    idx.add(IDS, VECS, ATTRS)
    return idx


@pytest.fixture(scope="module")
def known(lite_ok, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("known")
    made = {(kind, metric): tiny(kind, metric, tmp) for kind in ("flat", "hnsw") for metric in ("ip", "l2")}
    yield made
    for idx in made.values():
        idx.close()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_known_answer_order_and_scores(known, kind, metric):
    idx = known[kind, metric]
    res = idx.search(Q, k=5)
    ids, scores = EXPECTED[metric]
    assert res.ids == [ids]
    np.testing.assert_allclose(res.scores[0], scores, atol=1e-5)
    assert idx.search(Q[0], k=50).ids == [ids]  # fewer than k: no padding
    assert (len(idx), idx.dim, idx.metric, idx.kind, idx.backend) == (5, 4, metric, kind, "milvus")
    assert sorted(idx.ids()) == IDS and "c" in idx and "z" not in idx


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_filters(known, kind):
    idx = known[kind, "ip"]
    s = lambda f, k=5: idx.search(Q, k, filters=f).ids[0]  # noqa: E731
    assert s({"color": "red"}) == ["a", "c"]
    assert s({"color": ["blue", "green"]}) == ["b", "d", "e"]
    assert s({"color": ["blue", "green"]}, k=2) == ["b", "d"]
    assert s({"color": "red", "size": "M"}) == ["a"]
    assert s({"color": ["red", "blue"], "size": ["M", "S"]}) == ["a", "b", "e"]
    assert s({"size": "unspecified"}) == ["c"]
    assert s({"color": "purple"}) == []
    assert s({"color": []}) == []
    with pytest.raises(UnknownAttributeError, match="shape"):
        idx.search(Q, 5, filters={"shape": "round"})


def test_escaping_quotes_in_values_names_and_ids(lite_ok, tmp_path):
    idx = create_index("milvus", "flat", 4, work_dir=str(tmp_path / "w"))
    nasty = ['say "hi"', "it's", "back\\slash", '\\"', 'x" or attributes["color"] != "']
    ids = ['id"1', "id'2", "id\\3", 'id4"] or id != ["', "id5"]
    idx.add(ids, VECS, [{"color": v, 'we"ird': v} for v in nasty])
    for i, v in enumerate(nasty):  # each value matches exactly its own item, injection included
        assert idx.search(Q, 5, filters={"color": v}).ids[0] == [ids[i]]
        assert idx.search(Q, 5, filters={'we"ird': [v, "none"]}).ids[0] == [ids[i]]
    assert sorted(idx.ids()) == sorted(ids)
    assert idx.remove([ids[3], ids[0]]) == 2
    assert sorted(idx.ids()) == sorted([ids[1], ids[2], ids[4]])
    with pytest.raises(UnknownIdError):
        idx.remove([ids[3]])
    idx.close()


def test_add_remove_upsert(lite_ok, tmp_path):
    idx = tiny("hnsw", "ip", tmp_path)
    assert idx.remove(["a", "d"]) == 2
    assert idx.search(Q, 5).ids == [["b", "c", "e"]]
    with pytest.raises(UnknownIdError, match="'a'"):
        idx.remove(["b", "a"])
    assert len(idx) == 3
    assert idx.remove(["b", "a"], missing="ignore") == 1
    idx.add(["e"], np.array([[2, 0, 0, 0]], np.float32), [{"color": "gold"}])  # upsert
    assert len(idx) == 2
    res = idx.search(Q, 5)
    assert res.ids == [["e", "c"]]
    np.testing.assert_allclose(res.scores[0], [2.0, 0.3], atol=1e-5)
    assert idx.search(Q, 5, filters={"color": "blue"}).ids == [[]]
    assert idx.search(Q, 5, filters={"color": "gold"}).ids == [["e"]]
    with pytest.raises(VestisError, match="embedding size 3"):
        idx.add(["x"], np.zeros((1, 3), np.float32))
    idx.close()


def test_save_load_round_trip(lite_ok, tmp_path):
    idx = create_index("milvus", "hnsw", 4, "l2", run_id="run-3", schema_digest="s3", work_dir=str(tmp_path / "w"))
    idx.add(IDS, VECS, ATTRS)
    idx.save(tmp_path / "ix")
    m = read_manifest(tmp_path / "ix")
    assert (m.backend, m.kind, m.metric, m.dim, m.count, m.run_id, m.schema_digest) == \
        ("milvus", "hnsw", "l2", 4, 5, "run-3", "s3")
    assert any("/milvus.db/" in f for f in m.files) and "token" not in m.options
    idx.remove(["a"])  # the saved copy is not affected by later changes
    back = load_index(tmp_path / "ix", expect_run_id="run-3", work_dir=str(tmp_path / "w2"))
    assert len(back) == 5 and len(idx) == 4
    for flt in (None, {"color": "red"}, {"size": ["unspecified", "L"]}):
        assert back.search(Q, 5, filters=flt).ids == [[i for i in EXPECTED["l2"][0]
                                                        if i in {x for x in tiny_filter(flt)}]]
    back.add(["f"], Q, [{"color": "red"}])
    back.save(tmp_path / "ix")
    back.close()
    again = load_index(tmp_path / "ix", work_dir=str(tmp_path / "w3"))
    assert len(again) == 6 and again.search(Q, 1).ids[0][0] in ("a", "f")
    with pytest.raises(IndexMismatchError, match="schema digest"):
        load_index(tmp_path / "ix", expect_schema_digest="other")
    again.close()
    idx.close()


def tiny_filter(flt):
    if not flt:
        return IDS
    out = []
    for i, a in zip(IDS, ATTRS):
        ok = True
        for k, v in flt.items():
            vals = [v] if isinstance(v, str) else v
            ok &= a.get(k, "unspecified") in vals
        if ok:
            out.append(i)
    return out


def test_corrupt_lite_database_detected(lite_ok, tmp_path):
    idx = tiny("flat", "ip", tmp_path)
    idx.save(tmp_path / "ix")
    idx.close()
    m = read_manifest(tmp_path / "ix")
    victim = max((f for f in m.files if f.endswith(".parquet") or f.endswith(".json")),
                 key=lambda f: m.files[f]["bytes"])
    p = tmp_path / "ix" / victim
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(CorruptIndexError, match="truncated"):
        load_index(tmp_path / "ix")


def test_ivf_sq8_on_lite_when_asked_for(lite_ok, tmp_path):
    idx = create_index("milvus", "ivfpq", 4, index_type="IVF_SQ8", nlist=2, work_dir=str(tmp_path / "w"))
    assert idx.index_type == "IVF_SQ8"
    idx.add(IDS, VECS, ATTRS)
    assert idx.search(Q, 5).ids == [EXPECTED["ip"][0]]
    assert idx.search(Q, 5, filters={"color": "red"}, nprobe=1).ids[0][0] == "a"
    with pytest.raises(UnsupportedIndexError, match="ef_search"):
        idx.search(Q, 5, ef_search=10)
    idx.close()


def test_auto_kind_on_milvus(lite_ok, tmp_path):
    small = create_index("milvus", "auto", 4, work_dir=str(tmp_path / "w1"), n_items=5)
    assert small.kind == "flat"
    small.close()
    big = create_index("milvus", "auto", 4, work_dir=str(tmp_path / "w2"), n_items=10_000_000)
    assert big.kind == "hnsw" and big.options()["ef_search"] == 256 and big.options()["M"] == 32
    big.add(IDS, VECS, ATTRS)
    assert big.search(Q, 5).ids == [EXPECTED["ip"][0]]
    big.close()
