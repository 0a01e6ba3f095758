"""Milvus backend specifics: expression building and escaping, the install hint, what Milvus Lite refuses or
builds, the Lite database inside a saved index and its corruption. The contract every backend shares (known
answers, filters, add/remove/upsert, errors, save/load, any characters in ids and values) runs on Milvus Lite in
test_index_contract.py. Skipped (with the reason) when pymilvus / milvus-lite are absent."""

import sys

import numpy as np
import pytest

from test_index_contract import ATTRS, EXPECTED, IDS, Q, VECS  # the tiny hand-made catalogue
from vestis.errors import VestisError
from vestis.index import (
    CorruptIndexError,
    MissingDependencyError,
    UnsupportedIndexError,
    create_index,
    load_index,
    read_manifest,
)
from vestis.index.errors import VectorIndexError
from vestis.index.milvus_index import filter_expression, quote


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


def test_filter_expression_on_scalar_fields():
    """Attributes with a field compare it (`==` for one value, `in [...]` for several; "unspecified" is the stored value
    of a missing label); the others keep the JSON path, in the same expression."""
    fields = {"color": "attr_0", 'we"ird': "attr_1"}
    assert filter_expression({"color": ("red",)}, fields) == 'attr_0 == "red"'
    assert filter_expression({"color": ("red", 'bl"ue'), "size": ("M",)}, fields) == \
        'attr_0 in ["red", "bl\\"ue"] and attributes["size"] == "M"'
    assert filter_expression({"color": ("unspecified",)}, fields) == 'attr_0 == "unspecified"'
    assert filter_expression({'we"ird': ("x", "unspecified"), "size": ("unspecified", "S")}, fields) == \
        'attr_1 in ["x", "unspecified"] and (attributes["size"] == "S" or not (exists attributes["size"]))'
    assert filter_expression({"color": ('x"] or id != ["',)}, fields) == 'attr_0 == "x\\"] or id != [\\""'
    assert filter_expression({"size": ("M",), "color": ()}, fields) == "false"
    assert filter_expression(None, fields) is None and filter_expression({"color": ("red",)}, {}) == \
        'attributes["color"] == "red"'


def test_scalar_field_options_checked():
    pytest.importorskip("pymilvus")
    with pytest.raises(UnsupportedIndexError, match="scalar_fields must be true or false"):
        create_index("milvus", "flat", 4, uri="http://127.0.0.1:1", scalar_fields="yes")
    with pytest.raises(UnsupportedIndexError, match="scalar_index must be"):
        create_index("milvus", "flat", 4, uri="http://127.0.0.1:1", scalar_index='Trie" or 1')


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


def test_lite_database_is_copied_into_the_index_directory(lite_ok, tmp_path):
    idx = tiny("hnsw", "l2", tmp_path, run_id="run-3")
    idx.save(tmp_path / "ix")
    m = read_manifest(tmp_path / "ix")
    assert m.options["uri"] is None and "token" not in m.options and "work_dir" not in m.options
    assert any("/milvus.db/" in f for f in m.files)  # every file of the database, checksummed
    idx.close()
    back = load_index(tmp_path / "ix", work_dir=str(tmp_path / "w2"))
    assert back.local and len(back) == 5
    with pytest.raises(UnsupportedIndexError, match="working copy"):
        load_index(tmp_path / "ix", uri="http://localhost:19530")
    back.close()


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


def test_scalar_index_on_lite(lite_ok, tmp_path):
    """Milvus Lite builds an INVERTED index on the attribute fields; an index type it lacks is a clear error."""
    idx = tiny("flat", "ip", tmp_path, attributes=["color", "size"], scalar_index="INVERTED")
    assert idx.search(Q, 5, filters={"color": ["blue", "green"], "size": ["L", "unspecified"]}).ids == [["d"]]
    idx.close()
    with pytest.raises(VectorIndexError, match="(?i)trie"):
        create_index("milvus", "flat", 4, work_dir=str(tmp_path / "w2"), attributes=["color"], scalar_index="Trie")


def test_manifest_fields_checked_against_the_collection(lite_ok, tmp_path):
    """A manifest naming an attribute field the collection lacks, or a mapping that is no mapping, is a clear
    CorruptIndexError when loading."""
    import json

    idx = tiny("flat", "ip", tmp_path, attributes=["color"])
    idx.save(tmp_path / "ix")
    idx.close()
    path = tmp_path / "ix" / "manifest.json"
    saved = json.loads(path.read_text())
    assert saved["options"]["attribute_fields"] == {"color": "attr_0"}
    for fields, match in (({"color": "attr_0", "size": "attr_9"}, "lacks the attribute field.*attr_9"),
                          (["attr_0"], "must map attribute names"), ({"color": "attr 0"}, "must map attribute names")):
        path.write_text(json.dumps({**saved, "options": {**saved["options"], "attribute_fields": fields}}))
        with pytest.raises(CorruptIndexError, match=match):
            load_index(tmp_path / "ix", work_dir=str(tmp_path / f"w-{len(str(fields))}"))


def test_consistency_option_checked():
    pytest.importorskip("pymilvus")
    with pytest.raises(UnsupportedIndexError, match="consistency must be one of Strong, Session"):
        create_index("milvus", "flat", 4, uri="http://127.0.0.1:1", consistency="sometimes")
