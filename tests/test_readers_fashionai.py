import shutil
from pathlib import Path

import pytest
from PIL import Image

from vestis.catalog import Catalog, LoadReport
from vestis.catalog.readers import READERS, detect_format, fashionai
from vestis.errors import CatalogError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "fashionai" / "base"
COLLAR = "collar_design_labels/2f639f11de22076ead5fe1258eae024d"
SKIRT = "skirt_length_labels/0a6f2a3f8f8cd4a8b4d1c1ebc5d4ab87"
NECKLINE = "neckline_design_labels/fd3ee9b10f6cae6bbd7e2c4e0fe2e8a2"
SLEEVE = "sleeve_length_labels/4b8e1f6a3bd0c3d47f06bcb1f49b0a1c"
COAT_NO_Y = "coat_length_labels/c1d4a1b0e2f3a4b5c6d7e8f9a0b1c2d3"
LAPEL = "lapel_design_labels/e6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1"
MERGED = "coat_length_labels/aa11bb22cc33dd44ee55ff6677889900"


@pytest.fixture
def root(tmp_path):
    dst = tmp_path / "fashionAI_attributes_train_20180222" / "base"
    shutil.copytree(FIXTURE, dst)
    return dst


def test_value_lists_match_the_dataset():
    counts = {k: len(v) for k, v in fashionai.VALUES.items()}
    assert counts == {"skirt_length_labels": 6, "coat_length_labels": 8, "collar_design_labels": 5,
                      "lapel_design_labels": 5, "neck_design_labels": 5, "neckline_design_labels": 10,
                      "pant_length_labels": 6, "sleeve_length_labels": 9}
    assert all(v[0] == "Invisible" for v in fashionai.VALUES.values())
    assert fashionai.VALUES["sleeve_length_labels"][5] == "3/4 Sleeves"


def test_reads_label_csv(root):
    assert detect_format(root) == "fashionai"
    cat = Catalog.load(root)
    assert cat.ids() == [COLLAR, SKIRT, NECKLINE, SLEEVE, COAT_NO_Y, LAPEL, MERGED]
    assert cat[COLLAR].attributes == {"collar_design": "Peter Pan"}  # the later duplicate row is ignored
    assert cat[COLLAR].image == root / "Images" / f"{COLLAR}.jpg"
    assert cat[SKIRT].attributes == {"skirt_length": "Midi Length"}
    assert cat[NECKLINE].attributes == {}  # Invisible -> unspecified
    assert cat[SLEEVE].attributes == {"sleeve_length": "3/4 Sleeves"}  # 'm' ignored
    assert cat[COAT_NO_Y].attributes == {}
    assert cat[LAPEL].attributes == {"lapel_design": "Plus Size Shawl"}
    assert cat[MERGED].attributes == {"coat_length": "Regular Length", "sleeve_length": "Long Sleeves"}
    assert all(it.split is None for it in cat)
    r = cat.report
    assert dict(r.counts) == {"bad_label": 1, "ambiguous_label": 1, "duplicate_row": 1, "unknown_attribute": 1,
                              "malformed_row": 1}
    for where in ("label.csv line 5", "label.csv line 6", "label.csv line 7", "label.csv line 8", "label.csv line 9"):
        assert any(w.startswith(where) for w in r.warnings), where
    assert cat.schema.attributes == ["skirt_length", "coat_length", "collar_design", "lapel_design", "neck_design",
                                     "neckline_design", "pant_length", "sleeve_length"]
    assert cat.schema.values("sleeve_length") == ("3/4 Sleeves", "Long Sleeves")  # dataset order, present only
    assert cat.schema.values("neckline_design") == ()


def test_keep_invisible(root):
    cat = fashionai.read(root, LoadReport(), keep_invisible=True)
    assert cat[NECKLINE].attributes == {"neckline_design": "Invisible"}
    assert cat.schema.values("neckline_design") == ("Invisible",)


def test_file_paths(root, tmp_path):
    label = root / "Annotations" / "label.csv"
    assert detect_format(label) == "fashionai"
    cat = Catalog.load(label)
    assert cat[COLLAR].image == root / "Images" / f"{COLLAR}.jpg"  # relative to the folder holding Annotations/
    train = tmp_path / "train.csv"
    shutil.copy(label, train)
    assert detect_format(train) == "fashionai"
    assert Catalog.load(train)[COLLAR].image == tmp_path / "Images" / f"{COLLAR}.jpg"


def test_several_annotation_files_and_questions(tmp_path):
    ann = tmp_path / "rank" / "Annotations"
    ann.mkdir(parents=True)
    (ann / "skirt.csv").write_text("Images/skirt_length_labels/a.jpg,skirt_length_labels,nnnnny\n")
    (ann / "question.csv").write_text("Images/collar_design_labels/b.jpg,collar_design_labels,?\n")
    cat = Catalog.load(tmp_path / "rank")
    assert cat.ids() == ["collar_design_labels/b", "skirt_length_labels/a"]  # files read in name order
    assert cat["skirt_length_labels/a"].attributes == {"skirt_length": "Floor Length"}
    assert cat["collar_design_labels/b"].attributes == {} and cat.report.total == 0


def test_end_to_end_summary_with_images(root):
    for iid in (COLLAR, SKIRT):
        p = root / "Images" / f"{iid}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 200, 10)).save(p)
    s = Catalog.load(root).summary()
    assert s["items"] == 7 and s["images"]["found"] == 2 and s["images"]["missing"] == 5
    assert s["attributes"]["coat_length"] == {"n_values": 1, "unspecified": 6, "counts": {"Regular Length": 1}}


def test_no_label_file(tmp_path):
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(CatalogError, match="no FashionAI label file"):
        Catalog.load(tmp_path, format="fashionai")


def test_detection_is_specific(tmp_path):
    assert not fashionai.detect(FIXTURES / "zappos" / "ut-zap50k-data" / "meta-data.csv")
    (tmp_path / "other.csv").write_text("id,image,colour\n1,a.jpg,red\n")
    assert not fashionai.detect(tmp_path / "other.csv")
    others = [m for n, m in READERS.items() if n != "fashionai"]
    assert not any(m.detect(FIXTURE) or m.detect(FIXTURE / "Annotations" / "label.csv") for m in others)
