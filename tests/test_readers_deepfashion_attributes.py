import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vestis.catalog import Catalog, LoadReport
from vestis.catalog.readers import READERS, deepfashion_attributes, detect_format
from vestis.catalog.splits import held_out_split
from vestis.errors import CatalogError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "deepfashion_attributes"
IDS = ["Sheer_Pleated-Front_Blouse/img_00000001", "Sheer_Pleated-Front_Blouse/img_00000002",
       "Classic_Pencil_Skirt/img_00000003", "Floral_Maxi_Dress/img_00000004", "Tailored_Woven_Blazer/img_00000006"]


@pytest.fixture
def root(tmp_path):
    dst = tmp_path / "Category and Attribute Prediction Benchmark"
    shutil.copytree(FIXTURE, dst)
    return dst


def _check(cat: Catalog, root: Path):
    assert cat.ids() == IDS
    b1 = cat["Sheer_Pleated-Front_Blouse/img_00000001"]
    assert b1.attributes == {"category": "Blouse", "clothes_type": "upper-body", "fabric": "chiffon",
                             "part": "peter pan collar"}
    assert b1.split == "train" and b1.box == (72.0, 79.0, 232.0, 273.0)
    assert b1.image == root / "img" / "Sheer_Pleated-Front_Blouse" / "img_00000001.jpg"
    b2 = cat["Sheer_Pleated-Front_Blouse/img_00000002"]
    assert "texture" not in b2.attributes and b2.attributes["fabric"] == "chiffon"  # two textures -> unspecified
    assert b2.split == "val"
    skirt = cat["Classic_Pencil_Skirt/img_00000003"]
    assert skirt.attributes == {"category": "Skirt", "clothes_type": "lower-body", "shape": "a-line", "fabric": "denim"}
    assert skirt.split == held_out_split(skirt.id) and skirt.box is None  # bad box dropped
    dress = cat["Floral_Maxi_Dress/img_00000004"]  # 0/1 encoded row
    assert dress.attributes == {"category": "Dress", "clothes_type": "full-body", "texture": "floral",
                                "fabric": "chiffon", "shape": "maxi", "style": "boho"}
    blazer = cat["Tailored_Woven_Blazer/img_00000006"]
    assert blazer.attributes == {"category": "Blazer", "clothes_type": "upper-body"} and blazer.split is None
    assert cat.split_of(blazer.id) in ("train", "gallery", "query")
    r = cat.report
    assert dict(r.counts) == {"bad_category": 1, "multi_positive": 1, "malformed_row": 1, "unknown_image": 1,
                              "bad_split": 1, "no_partition": 1, "bad_box": 1}
    for where in ("list_category_img.txt line 7", "list_attr_img.txt line 4", "list_attr_img.txt line 7",
                  "list_attr_img.txt line 8", "list_eval_partition.txt line 7", "list_bbox.txt line 5"):
        assert any(w.startswith(where) for w in r.warnings), where
    assert cat.schema.attributes == ["category", "clothes_type", "texture", "fabric", "shape", "part", "style"]
    assert cat.schema.values("category") == ("Blazer", "Blouse", "Skirt", "Dress")  # file order, present only
    assert cat.schema.values("fabric") == ("chiffon", "denim")
    assert cat.schema.values("shape") == ("a-line", "maxi")


def test_reads_subfolder_layout(root):
    assert detect_format(root) == "deepfashion-attributes"
    _check(Catalog.load(root), root)


def test_reads_flat_layout_and_file_path(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in FIXTURE.rglob("*.txt"):
        shutil.copy(f, flat / f.name)
    assert detect_format(flat) == "deepfashion-attributes"
    _check(Catalog.load(flat), flat)
    assert detect_format(flat / "list_category_img.txt") == "deepfashion-attributes"


def test_anno_folder_path_and_img_folder(root):
    (root / "Img" / "img").mkdir(parents=True)
    cat = Catalog.load(root / "Anno")
    assert cat.ids() == IDS
    assert cat[IDS[0]].image == root / "Img" / "img" / "Sheer_Pleated-Front_Blouse" / "img_00000001.jpg"


def test_end_to_end_summary_with_images(root):
    for name in IDS[:3]:
        p = root / "img" / f"{name}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(p)
    s = Catalog.load(root).summary()
    assert s["items"] == 5 and s["images"]["found"] == 3 and s["images"]["missing"] == 2
    assert s["attributes"]["texture"]["unspecified"] == 4 and s["attributes"]["texture"]["counts"] == {"floral": 1}
    assert s["load_warnings"]["multi_positive"] == 1


def test_read_multilabel(root):
    names, attrs, types, m = deepfashion_attributes.read_multilabel(root)
    assert attrs == ["a-line", "abstract chevron print", "floral", "chiffon", "denim", "maxi", "peter pan collar", "boho"]
    assert types == [3, 1, 1, 2, 2, 3, 4, 5]
    assert m.dtype == np.int8 and m.shape == (5, 8)  # the 7-value row is skipped
    assert names[3] == "img/Floral_Maxi_Dress/img_00000004.jpg"
    assert m[0].tolist() == [0, 0, 0, 1, 0, 0, 1, 0]
    assert m[1].tolist() == [0, 1, 1, 1, 0, 0, 0, 0]
    assert m[3].tolist() == [0, 0, 1, 1, 0, 1, 0, 1]


def test_without_optional_files(root):
    for f in ("Anno/list_attr_cloth.txt", "Anno/list_attr_img.txt", "Anno/list_bbox.txt", "Eval/list_eval_partition.txt"):
        (root / f).unlink()
    cat = Catalog.load(root)
    assert len(cat) == 5 and cat.schema.attributes == ["category", "clothes_type"]
    assert all(it.split is None and it.box is None for it in cat)


def test_missing_required_file(root):
    (root / "Anno" / "list_category_cloth.txt").unlink()
    with pytest.raises(CatalogError, match="no list_category_cloth.txt"):
        Catalog.load(root, format="deepfashion-attributes")


def test_half_of_the_attribute_pair(root):
    (root / "Anno" / "list_attr_cloth.txt").unlink()
    with pytest.raises(CatalogError, match="list_attr_cloth.txt is missing"):
        Catalog.load(root)


def test_bad_header(root):
    f = root / "Anno" / "list_category_img.txt"
    f.write_text("\n".join(f.read_text().splitlines()[1:]) + "\n")  # count line dropped
    with pytest.raises(CatalogError, match="not a DeepFashion list file"):
        Catalog.load(root)


def test_count_mismatch_warns(root):
    f = root / "Anno" / "list_category_cloth.txt"
    f.write_text("50" + f.read_text()[1:])
    cat = Catalog.load(root)
    assert cat.report.counts["count_mismatch"] == 1


def test_detection_is_specific():
    for name, fixture in (("deepfashion-inshop", "deepfashion_inshop"), ("fashionai", "fashionai/base"),
                          ("ut-zappos50k", "zappos")):
        assert not deepfashion_attributes.detect(FIXTURES / fixture)
        assert detect_format(FIXTURES / fixture) == name
    others = [m for n, m in READERS.items() if n != "deepfashion-attributes"]
    assert not any(m.detect(FIXTURE) for m in others)


def test_read_directly_with_report(root):
    report = LoadReport()
    cat = deepfashion_attributes.read(root, report)
    assert cat.report is report and report.total == 7
