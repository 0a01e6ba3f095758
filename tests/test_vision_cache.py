"""Feature cache: round trip, content keys, atomic shards, corrupt/truncated entries detected not fatal."""

import numpy as np
import pytest

from vestis.catalog import Catalog, Item
from vestis.vision.cache import FeatureCache, content_hash
from vestis.vision.trunk import TrunkSpec

SHAPES = {"s16": (112, 4, 2), "s32": (1280, 2, 1)}  # small maps at a 64x32 input


def maps(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {lv: rng.standard_normal(s).astype(np.float16) for lv, s in SHAPES.items()}


@pytest.fixture
def spec():
    return TrunkSpec(resolution=(64, 32))


def test_put_flush_get_and_reopen(tmp_path, spec):
    with FeatureCache(tmp_path, spec, shard_size=3) as c:
        for i in range(7):
            c.put(f"h{i}", maps(i))
        assert c.has("h6") and not c.has("nope")
        assert len(list(c.shard_dir.glob("*.vfs"))) == 2  # two full shards written, one entry pending
    shards = sorted(c.shard_dir.glob("*.vfs"))
    assert len(shards) == 3 and not list(c.shard_dir.glob(".*"))
    assert c.path.name == spec.key and (c.path / "spec.json").is_file()
    again = FeatureCache(tmp_path, spec)
    assert len(again) == 7
    for i in range(7):
        got = again.get(f"h{i}")
        assert all(np.array_equal(got[lv], maps(i)[lv]) for lv in SHAPES)
    assert again.get("nope") is None


def test_key_changes_with_image_bytes_and_spec(tmp_path, spec):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"\xff\xd8 one")
    b.write_bytes(b"\xff\xd8 one")
    assert content_hash(a) == content_hash(b)  # same content, same entry, whatever the name
    b.write_bytes(b"\xff\xd8 two")
    assert content_hash(a) != content_hash(b)
    assert FeatureCache(tmp_path, spec).path != FeatureCache(tmp_path, TrunkSpec(resolution=(96, 32))).path


def _catalog(tmp_path, n):
    items = []
    for i in range(n):
        p = tmp_path / "img" / f"{i}.jpg"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(f"image {i}".encode())
        items.append(Item(f"id{i}", p))
    items.append(Item("gone", tmp_path / "img" / "gone.jpg"))
    items.append(Item("none", None))
    return Catalog(items)


def test_load_in_catalogue_order_with_missing(tmp_path, spec):
    cat = _catalog(tmp_path, 6)
    hashes = [content_hash(it.image) for it in cat.items[:6]]
    with FeatureCache(tmp_path / "c", spec, shard_size=4) as c:
        for i in (4, 0, 2, 5):  # not all, out of order
            c.put(hashes[i], maps(i))
        c.put_unreadable(hashes[3])
    fs = FeatureCache(tmp_path / "c", spec).load(cat)
    assert fs.ids == ["id0", "id2", "id4", "id5"]
    assert fs.maps["s32"].shape == (4, *SHAPES["s32"]) and fs.maps["s16"].dtype == np.float16
    assert np.array_equal(fs.maps["s16"][fs.row("id4")], maps(4)["s16"])
    assert fs.missing == ["gone", "none"] and fs.unreadable == ["id3"] and fs.not_extracted == ["id1"]


def test_truncated_shard_and_flipped_byte_are_detected(tmp_path, spec):
    cat = _catalog(tmp_path, 6)
    hashes = [content_hash(it.image) for it in cat.items[:6]]
    with FeatureCache(tmp_path / "c", spec, shard_size=3) as c:
        for i in range(6):
            c.put(hashes[i], maps(i))
    first, second = sorted(c.shard_dir.glob("*.vfs"))
    # flip one byte inside entry 1 of the first shard (ids 0..2)
    data = bytearray(first.read_bytes())
    data[-FeatureCache(tmp_path / "c", spec).index[hashes[1]][0][0].entry_bytes - 100] ^= 0xFF
    first.write_bytes(bytes(data))
    # truncate the second shard (ids 3..5), as a disk-full write without the atomic rename would
    second.write_bytes(second.read_bytes()[:-1000])

    c2 = FeatureCache(tmp_path / "c", spec)
    fs = c2.load(cat)
    assert fs.ids == ["id0", "id2"]
    assert fs.corrupt == ["id1"] and fs.not_extracted == ["id1", "id3", "id4", "id5"]
    assert len(c2.problems) == 1 and "truncated" in c2.problems[0]
    assert c2.get(hashes[1]) is None and c2.get(hashes[0]) is not None
    valid, corrupt = c2.verify(hashes)
    assert valid == {hashes[0], hashes[2]} and corrupt == {hashes[1]}
    assert not c2.has(hashes[1])
    # re-putting the entry makes it valid again (the newest copy wins)
    with c2:
        c2.put(hashes[1], maps(1))
    assert FeatureCache(tmp_path / "c", spec).load(cat).ids == ["id0", "id1", "id2"]
    # broken shards can be moved aside
    moved = c2.quarantine()
    assert [p.name for p in moved] == [second.name] and not second.exists()


def test_garbage_and_stale_temp_files_are_ignored(tmp_path, spec):
    c = FeatureCache(tmp_path, spec)
    c.shard_dir.mkdir(parents=True)
    (c.shard_dir / "0000-1-1.vfs").write_bytes(b"garbage")
    (c.shard_dir / ".x.vfs.999999999.tmp").write_bytes(b"half a shard")  # a dead writer's temp file
    assert len(c) == 0 and len(c.problems) == 1
    assert not (c.shard_dir / ".x.vfs.999999999.tmp").exists()
    with c:
        c.put("h", maps(0))
    assert FeatureCache(tmp_path, spec).get("h") is not None


def test_shard_with_only_unreadable_records(tmp_path, spec):
    with FeatureCache(tmp_path, spec) as c:
        c.put_unreadable("bad")
    with FeatureCache(tmp_path, spec) as c:
        assert c.is_unreadable("bad") and not c.has("bad")
        c.put("good", maps(0))
    c = FeatureCache(tmp_path, spec)
    assert not c.problems and c.get("good") is not None and c.is_unreadable("bad")


def test_shape_mismatch_is_refused(tmp_path, spec):
    c = FeatureCache(tmp_path, spec)
    c.put("a", maps(0))
    with pytest.raises(ValueError, match="differ"):
        c.put("b", {"s16": np.zeros((112, 5, 2)), "s32": np.zeros((1280, 2, 1))})


def test_three_levels_round_trip_and_levels_in_the_key(tmp_path):
    three = TrunkSpec(resolution=(64, 32), levels=("s8", "s16", "s32"))
    shapes = {"s8": (40, 8, 4), **SHAPES}
    rng = np.random.default_rng(0)
    entries = {f"h{i}": {lv: rng.standard_normal(s).astype(np.float16) for lv, s in shapes.items()} for i in range(5)}
    cat = _catalog(tmp_path, 3)
    hashes = [content_hash(it.image) for it in cat.items[:3]]
    with FeatureCache(tmp_path / "c", three, shard_size=2) as c:
        for h, m in entries.items():
            c.put(h, m)
        for i, h in enumerate(hashes):
            c.put(h, entries[f"h{i}"])
    again = FeatureCache(tmp_path / "c", three)
    assert len(again) == 8 and not again.problems
    for h, m in entries.items():
        got = again.get(h)
        assert list(got) == ["s8", "s16", "s32"] and all(np.array_equal(got[lv], m[lv]) for lv in shapes)
    fs = again.load(cat)
    assert list(fs.maps) == ["s8", "s16", "s32"] and fs.maps["s8"].shape == (3, 40, 8, 4)
    assert np.array_equal(fs.maps["s8"][fs.row("id2")], entries["h2"]["s8"])
    # another set of levels is another cache: nothing mixes
    two = TrunkSpec(resolution=(64, 32))
    assert FeatureCache(tmp_path / "c", two).path != again.path and len(FeatureCache(tmp_path / "c", two)) == 0
    assert FeatureCache(tmp_path / "c", two).load(cat).maps["s16"].shape[0] == 0
    with pytest.raises(ValueError, match="lack level"):
        FeatureCache(tmp_path / "c", three).put("x", maps(0))  # s16 + s32 only
