"""Extraction on Ray (`vestis extract --engine ray`): the same cache as the single-process path on the tiny synthetic
catalogue (entry bytes, order, unreadable images), a local Ray started for the run and stopped after it, a clear
error when Ray is missing or cannot start, and resuming after the extraction is killed."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from vestis.catalog import Catalog, Item
from vestis.catalog.synthetic import generate
from vestis.errors import VestisError
from vestis.vision.cache import FeatureCache, _read_header
from vestis.vision.extract import extract_catalog
from vestis.vision.trunk import TrunkSpec

pytest.importorskip("ray", reason="Ray is not installed (pip install 'vestis[ray]')")

SPEC = TrunkSpec(resolution=(64, 64), levels=("s8", "s16", "s32"))


@pytest.fixture
def ray_tmp(monkeypatch):
    """A short, private Ray temp dir (Ray's socket paths must stay under ~107 characters): every process of the
    local Ray of a test carries it on its command line, so the test can see them all go."""
    d = tempfile.mkdtemp(prefix="vr", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", d)
    # Ray 2.60 turns token authentication on for a local cluster by default. Inside the whole test session's process
    # (not alone, nor in a fresh `vestis extract --engine ray`) the local Ray then timed out at start-up: both full
    # runs of session 11 and a run of the first half of the files. That run with RAY_AUTH_MODE=disabled passed. What
    # in the session's process breaks the token path was not found; this loopback Ray lives for one test.
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def ray_processes(tmp: str) -> list[int]:
    """Live processes whose command line names `tmp` (the local Ray's GCS, raylet, workers)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tmp in cmd and state != "Z":
            out.append(int(p.name))
    return out


def wait_gone(tmp: str, timeout: float = 30.0) -> list[int]:
    deadline = time.time() + timeout
    while (left := ray_processes(tmp)) and time.time() < deadline:
        time.sleep(0.2)
    return left


def shard_order(cache_dir: Path) -> list[str]:
    """Entry hashes of a cache in the order they were written (shards by name = time, then rows)."""
    shards = sorted((cache_dir / SPEC.key / "shards").glob("*.vfs"), key=lambda p: [int(x) for x in p.stem.split("-")])
    return [h for s in shards for h in _read_header(s).hashes]


@pytest.fixture(scope="module")
def synth_catalog(tmp_path_factory):
    """The tiny synthetic catalogue (40 renders) plus one undecodable image and one byte-identical copy."""
    root = tmp_path_factory.mktemp("synth")
    cat = generate(n=40, seed=3, out=root, workers=1)
    items = list(cat)
    (root / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    shutil.copy(items[0].image, root / "images" / "copy.jpg")
    return Catalog(items + [Item("broken", root / "images" / "broken.jpg"), Item("copy", root / "images" / "copy.jpg")])


def test_ray_writes_the_same_cache_as_one_process(synth_catalog, tmp_path, ray_tmp, capsys):
    local = extract_catalog(synth_catalog, SPEC, tmp_path / "local", batch_size=8, backend="onnx", progress=False)
    ray = extract_catalog(synth_catalog, SPEC, tmp_path / "ray", batch_size=8, backend="onnx", progress=False,
                          engine="ray", ray_cpus=2)
    assert local.backend == ray.backend == "onnx"
    assert ray.ray_timings["ray_start_s"] > 0 and ray.ray_timings["first_batch_s"] > 0 and not local.ray_timings
    assert "Ray: started or joined in" in ray.describe()
    counts = lambda r: (r.items, r.encoded, r.reused, r.shared, r.missing, r.unreadable, r.unreadable_ids)  # noqa: E731
    assert counts(ray) == counts(local) == (42, 40, 0, 1, 0, 1, ["broken"])
    a, b = FeatureCache(tmp_path / "local", SPEC), FeatureCache(tmp_path / "ray", SPEC)
    assert shard_order(tmp_path / "ray") == shard_order(tmp_path / "local")  # same entries, same order
    hashes = shard_order(tmp_path / "local")
    assert len(hashes) == 40
    for h in hashes:
        ea, eb = a.get(h), b.get(h)
        assert set(ea) == set(eb) == set(SPEC.levels)
        for lv in SPEC.levels:
            assert ea[lv].dtype == eb[lv].dtype == np.float16
            assert ea[lv].tobytes() == eb[lv].tobytes(), f"{h[:12]} {lv} differs"
    broken = next(it for it in synth_catalog if it.id == "broken")
    from vestis.vision.cache import content_hash

    assert a.is_unreadable(content_hash(broken.image)) and b.is_unreadable(content_hash(broken.image))
    # the local Ray started for the run is gone with all its processes
    import ray as ray_module

    assert not ray_module.is_initialized()
    assert wait_gone(ray_tmp) == []
    # the catalogue file's 40 items again, on Ray through the command line: every entry is reused
    from vestis.cli import main

    folder = Path(next(iter(synth_catalog)).image).parents[1]
    assert main(["extract", str(folder), "--cache", str(tmp_path / "ray"), "--resolution", "64x64", "--levels",
                 "s8,s16,s32", "--engine", "ray", "--ray-cpus", "2", "--batch-size", "8", "--backend", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "on Ray" in out and "encoded 0, reused from cache 40, missing 0, unreadable 0" in out
    assert wait_gone(ray_tmp) == []


def test_missing_ray_is_a_clear_error(synth_catalog, tmp_path, monkeypatch, capsys):
    from vestis.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(VestisError, match=r"needs Ray.*pip install"):
        extract_catalog(synth_catalog, SPEC, tmp_path / "c", engine="ray", progress=False)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.vfs"))
    folder = Path(next(iter(synth_catalog)).image).parents[1]
    assert main(["extract", str(folder), "--cache", str(tmp_path / "c"), "--engine", "ray"]) == 2
    assert "needs Ray" in capsys.readouterr().err
    assert main(["extract", str(folder), "--cache", str(tmp_path / "c"), "--address", "auto"]) == 2
    assert "--address and --ray-cpus go with --engine ray" in capsys.readouterr().err


def test_ray_that_cannot_start_is_a_clear_error(synth_catalog, tmp_path, monkeypatch):
    import ray

    def refuse(*a, **k):
        raise ConnectionError("no GCS at 10.0.0.1:6379")

    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(VestisError, match=r"could not join the Ray cluster at 10.0.0.1:6379: ConnectionError"):
        extract_catalog(synth_catalog, SPEC, tmp_path / "c", backend="onnx", engine="ray", address="10.0.0.1:6379",
                        progress=False)
    assert len(FeatureCache(tmp_path / "c", SPEC)) == 0


def test_unknown_engine(synth_catalog, tmp_path):
    with pytest.raises(VestisError, match="unknown extraction engine 'spark'"):
        extract_catalog(synth_catalog, SPEC, tmp_path / "c", engine="spark", progress=False)


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vestis.catalog import Catalog, Item
    from vestis.vision.extract import extract_catalog
    from vestis.vision.trunk import TrunkSpec
    folder, cache = Path(sys.argv[1]), Path(sys.argv[2])
    items = [Item(p.stem, p) for p in sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem))]
    extract_catalog(Catalog(items), TrunkSpec(resolution=(64, 64), levels=("s8", "s16", "s32")), cache, batch_size=8,
                    backend="onnx", shard_size=16, progress=False, engine="ray", ray_cpus=2)
""")


N_RESUME = 800


@pytest.mark.slow  # a fresh interpreter starts Ray: 20-60 s on 2 shared cores
def test_killed_ray_extraction_resumes(tmp_path, ray_tmp):
    """kill -9 of a Ray extraction midway: whole shards stay, the local Ray goes with its driver, and the rerun
    (on Ray) re-encodes nothing that was written."""
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_RESUME):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    cache = tmp_path / "cache"
    shard_dir = cache / SPEC.key / "shards"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, str(script), str(folder), str(cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and len(list(shard_dir.glob("*.vfs"))) < 3:
            time.sleep(0.02)
        assert proc.poll() is None, "extraction ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_gone(ray_tmp, 60) == [], "the local Ray outlived its killed driver"
    finally:
        for pid in ray_processes(ray_tmp):  # whatever is left, so the test leaves no Ray behind
            os.kill(pid, signal.SIGKILL)
    n_done = len(FeatureCache(cache, SPEC))
    assert 48 <= n_done < N_RESUME and n_done % 16 == 0  # whole shards only
    cat = Catalog([Item(str(i), folder / f"{i}.jpg") for i in range(N_RESUME)])
    rep = extract_catalog(cat, SPEC, cache, batch_size=8, backend="onnx", shard_size=16, progress=False,
                          engine="ray", ray_cpus=2)
    assert rep.reused == n_done and rep.encoded == N_RESUME - n_done and rep.corrupt == 0
    fs = FeatureCache(cache, SPEC).load(cat)
    assert len(fs) == N_RESUME and not fs.without_features


@pytest.mark.slow  # encodes the tiny pipeline's 160 images again on a local Ray: 30-60 s on 2 shared cores
def test_index_encodes_on_ray_and_answers_as_before(tiny_pipeline, tmp_path, ray_tmp):
    """`vestis index --engine ray` into an empty feature cache: the images are encoded on Ray, and the index answers
    exactly as the one built from the single-process cache."""
    from vestis.cli import main
    from vestis.engine import Engine

    root, cat, run, idx, cache = tiny_pipeline
    fresh = tmp_path / "cache"
    out = tmp_path / "idx"
    assert main(["index", "--run", str(run), "--catalog", str(cat), "--out", str(out), "--split", "gallery",
                 "--cache", str(fresh), "--engine", "ray", "--ray-cpus", "2"]) == 0
    assert len(list(fresh.rglob("*.vfs"))) > 0 and wait_gone(ray_tmp) == []
    e1, e2 = Engine.load(run, idx, cache_dir=cache), Engine.load(run, out, cache_dir=fresh)
    for q in sorted(e1.spaces["main"].ids())[:5]:
        r1, r2 = e1.search(item_id=q, k=20, labels=False), e2.search(item_id=q, k=20, labels=False)
        assert [h.id for h in r1] == [h.id for h in r2] and [h.score for h in r1] == [h.score for h in r2]
