"""Consumer-to-shop P@10 (photo queries of another catalogue against a gallery): the label mapping, the query
file, and the metric on hand-worked answers; the shipped clothing -> fashion-product-images mapping against the
real articleType values when the data is present."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vestis.catalog import AttributeSchema, Catalog, Item
from vestis.catalog.mapping import LabelMapping
from vestis.errors import CatalogError
from vestis.eval import evaluate, read_queries, write_queries
from vestis.eval.errors import QueryFileError
from vestis.eval.metrics import precision_at_k
from vestis.eval.queries import consumer_to_shop_queries
from vestis.eval.report import report_markdown

ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "benchmarks" / "mappings" / "clothing-to-fpi.json"
FPI = ROOT.parent.parent / "shared" / "datasets" / "fashion-product-images-small"
if not FPI.is_dir():
    FPI = Path("/work/shared/datasets/fashion-product-images-small")
CLOTHING = FPI.parent / "clothing-dataset-small"


def test_precision_at_k_known_answers():
    assert precision_at_k([True, False, True, True], 4) == 0.75
    assert precision_at_k([True] * 12, 10) == 1.0
    # a short list: the missing places are misses
    assert precision_at_k([True, True], 10) == 0.2
    assert precision_at_k([], 10) == 0.0
    with pytest.raises(ValueError):
        precision_at_k([True], 0)


def _mapping():
    return LabelMapping.from_json({"source_attribute": "category", "target_attribute": "type",
                                   "map": {"dress": ["Dresses", "Nightdress"], "hat": ["Caps"]}})


def test_mapping_checks():
    m = _mapping()
    m.check(["Dresses", "Nightdress", "Caps", "Tshirts"])
    with pytest.raises(CatalogError, match="Nightdres"):
        m.check(["Dresses", "Caps"])
    with pytest.raises(CatalogError, match="shoes"):
        m.check(["Dresses", "Nightdress", "Caps"], source_values=["dress", "hat", "shoes"])
    for bad in ({"source_attribute": "category", "target_attribute": "type", "map": {"dress": []}},
                {"source_attribute": "category", "map": {"dress": ["Dresses"]}},
                {"source_attribute": "category", "target_attribute": "type", "map": {"d": ["A", "A"]}}):
        with pytest.raises(CatalogError):
            LabelMapping.from_json(bad)


def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def test_query_file_and_p_at_10_by_hand(tmp_path):
    photos = Catalog([Item("p1", _photo(tmp_path / "ph" / "p1.jpg"), {"category": "dress"}, split="query"),
                      Item("p2", _photo(tmp_path / "ph" / "p2.jpg"), {"category": "dress"}, split="query"),
                      Item("p3", _photo(tmp_path / "ph" / "p3.jpg"), {"category": "hat"}, split="query"),
                      Item("p4", _photo(tmp_path / "ph" / "p4.jpg"), {"category": "sock"}, split="query"),
                      Item("p5", _photo(tmp_path / "ph" / "p5.jpg"), {"category": "hat"}, split="train")],
                     AttributeSchema({"category": ["dress", "hat", "sock"]}))
    qs, counts = consumer_to_shop_queries(photos, _mapping())
    assert counts == {"dress": 2, "hat": 1, "unmapped": 1, "no_image": 0}
    f = tmp_path / "q" / "c2s.jsonl"
    f.parent.mkdir()
    write_queries(f, qs)
    line = json.loads(f.read_text().splitlines()[0])
    assert line["image"] == "../ph/p1.jpg"  # relative to the query file's folder
    assert line["target"] == {"type": ["Dresses", "Nightdress"]} and line["category"] == "dress"
    back = read_queries(f)
    assert Path(back[0]["image"]) == tmp_path / "ph" / "p1.jpg"

    types = ["Dresses"] * 3 + ["Nightdress"] * 2 + ["Caps"] * 4 + ["Tshirts"] * 11
    gallery = Catalog([Item(f"g{i:02d}", None, {"type": t}, split="gallery") for i, t in enumerate(types)],
                      AttributeSchema({"type": ["Dresses", "Nightdress", "Caps", "Tshirts"]}), name="shop")
    ids = gallery.ids()
    rows = [{"query_id": back[0]["query_id"], "ranked": ids},  # 5 dress-like in the top 10 -> 0.5
            {"query_id": back[1]["query_id"], "ranked": ids[::-1]},  # 20 items reversed: top 10 all Tshirts -> 0
            {"query_id": back[2]["query_id"], "ranked": ids[5:] + ids[:5]}]  # 4 Caps in top 10 -> 0.4
    rep = evaluate(f, rows, gallery)
    c = rep["consumer_to_shop"]
    assert c["per_category"] == {"dress": {"n": 2, "precision": 0.25}, "hat": {"n": 1, "precision": 0.4}}
    assert c["precision"] == pytest.approx((0.5 + 0 + 0.4) / 3)
    assert c["precision_macro"] == pytest.approx((0.25 + 0.4) / 2)
    assert c["min_category"] == 0.25 and c["k"] == 10 and rep["protocol"] == "vestis-consumer-to-shop/1"
    md = report_markdown({**rep, "run": "r", "mapped_accuracy": {"n": 3, "accuracy": 2 / 3, "per_category": {
        "dress": {"n": 2, "accuracy": 0.5}, "hat": {"n": 1, "accuracy": 1.0}}}})
    assert "| r (labels not recorded) | 3 | 0.300 | 0.325 | 0.250 | 0.400 |" in md
    assert "| r | 3 | 66.7 | 50.0 | 100.0 |" in md
    # a gallery id the ranking cannot use: an item outside the gallery is refused, not scored
    with pytest.raises(Exception, match="not a gallery item"):
        evaluate(f, [{**r, "ranked": ["nope"] + r["ranked"]} for r in rows], gallery)


def test_target_sets_must_be_lists_of_strings(tmp_path):
    q = {"query_id": "c1", "image": "x.jpg", "attribute": "type", "target": {"type": [1]}, "protocol": "consumer_to_shop"}
    with pytest.raises(QueryFileError, match="target"):
        write_queries(tmp_path / "q.jsonl", [q])


@pytest.mark.skipif(not (FPI / "styles.csv").is_file() or not CLOTHING.is_dir(), reason="real data absent")
def test_shipped_mapping_names_real_values_and_every_category():
    m = LabelMapping.load(MAPPING)
    with open(FPI / "styles.csv", newline="", encoding="utf-8") as fh:
        types = {r["articleType"] for r in csv.DictReader(fh)}
    with open(CLOTHING / "catalog.csv", newline="", encoding="utf-8") as fh:
        cats = {r["category"] for r in csv.DictReader(fh)}
    m.check(types, source_values=cats)
    assert (m.source_attribute, m.target_attribute) == ("category", "articleType")
