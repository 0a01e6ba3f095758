import shutil
from pathlib import Path

import pytest
from PIL import Image

from vestis.catalog import Catalog, LoadReport
from vestis.catalog.readers import READERS, detect_format, zappos
from vestis.errors import CatalogError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "zappos"
IDS = ["7965307-5291", "7999255-363731", "8000978-364150", "100627-72", "8133470-5678"]
IMAGES = {"7965307-5291": "Shoes/Oxfords/Bostonian/7965307.5291.jpg",
          "7999255-363731": "Boots/Ankle/Frye/7999255.363731.jpg",
          "8000978-364150": "Sandals/Flat/Teva/8000978.364150.jpg",
          "100627-72": "Shoes/Sneakers and Athletic Shoes/Nike/100627.72.jpg"}


@pytest.fixture
def root(tmp_path):
    dst = tmp_path / "zappos"
    shutil.copytree(FIXTURE, dst)
    for rel in IMAGES.values():
        p = dst / "ut-zap50k-images" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (120, 80, 40)).save(p)
    return dst


def test_reads_meta_data(root):
    assert detect_format(root) == "ut-zappos50k"
    cat = Catalog.load(root)
    assert cat.ids() == IDS
    assert cat["7965307-5291"].attributes == {"category": "Shoes", "subcategory": "Oxfords", "heel_height": "Under 1in",
                                              "closure": "Lace up", "gender": "Men", "material": "Leather",
                                              "toe_style": "Capped Toe"}  # insole "Padded;Removable" unspecified
    boots = cat["7999255-363731"].attributes
    assert "insole" not in boots and "material" not in boots and boots["heel_height"] == "1in - 1 3/4in"
    sneaker = cat["100627-72"].attributes
    assert "heel_height" not in sneaker and "closure" not in sneaker and "gender" not in sneaker
    assert sneaker["subcategory"] == "Sneakers and Athletic Shoes"
    for cid, rel in IMAGES.items():
        assert cat[cid].image == root / "ut-zap50k-images" / rel
    assert cat["8133470-5678"].image is None
    r = cat.report
    assert dict(r.counts) == {"multi_value": 4, "duplicate_id": 1, "missing_id": 1, "malformed_row": 1}
    for where in ("meta-data.csv line 2", "meta-data.csv line 6", "meta-data.csv line 7", "meta-data.csv line 8"):
        assert any(w.startswith(where) for w in r.warnings), where
    assert cat.schema.attributes == list(zappos.ATTRIBUTES)
    assert cat.schema.values("category") == ("Shoes", "Boots", "Sandals", "Slippers")  # by frequency, then name


def test_multi_value_first(root):
    cat = zappos.read(root, LoadReport(), multi_value="first")
    assert cat["7965307-5291"].attributes["insole"] == "Padded"
    assert cat["100627-72"].attributes["gender"] == "Boys" and cat["100627-72"].attributes["closure"] == "Lace up"
    assert cat.report.counts["multi_value"] == 4


def test_end_to_end_summary(root):
    s = Catalog.load(root).summary()
    assert s["items"] == 5 and s["images"] == {"found": 4, "missing": 1, "unreadable": 0,
                                                "missing_ids": ["8133470-5678"], "unreadable_ids": []}


def test_paths_square_images_and_data_folder(root):
    (root / "ut-zap50k-images").rename(root / "ut-zap50k-images-square")
    assert detect_format(root / "ut-zap50k-data") == "ut-zappos50k"
    assert detect_format(root / "ut-zap50k-data" / "meta-data.csv") == "ut-zappos50k"
    cat = Catalog.load(root / "ut-zap50k-data" / "meta-data.csv")
    assert cat["8000978-364150"].image == root / "ut-zap50k-images-square" / IMAGES["8000978-364150"]


def test_no_image_folder(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "z")
    cat = Catalog.load(tmp_path / "z")
    assert len(cat) == 5 and all(it.image is None for it in cat)
    assert cat.report.counts["no_image_folder"] == 1


def test_meta_data_bin(tmp_path):
    (tmp_path / "meta-data-bin.csv").write_text(
        "CID,Category.Shoes,Category.Boots,SubCategory.Oxfords,SubCategory.Ankle,Gender.Men,Gender.Women\n"
        "7965307-5291,1,0,1,0,1,0\n"
        "7999255-363731,0,1,0,1,1,1\n"
        "8000978-364150,0,1,0,1\n")
    assert detect_format(tmp_path) == "ut-zappos50k"
    cat = Catalog.load(tmp_path)
    assert cat.ids() == ["7965307-5291", "7999255-363731"]
    assert cat["7965307-5291"].attributes == {"category": "Shoes", "subcategory": "Oxfords", "gender": "Men"}
    assert cat["7999255-363731"].attributes == {"category": "Boots", "subcategory": "Ankle"}
    assert dict(cat.report.counts) == {"no_image_folder": 1, "multi_value": 1, "malformed_row": 1}


def test_missing_required_column(tmp_path):
    (tmp_path / "meta-data.csv").write_text("CID,Category,HeelHeight\n1-2,Shoes,Flat\n")
    with pytest.raises(CatalogError, match="missing required column.*subcategory"):
        Catalog.load(tmp_path, format="ut-zappos50k")


def test_no_metadata_file(tmp_path):
    with pytest.raises(CatalogError, match="no meta-data.csv"):
        Catalog.load(tmp_path, format="ut-zappos50k")


def test_detection_is_specific():
    others = [m for n, m in READERS.items() if n != "ut-zappos50k"]
    assert not any(m.detect(FIXTURE) or m.detect(FIXTURE / "ut-zap50k-data" / "meta-data.csv") for m in others)
    assert not zappos.detect(FIXTURES / "fashionai" / "base")
