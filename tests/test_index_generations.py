"""Index rebuilds are atomic (issue 16): every space is built into a new generation folder and engine.json is
switched last, so a rebuild killed midway leaves the old index searchable and unchanged; an index whose spaces
disagree with engine.json (a tampered count, a space from another build) is refused in one line; old generations
and a killed build's leftovers are removed; the previous layout (spaces directly under the index folder) is still
read, with the same checks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vestis.catalog import Catalog
from vestis.cli import main
from vestis.engine import Engine, EngineError
from vestis.indexing import ENGINE_FILE, build_index

SRC = Path(__file__).resolve().parents[1] / "src"


def _generations(idx: Path) -> list[str]:
    return sorted(p.name for p in idx.iterdir() if p.name.startswith("gen-"))


def _answers(run, idx, cat, cache, query):
    eng = Engine.load(run, idx, catalog=cat, cache_dir=cache)
    res = eng.search(item_id=query, k=5)
    return len(eng.spaces["main"]), [(h.id, round(h.score, 5)) for h in res]


@pytest.fixture
def built(tiny_pipeline, tmp_path):
    """A fresh gallery-split index of the tiny run (FAISS), the catalogue, and a query item."""
    root, cat_dir, run, _, cache = tiny_pipeline
    cat = Catalog.load(cat_dir)
    idx = tmp_path / "idx"
    build_index(run, cat, idx, split="gallery", cache_dir=cache, progress=False)
    query = next(it.id for it in cat.split("query") if it.image is not None)
    return run, cat, idx, cache, query


def test_the_layout_is_one_generation_named_by_engine_json(built):
    run, cat, idx, cache, query = built
    meta = json.loads((idx / ENGINE_FILE).read_text())
    assert _generations(idx) == [meta["generation"]]
    assert sorted(p.name for p in idx.iterdir()) == sorted([ENGINE_FILE, meta["generation"]])
    assert set(meta["spaces"]) == {p.name for p in (idx / meta["generation"]).iterdir()}
    for name, rec in meta["spaces"].items():
        assert rec["data_dir"].startswith("data-")
        assert (idx / meta["generation"] / name / rec["data_dir"]).is_dir()


def test_a_failed_rebuild_leaves_the_old_index(built, monkeypatch):
    """A save that fails after the first space is written (here: the second space's) changes nothing."""
    from vestis.index.faiss_index import FaissIndex

    run, cat, idx, cache, query = built
    before = _answers(run, idx, cat, cache, query)
    meta_before = (idx / ENGINE_FILE).read_text()
    real_save, saved = FaissIndex.save, []

    def save_then_fail(self, index_dir):
        if saved:
            raise OSError("disk full")
        saved.append(index_dir)
        return real_save(self, index_dir)

    monkeypatch.setattr(FaissIndex, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_index(run, cat, idx, cache_dir=cache, progress=False)  # the whole catalogue: more items
    monkeypatch.undo()
    assert saved and (idx / ENGINE_FILE).read_text() == meta_before
    assert _generations(idx) == [json.loads(meta_before)["generation"]]  # the half-built one is gone
    assert _answers(run, idx, cat, cache, query) == before


_KILL_AFTER_FIRST_SPACE = """
import os, sys
from pathlib import Path
from vestis.catalog import Catalog
from vestis.index.faiss_index import FaissIndex
from vestis.indexing import build_index
real = FaissIndex.save
def save_then_die(self, index_dir):
    real(self, index_dir)
    os._exit(9)  # killed: no except, no finally, no clean-up
FaissIndex.save = save_then_die
run, cat, idx, cache = sys.argv[1:]
build_index(Path(run), Catalog.load(Path(cat)), Path(idx), cache_dir=Path(cache), progress=False)
"""


def test_a_killed_rebuild_leaves_the_old_index_and_the_next_build_cleans_up(built):
    run, cat, idx, cache, query = built
    before = _answers(run, idx, cat, cache, query)
    old_gen = json.loads((idx / ENGINE_FILE).read_text())["generation"]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", _KILL_AFTER_FIRST_SPACE, str(run), str(cat.path), str(idx),
                           str(cache)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    gens = _generations(idx)
    assert old_gen in gens and len(gens) == 2  # the killed build's half generation is left behind...
    assert json.loads((idx / ENGINE_FILE).read_text())["generation"] == old_gen
    assert _answers(run, idx, cat, cache, query) == before  # ...and never read

    meta = build_index(run, cat, idx, cache_dir=cache, progress=False)  # the whole catalogue this time
    assert _generations(idx) == [meta["generation"]] and meta["generation"] not in gens
    n, _ = _answers(run, idx, cat, cache, query)
    assert n == meta["spaces"]["main"]["count"] > before[0]


def _refused(capsys, run, idx, cache, query, *expected):
    with pytest.raises(EngineError) as e:
        Engine.load(run, idx, cache_dir=cache)
    for text in expected:
        assert text in str(e.value), str(e.value)
    argv = ["search", "--run", str(run), "--index", str(idx), "--item", query, "--cache", str(cache), "--k", "3"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "rebuild it with `vestis index`" in err, err


def test_a_tampered_count_is_refused(built, capsys):
    run, cat, idx, cache, query = built
    meta = json.loads((idx / ENGINE_FILE).read_text())
    meta["spaces"]["main"]["count"] += 1
    (idx / ENGINE_FILE).write_text(json.dumps(meta))
    _refused(capsys, run, idx, cache, query, "space 'main' holds item count", "records")


def test_a_space_from_another_build_is_refused(built, tmp_path, capsys):
    run, cat, idx, cache, query = built
    other = tmp_path / "other"
    build_index(run, cat, other, split="gallery", cache_dir=cache, progress=False)  # same run, same items
    gen = json.loads((idx / ENGINE_FILE).read_text())["generation"]
    other_gen = json.loads((other / ENGINE_FILE).read_text())["generation"]
    shutil.rmtree(idx / gen / "main")
    shutil.copytree(other / other_gen / "main", idx / gen / "main")
    _refused(capsys, run, idx, cache, query, "space 'main' holds data folder")


def test_a_missing_generation_is_refused(built, capsys):
    run, cat, idx, cache, query = built
    shutil.rmtree(idx / json.loads((idx / ENGINE_FILE).read_text())["generation"])
    _refused(capsys, run, idx, cache, query, "is missing")


def _to_previous_layout(idx: Path) -> None:
    """What `vestis index` wrote before generations: spaces directly under the index folder."""
    meta = json.loads((idx / ENGINE_FILE).read_text())
    gen = meta.pop("generation")
    for name, rec in meta["spaces"].items():
        rec.pop("data_dir")
        shutil.move(str(idx / gen / name), str(idx / name))
    (idx / gen).rmdir()
    (idx / ENGINE_FILE).write_text(json.dumps(meta))


def test_the_previous_layout_is_read_checked_and_replaced_on_rebuild(built, tmp_path, capsys):
    run, cat, idx, cache, query = built
    before = _answers(run, idx, cat, cache, query)
    _to_previous_layout(idx)
    assert _answers(run, idx, cat, cache, query) == before

    # the reported mix: one space from a build of the whole catalogue, engine.json from the gallery's
    mixed = tmp_path / "mixed"
    shutil.copytree(idx, mixed)
    whole = tmp_path / "whole"
    build_index(run, cat, whole, cache_dir=cache, progress=False)
    shutil.rmtree(mixed / "main")
    shutil.copytree(whole / json.loads((whole / ENGINE_FILE).read_text())["generation"] / "main", mixed / "main")
    _refused(capsys, run, mixed, cache, query, "space 'main' holds item count")

    spaces = list(json.loads((idx / ENGINE_FILE).read_text())["spaces"])
    meta = build_index(run, cat, idx, split="gallery", cache_dir=cache, progress=False)
    assert sorted(p.name for p in idx.iterdir()) == sorted([ENGINE_FILE, meta["generation"]])
    assert not any((idx / s).exists() for s in spaces)
    assert _answers(run, idx, cat, cache, query) == before


def test_milvus_lite_rebuilds_are_atomic_too(built, tmp_path, monkeypatch):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from vestis.index.milvus_index import MilvusIndex

    run, cat, _, cache, query = built
    idx = tmp_path / "milvus-idx"
    meta = build_index(run, cat, idx, backend="milvus", split="gallery", cache_dir=cache, progress=False)
    assert meta["backend"] == "milvus" and _generations(idx) == [meta["generation"]]
    before = _answers(run, idx, cat, cache, query)
    real_save, saved = MilvusIndex.save, []

    def save_then_fail(self, index_dir):
        if saved:
            raise OSError("disk full")
        saved.append(index_dir)
        return real_save(self, index_dir)

    monkeypatch.setattr(MilvusIndex, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        build_index(run, cat, idx, backend="milvus", cache_dir=cache, progress=False)
    monkeypatch.undo()
    assert _generations(idx) == [meta["generation"]]
    assert _answers(run, idx, cat, cache, query) == before

    again = build_index(run, cat, idx, backend="milvus", cache_dir=cache, progress=False)
    assert _generations(idx) == [again["generation"]] != [meta["generation"]]
    assert _answers(run, idx, cat, cache, query)[0] == again["spaces"]["main"]["count"] > before[0]


def test_a_reader_racing_a_rebuild_gets_the_new_generation(built, monkeypatch):
    """A rebuild that switches (and removes the generation the reader was opening) mid-load: the reader reads the
    new engine.json and opens the new generation, whole."""
    import vestis.engine

    run, cat, idx, cache, query = built
    real_check, calls = vestis.engine.check_spaces, []

    def rebuild_first(index_dir, meta):
        if not calls:
            calls.append(build_index(run, cat, idx, cache_dir=cache, progress=False))
        return real_check(index_dir, meta)

    monkeypatch.setattr(vestis.engine, "check_spaces", rebuild_first)
    eng = Engine.load(run, idx, catalog=cat, cache_dir=cache)
    assert eng.meta["generation"] == calls[0]["generation"]
    assert len(eng.spaces["main"]) == calls[0]["spaces"]["main"]["count"]
