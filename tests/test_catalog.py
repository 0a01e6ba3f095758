import pytest
from PIL import Image

from vestis.catalog import Catalog, Item
from vestis.errors import CatalogError, UnknownValueError


def _cat(tmp_path, n=6):
    items = []
    for i in range(n):
        p = tmp_path / f"{i}.jpg"
        Image.new("RGB", (8, 10), (i * 30, 0, 0)).save(p)
        items.append(Item(id=str(i), image=p, attributes={"colour": "red" if i % 2 else "blue"}))
    return Catalog(items, name="t")


def test_duplicate_ids_rejected(tmp_path):
    with pytest.raises(CatalogError, match="duplicate item id"):
        Catalog([Item("a", None), Item("a", None)])


def test_filter_split_and_lookup(tmp_path):
    cat = _cat(tmp_path)
    red = cat.filter(colour="red")
    assert red.ids() == ["1", "3", "5"]
    assert red.split_of("3") == cat.split_of("3")
    with pytest.raises(UnknownValueError):
        cat.filter(colour="navy")
    with pytest.raises(CatalogError, match="unknown item id"):
        cat["nope"]
    total = sum(len(cat.split(s)) for s in ("train", "gallery", "query"))
    assert total == len(cat)
    with pytest.raises(CatalogError, match="unknown split"):
        cat.split("test")


def test_dataset_split_overrides_hash(tmp_path):
    cat = Catalog([Item("x", None, split="query"), Item("y", None)])
    assert cat.split_of("x") == "query"


def test_summary_counts_missing_and_unreadable(tmp_path):
    cat = _cat(tmp_path, 3)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    cat = Catalog(list(cat) + [Item("bad", tmp_path / "bad.jpg"), Item("gone", tmp_path / "gone.jpg"), Item("none", None)])
    s = cat.summary()
    assert s["items"] == 6
    assert s["images"]["found"] == 4 and s["images"]["missing"] == 2 and s["images"]["unreadable"] == 1
    assert s["images"]["unreadable_ids"] == ["bad"]
    assert sorted(s["images"]["missing_ids"]) == ["gone", "none"]
    assert s["attributes"]["colour"]["counts"] == {"blue": 2, "red": 1}
    assert s["attributes"]["colour"]["unspecified"] == 3


def test_with_attributes_restricts_labels(tmp_path):
    cat = Catalog([Item("a", None, {"colour": "red", "fit": "slim"})])
    sub = cat.with_attributes(["fit"])
    assert sub.schema.attributes == ["fit"] and sub["a"].attributes == {"fit": "slim"}
