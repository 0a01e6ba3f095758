"""Index directories: manifest contents, atomic saves, and the specific errors of a bad load."""

import json
import os

import numpy as np
import pytest

import vestis.index.manifest as manifest_mod
from vestis.errors import VestisError
from vestis.index import (
    CorruptIndexError,
    IndexMismatchError,
    IndexNotFoundError,
    create_index,
    load_index,
    read_manifest,
)
from vestis.index.errors import VectorIndexError

X = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
IDS = [f"i{i}" for i in range(200)]
ATTRS = [{"color": ["red", "blue"][i % 2]} for i in range(200)]


def make(kind="hnsw", run_id="run-1", digest="schema-1"):
    idx = create_index("faiss", kind, 8, run_id=run_id, schema_digest=digest)
    idx.add(IDS, X, ATTRS)
    return idx


def data_file(index_dir, name):
    m = read_manifest(index_dir)
    return index_dir / m.data_dir / name


def test_manifest_contents(tmp_path):
    idx = make()
    idx.save(tmp_path / "ix")
    raw = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    for key in ("format_version", "backend", "kind", "metric", "run_id", "dim", "count", "schema_digest",
                "created_at", "saved_at", "files", "options", "attributes"):
        assert key in raw
    assert (raw["backend"], raw["kind"], raw["metric"], raw["dim"], raw["count"], raw["run_id"],
            raw["schema_digest"], raw["attributes"]) == ("faiss", "hnsw", "ip", 8, 200, "run-1", "schema-1", ["color"])
    assert raw["options"]["M"] == 32
    names = {os.path.basename(p) for p in raw["files"]}
    assert {"index.faiss", "ids.json", "labels.npy", "attribute_codes.npy", "attributes.json"} <= names
    for rel, info in raw["files"].items():
        assert len(info["sha256"]) == 64 and info["bytes"] == (tmp_path / "ix" / rel).stat().st_size
    # nothing but the manifest and one data folder
    assert {p.name for p in (tmp_path / "ix").iterdir()} == {"manifest.json", raw["data_dir"]}


def test_saving_again_replaces_and_cleans_up(tmp_path):
    idx = make()
    idx.save(tmp_path / "ix")
    first = read_manifest(tmp_path / "ix").data_dir
    idx.remove(IDS[:10])
    idx.save(tmp_path / "ix")
    m = read_manifest(tmp_path / "ix")
    assert m.data_dir != first and m.count == 190
    assert {p.name for p in (tmp_path / "ix").iterdir()} == {"manifest.json", m.data_dir}


@pytest.mark.parametrize("where", ["write_data", "before_commit"])
def test_atomic_save_failure_keeps_previous_index(tmp_path, monkeypatch, where):
    idx = make()
    idx.save(tmp_path / "ix")
    expected = idx.search(X[:10], 5).ids
    idx.remove(IDS[:50])
    idx.add(["new"], X[:1])
    if where == "write_data":  # crash while the FAISS file is being written
        import faiss

        def boom(*a, **k):
            raise OSError("disk full")
        monkeypatch.setattr(faiss, "write_index", boom)
    else:  # crash after every data file is written, just before the manifest is replaced
        real_replace = os.replace

        def boom(src, dst):
            if str(dst).endswith("manifest.json"):
                raise OSError("power cut")
            return real_replace(src, dst)
        monkeypatch.setattr(manifest_mod.os, "replace", boom)
    with pytest.raises(OSError):
        idx.save(tmp_path / "ix")
    monkeypatch.undo()
    back = load_index(tmp_path / "ix")
    assert len(back) == 200 and back.search(X[:10], 5).ids == expected
    # no half-written leftovers either
    assert {p.name for p in (tmp_path / "ix").iterdir()} == {"manifest.json", read_manifest(tmp_path / "ix").data_dir}


def test_leftovers_of_a_hard_crash_are_ignored_then_removed(tmp_path):
    idx = make()
    idx.save(tmp_path / "ix")
    (tmp_path / "ix" / ".tmp-data-20990101T000000-deadbeef").mkdir()
    (tmp_path / "ix" / "data-20990101T000000-deadbeef").mkdir()
    (tmp_path / "ix" / "data-20990101T000000-deadbeef" / "index.faiss").write_bytes(b"half")
    assert len(load_index(tmp_path / "ix")) == 200
    idx.save(tmp_path / "ix")
    assert len(list((tmp_path / "ix").iterdir())) == 2


def test_refuses_to_save_into_a_foreign_directory(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(VectorIndexError, match="other files"):
        make().save(tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "mine"


def test_missing_manifest(tmp_path):
    with pytest.raises(IndexNotFoundError, match="does not exist"):
        load_index(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError, match="manifest.json is missing"):
        load_index(tmp_path / "empty")


def test_unreadable_manifest(tmp_path):
    make().save(tmp_path / "ix")
    path = tmp_path / "ix" / "manifest.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CorruptIndexError, match="not valid JSON"):
        load_index(tmp_path / "ix")
    raw = json.loads(text)
    raw["format_version"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(CorruptIndexError, match="format version 99"):
        load_index(tmp_path / "ix")


@pytest.mark.parametrize("name", ["index.faiss", "ids.json", "labels.npy", "attribute_codes.npy"])
def test_corrupt_or_truncated_file(tmp_path, name):
    make().save(tmp_path / "ix")
    p = data_file(tmp_path / "ix", name)
    blob = bytearray(p.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    p.write_bytes(bytes(blob))
    with pytest.raises(CorruptIndexError, match="sha256") as e:
        load_index(tmp_path / "ix")
    assert name in str(e.value)
    p.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(CorruptIndexError, match="truncated"):
        load_index(tmp_path / "ix")
    p.unlink()
    with pytest.raises(CorruptIndexError, match="missing"):
        load_index(tmp_path / "ix")


def test_expectations(tmp_path):
    make(run_id="run-1", digest="schema-1").save(tmp_path / "ix")
    assert len(load_index(tmp_path / "ix", expect_run_id="run-1", expect_schema_digest="schema-1", expect_dim=8)) == 200
    cases = [({"expect_run_id": "run-2"}, "model run id", "run-2", "run-1"),
             ({"expect_schema_digest": "schema-2"}, "schema digest", "schema-2", "schema-1"),
             ({"expect_dim": 128}, "embedding size", 128, 8),
             ({"expect_backend": "milvus"}, "backend", "milvus", "faiss")]
    for kwargs, field, expected, found in cases:
        with pytest.raises(IndexMismatchError) as e:
            load_index(tmp_path / "ix", **kwargs)
        assert (e.value.field, e.value.expected, e.value.found) == (field, expected, found)
        assert field in str(e.value) and repr(expected) in str(e.value) and repr(found) in str(e.value)
    for err in (IndexMismatchError, CorruptIndexError, IndexNotFoundError):
        assert issubclass(err, VestisError)


def test_manifest_dim_disagreeing_with_faiss_file_is_corrupt(tmp_path):
    make().save(tmp_path / "ix")
    path = tmp_path / "ix" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["dim"] = 16
    path.write_text(json.dumps(raw))
    with pytest.raises(CorruptIndexError, match="dim 8"):
        load_index(tmp_path / "ix")


def test_empty_and_untrained_indexes_round_trip(tmp_path):
    for kind in ("flat", "hnsw", "ivfpq"):
        idx = create_index("faiss", kind, 8, "l2", **({"nbits": 4} if kind == "ivfpq" else {}))
        idx.save(tmp_path / kind)
        back = load_index(tmp_path / kind)
        assert len(back) == 0 and back.search(X[:1], 3).ids == [[]]
    back = load_index(tmp_path / "ivfpq")
    back.train(X)
    back.add(IDS, X)
    assert back.search(X[3], 1).ids == [["i3"]]
