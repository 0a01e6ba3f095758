"""Batched extraction: counts and shapes on tiny JPEGs (with a corrupt file and missing paths), reuse on rerun,
ONNX Runtime vs PyTorch agreement, and resuming after the process is killed."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vestis.catalog import Catalog, Item
from vestis.vision.cache import FeatureCache
from vestis.vision.extract import ONNX_TOLERANCE, _probe_batch, extract_catalog, make_backend, max_abs_diff
from vestis.vision.trunk import TrunkSpec, build_trunk

SPEC = TrunkSpec(resolution=(64, 64))


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        a = np.full((80, 60, 3), 255, np.uint8)
        a[10:70, 8:52] = rng.integers(0, 255, 3)  # a "garment" on white
        a[30:50, 20:40] = rng.integers(0, 255, (20, 20, 3))
        p = folder / f"{i}.jpg"
        Image.fromarray(a).save(p, quality=90)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # shared: the ONNX export happens once for the module


@pytest.fixture(scope="module")
def trunk():
    return build_trunk(SPEC)


@pytest.fixture(scope="module")
def torch_backend(trunk, cache_dir):
    return make_backend(SPEC, cache_dir, "torch", trunk=trunk)


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    paths = write_jpegs(d, 6)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (d / "dup.jpg").write_bytes(paths[0].read_bytes())
    items = [Item(f"p{i}", p) for i, p in enumerate(paths)]
    items += [Item("bad", d / "corrupt.jpg"), Item("gone", d / "missing.jpg"), Item("none", None),
              Item("dup", d / "dup.jpg")]
    return Catalog(items)


def test_extract_counts_shapes_and_reuse(small_catalog, cache_dir, torch_backend):
    rep = extract_catalog(small_catalog, SPEC, cache_dir, batch_size=4, backend=torch_backend, progress=False)
    assert (rep.items, rep.encoded, rep.reused, rep.shared) == (10, 6, 0, 1)
    assert (rep.missing, rep.unreadable) == (2, 1)
    assert rep.missing_ids == ["gone", "none"] and rep.unreadable_ids == ["bad"]
    text = rep.describe()
    assert "encoded 6" in text and "unreadable 1" in text and "images/s" in text and str(rep.cache_path) in text

    fs = FeatureCache(cache_dir, SPEC).load(small_catalog)
    assert fs.ids == ["p0", "p1", "p2", "p3", "p4", "p5", "dup"]
    assert fs.maps["s16"].shape == (7, 112, 4, 4) and fs.maps["s32"].shape == (7, 1280, 2, 2)
    assert fs.maps["s32"].dtype == np.float16 and np.isfinite(fs.maps["s16"]).all()
    assert np.array_equal(fs.maps["s32"][0], fs.maps["s32"][6])  # identical bytes, one entry
    assert not np.array_equal(fs.maps["s32"][0], fs.maps["s32"][1])
    assert fs.missing == ["gone", "none"] and fs.unreadable == ["bad"]

    again = extract_catalog(small_catalog, SPEC, cache_dir, batch_size=4, backend="torch", progress=False)
    assert (again.encoded, again.reused, again.unreadable, again.missing) == (0, 7, 1, 2)

    limited = extract_catalog(small_catalog, SPEC, cache_dir, backend="torch", limit=3, progress=False)
    assert (limited.items, limited.reused) == (3, 3)


def test_onnx_matches_torch(cache_dir, trunk, torch_backend):
    onnx = make_backend(SPEC, cache_dir, "onnx", trunk=trunk)
    assert onnx.name == "onnx" and max(onnx.max_abs_diff.values()) < ONNX_TOLERANCE
    probe = _probe_batch(SPEC, 3)
    diff = max_abs_diff(onnx.backend(probe), torch_backend.backend(probe))
    assert max(diff.values()) < ONNX_TOLERANCE, diff
    assert make_backend(SPEC, cache_dir, "auto").name == "onnx"  # reuses the exported, verified model


def test_onnx_extraction_agrees_with_torch_cache(small_catalog, cache_dir, tmp_path, trunk, torch_backend):
    extract_catalog(small_catalog, SPEC, cache_dir, backend=torch_backend, progress=False)
    make_backend(SPEC, cache_dir, "onnx", trunk=trunk)  # exported once for the module: copy, don't export again
    (tmp_path / SPEC.key).mkdir()
    for name in ("trunk.onnx", "trunk.onnx.json"):
        shutil.copy(cache_dir / SPEC.key / name, tmp_path / SPEC.key / name)
    rep = extract_catalog(small_catalog, SPEC, tmp_path, backend="onnx", progress=False)
    assert rep.backend == "onnx" and rep.encoded == 6
    a = FeatureCache(cache_dir, SPEC).load(small_catalog)
    b = FeatureCache(tmp_path, SPEC).load(small_catalog)
    for lv in ("s16", "s32"):
        # float16 storage: allow a couple of float16 steps at the maps' magnitude
        scale = float(np.abs(a.maps[lv]).max())
        assert np.abs(a.maps[lv].astype(np.float32) - b.maps[lv].astype(np.float32)).max() <= 2e-3 * max(1, scale)
    # a damaged exported model is noticed and exported again
    model = tmp_path / SPEC.key / "trunk.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    assert make_backend(SPEC, tmp_path, "onnx", trunk=trunk).name == "onnx" and model.stat().st_size > 1_000_000


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vestis.catalog import Catalog, Item
    import time
    from vestis.vision import extract
    from vestis.vision.extract import extract_catalog
    from vestis.vision.trunk import TrunkSpec
    call = extract.TorchBackend.__call__
    def slow(self, batch):  # leave the test time to kill us mid-run
        time.sleep(0.05)
        return call(self, batch)
    extract.TorchBackend.__call__ = slow
    folder, cache = Path(sys.argv[1]), Path(sys.argv[2])
    items = [Item(p.stem, p) for p in sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem))]
    rep = extract_catalog(Catalog(items), TrunkSpec(resolution=(64, 64)), cache, batch_size=8,
                          backend="torch", shard_size=16, progress=False, workers=1)
    print(rep.describe())
""")


def test_interrupted_run_keeps_finished_batches(tmp_path, trunk):
    """Ctrl-C (or any error) mid-run: the batches encoded so far are written; the rerun encodes the rest."""
    paths = write_jpegs(tmp_path / "imgs", 24, seed=2)
    cat = Catalog([Item(p.stem, p) for p in paths])
    choice = make_backend(SPEC, tmp_path / "cache", "torch", trunk=trunk)
    real, calls = choice.backend, []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(batch)

    choice.backend = flaky
    with pytest.raises(KeyboardInterrupt):
        extract_catalog(cat, SPEC, tmp_path / "cache", batch_size=8, backend=choice, progress=False)
    assert len(FeatureCache(tmp_path / "cache", SPEC)) == 16
    choice.backend = real
    rep = extract_catalog(cat, SPEC, tmp_path / "cache", batch_size=8, backend=choice, progress=False)
    assert (rep.reused, rep.encoded) == (16, 8)


N_RESUME = 160


@pytest.mark.slow  # 10-15 s: a fresh interpreter imports torch and builds the trunk
def test_resume_after_kill(tmp_path):
    paths = write_jpegs(tmp_path / "imgs", N_RESUME, seed=1)
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    cache = tmp_path / "cache"
    shard_dir = cache / SPEC.key / "shards"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "imgs"), str(cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(list(shard_dir.glob("*.vfs"))) < 3:
        time.sleep(0.02)
    assert proc.poll() is None, "extraction finished before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = FeatureCache(cache, SPEC)
    n_done = len(done)
    assert 48 <= n_done < N_RESUME and n_done % 16 == 0  # whole shards only

    cat = Catalog([Item(p.stem, p) for p in paths])
    rep = extract_catalog(cat, SPEC, cache, batch_size=8, backend="torch", shard_size=16, progress=False)
    assert rep.reused == n_done and rep.encoded == N_RESUME - n_done and rep.corrupt == 0
    fs = FeatureCache(cache, SPEC).load(cat)
    assert len(fs) == N_RESUME and not fs.without_features
    assert not list(shard_dir.glob(".*.tmp"))


def test_auto_falls_back_to_torch_when_onnx_fails(monkeypatch, tmp_path, trunk):
    from vestis.errors import VestisError
    from vestis.vision import extract

    def broken(*a, **k):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(extract, "ensure_onnx", broken)
    choice = make_backend(SPEC, tmp_path, "auto", trunk=trunk)
    assert choice.name == "torch" and "exporter unavailable" in choice.note
    with pytest.raises(VestisError, match="backend onnx"):
        make_backend(SPEC, tmp_path, "onnx", trunk=trunk)


def test_exif_rotated_photo_gives_the_upright_features(tmp_path, torch_backend):
    """A phone photo stored sideways (EXIF orientation 6) is encoded as the upright one, not sideways."""
    from vestis.vision.extract import encode_images

    rng = np.random.default_rng(3)
    a = np.full((96, 64, 3), 255, np.uint8)
    a[8:50, 6:40] = rng.integers(0, 255, 3)
    a[60:80, 20:60] = rng.integers(0, 255, (20, 40, 3))
    upright = Image.fromarray(a)
    upright.save(tmp_path / "upright.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", quality=95, exif=exif.tobytes())
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "untagged.jpg", quality=95)
    f = encode_images(torch_backend.backend, SPEC.resolution,
                      [tmp_path / "upright.jpg", tmp_path / "sideways.jpg", tmp_path / "untagged.jpg"])
    for lv, m in f.items():
        same = float((m[0] - m[1]).norm() / m[0].norm())
        other = float((m[0] - m[2]).norm() / m[0].norm())
        assert same < 0.15 and other > 3 * same, (lv, same, other)


SPEC3 = TrunkSpec(resolution=(64, 64), levels=("s8", "s16", "s32"))


def test_three_levels_onnx_per_level_and_extraction(small_catalog, tmp_path):
    """One ONNX output per level, each checked against eager PyTorch; extraction stores every level."""
    import onnxruntime as ort

    from vestis.vision.extract import encode_images

    trunk = build_trunk(SPEC3)
    onnx = make_backend(SPEC3, tmp_path, "onnx", trunk=trunk)
    session = onnx.backend.session
    assert [o.name for o in session.get_outputs()] == ["s8", "s16", "s32"] and isinstance(session, ort.InferenceSession)
    assert set(onnx.max_abs_diff) == {"s8", "s16", "s32"} and max(onnx.max_abs_diff.values()) < ONNX_TOLERANCE
    torch_backend = make_backend(SPEC3, tmp_path, "torch", trunk=trunk)
    probe = _probe_batch(SPEC3, 3)
    got, want = onnx.backend(probe), torch_backend.backend(probe)
    assert {lv: a.shape[1:] for lv, a in got.items()} == {"s8": (40, 8, 8), "s16": (112, 4, 4), "s32": (1280, 2, 2)}
    diff = max_abs_diff(got, want)
    assert set(diff) == {"s8", "s16", "s32"} and max(diff.values()) < ONNX_TOLERANCE, diff

    rep = extract_catalog(small_catalog, SPEC3, tmp_path, backend=onnx, progress=False)
    assert rep.encoded == 6
    fs = FeatureCache(tmp_path, SPEC3).load(small_catalog)
    assert list(fs.maps) == ["s8", "s16", "s32"] and fs.maps["s8"].shape == (7, 40, 8, 8)
    direct = encode_images(torch_backend.backend, SPEC3.resolution, [it.image for it in small_catalog][:2])
    assert list(direct) == ["s8", "s16", "s32"]
    for lv, m in direct.items():
        stored = fs.maps[lv][:2].astype(np.float32)
        assert np.abs(stored - m.numpy()).max() <= 2e-3 * max(1.0, float(np.abs(stored).max())), lv
    # a backend for other levels is refused, not silently stored under this spec
    with pytest.raises(ValueError, match="levels"):
        extract_catalog(small_catalog, SPEC, tmp_path / "other", backend=onnx, progress=False)
