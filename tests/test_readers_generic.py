import json

import pytest

from vestis.catalog import Catalog, Item, Part
from vestis.catalog.readers import detect_format, generic
from vestis.errors import CatalogError

CSV = """id,image,instance_id,split,box,colour,sleeve
a,img/a.jpg,p1,,"1,2,30,40",red,short
b,img/b.jpg,p1,,,blue,
c,img/c.jpg,,query,,unspecified,long
a,img/dup.jpg,,,,red,long
,img/noid.jpg,,,,red,long
d,img/d.jpg,,,"5,5,1,1",red,long
e,img/e.jpg,,,,red,long,extra
f,img/f.jpg,,sometimes,,green,long
"""


def test_csv_reader_rows_and_warnings(tmp_path):
    (tmp_path / "catalog.csv").write_text(CSV)
    cat = Catalog.load(tmp_path)
    assert cat.source == "generic"
    assert cat.ids() == ["a", "b", "c", "f"]
    assert cat["a"].attributes == {"colour": "red", "sleeve": "short"}
    assert cat["a"].box == (1.0, 2.0, 30.0, 40.0) and cat["a"].instance_id == "p1"
    assert cat["a"].image == tmp_path / "img" / "a.jpg"
    assert cat["b"].attributes == {"colour": "blue"}  # empty cell = unspecified
    assert cat["c"].attributes == {"sleeve": "long"} and cat.split_of("c") == "query"
    assert cat["f"].split is None  # bad split value falls back to the hash split, with a warning
    r = cat.report.counts
    assert r == {"duplicate_id": 1, "missing_id": 1, "bad_geometry": 1, "malformed_row": 1, "bad_split": 1}
    assert any("line 5" in w for w in cat.report.warnings)  # the duplicate names its line
    assert set(cat.schema.attributes) == {"colour", "sleeve"}


def test_missing_required_column(tmp_path):
    (tmp_path / "x.csv").write_text("id,colour\na,red\n")
    with pytest.raises(CatalogError, match="missing required column"):
        generic.read(tmp_path / "x.csv", __import__("vestis.catalog", fromlist=["LoadReport"]).LoadReport())
    with pytest.raises(CatalogError, match="cannot tell the catalogue format"):
        detect_format(tmp_path / "x.csv")


def test_empty_catalogue_is_an_error(tmp_path):
    (tmp_path / "catalog.csv").write_text("id,image,colour\n")
    with pytest.raises(CatalogError, match="no usable items"):
        Catalog.load(tmp_path)


def test_jsonl_round_trip_with_parts_regions_and_schema(tmp_path):
    items = [
        Item("o1", tmp_path / "images" / "o1.jpg", {}, parts=(Part("top", (1, 2, 3, 4), {"colour": "red"}),)),
        Item("s1", tmp_path / "images" / "s1.jpg", {"colour": "blue", "fit": "slim"}, instance_id="g1",
             box=(0, 0, 10, 10), regions={"sleeve": (1, 1, 5, 5)}),
    ]
    from vestis.catalog import AttributeSchema
    cat = Catalog(items, AttributeSchema({"colour": ["red", "blue", "green"], "fit": ["slim", "loose"]}))
    generic.write(cat, tmp_path / "catalog.jsonl")
    back = Catalog.load(tmp_path)
    assert back.schema == cat.schema  # schema.json keeps order and unused values
    for a, b in zip(cat, back):
        assert a == b
    line = json.loads((tmp_path / "catalog.jsonl").read_text().splitlines()[0])
    assert line["image"] == "images/o1.jpg"


def test_jsonl_bad_lines_and_labels_outside_schema(tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps({"attributes": {"colour": ["red"]}}))
    (tmp_path / "catalog.jsonl").write_text(
        '{"id": "a", "image": "a.jpg", "colour": "red"}\n'
        "not json\n"
        '{"id": "b", "image": "b.jpg", "attributes": {"colour": "purple"}}\n'
        "[1, 2]\n")
    cat = Catalog.load(tmp_path)
    assert cat.ids() == ["a", "b"] and cat["b"].attributes == {}
    assert cat.report.counts == {"malformed_row": 2, "label_outside_schema": 1}
