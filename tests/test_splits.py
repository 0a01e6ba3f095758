import zlib
from collections import Counter

from vestis.catalog.splits import assign_split, held_out_split


def test_known_answers_from_crc32():
    # The rule, restated: crc32(unit) % 100 < 70 -> train; else crc32(id + "#query") % 30 < 5 -> query.
    for i in range(200):
        item = f"item{i}"
        expected = "train" if zlib.crc32(item.encode()) % 100 < 70 else (
            "query" if zlib.crc32((item + "#query").encode()) % 30 < 5 else "gallery")
        assert assign_split(item) == expected


def test_proportions_close_to_70_25_5():
    c = Counter(assign_split(str(i)) for i in range(50_000))
    assert abs(c["train"] / 50_000 - 0.70) < 0.01
    assert abs(c["gallery"] / 50_000 - 0.25) < 0.01
    assert abs(c["query"] / 50_000 - 0.05) < 0.005


def test_instances_never_straddle_train_and_evaluation():
    for g in range(300):
        splits = {assign_split(f"g{g}-view{v}", instance_id=f"g{g}") for v in range(4)}
        assert splits == {"train"} or "train" not in splits


def test_held_out_split_is_query_or_gallery():
    assert {held_out_split(str(i)) for i in range(500)} == {"query", "gallery"}
