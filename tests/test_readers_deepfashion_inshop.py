import shutil
from pathlib import Path

import pytest
from PIL import Image

from vestis.catalog import Catalog
from vestis.catalog.readers import READERS, deepfashion_inshop, detect_format
from vestis.errors import CatalogError

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE = FIXTURES / "deepfashion_inshop"
IDS = ["WOMEN/Dresses/id_00000002/02_1_front", "WOMEN/Dresses/id_00000002/02_2_side",
       "MEN/Denim/id_00000080/01_1_front", "MEN/Denim/id_00000080/01_7_additional",
       "WOMEN/Blouses_Shirts/id_00000001/02_1_front"]


@pytest.fixture
def root(tmp_path):
    dst = tmp_path / "In-shop Clothes Retrieval Benchmark"
    shutil.copytree(FIXTURE, dst)
    return dst


def test_reads_inshop(root):
    assert detect_format(root) == "deepfashion-inshop"
    cat = Catalog.load(root)
    assert cat.ids() == IDS
    front = cat["WOMEN/Dresses/id_00000002/02_1_front"]
    assert front.attributes == {"gender": "Women", "category": "Dresses", "clothes_type": "full-body",
                                "pose_type": "frontal"}
    assert front.instance_id == "id_00000002" and front.split == "train"
    assert front.box == (50.0, 49.0, 208.0, 235.0)
    assert front.image == root / "img" / "WOMEN" / "Dresses" / "id_00000002" / "02_1_front.jpg"
    assert cat["WOMEN/Dresses/id_00000002/02_2_side"].attributes["pose_type"] == "side"
    q = cat["MEN/Denim/id_00000080/01_1_front"]
    assert q.split == "query" and q.attributes == {"gender": "Men", "category": "Denim", "clothes_type": "lower-body",
                                                    "pose_type": "frontal"}
    extra = cat["MEN/Denim/id_00000080/01_7_additional"]  # pose 9 unknown: box kept, types dropped
    assert extra.split == "gallery" and extra.box == (20.0, 30.0, 200.0, 240.0)
    assert extra.attributes == {"gender": "Men", "category": "Denim"}
    blouse = cat["WOMEN/Blouses_Shirts/id_00000001/02_1_front"]  # malformed bbox row
    assert blouse.box is None and "clothes_type" not in blouse.attributes
    assert [cat.split_of(i) for i in IDS] == ["train", "train", "query", "gallery", "gallery"]
    assert len(cat.split("query")) == 1 and len(cat.split("gallery")) == 2
    r = cat.report
    assert dict(r.counts) == {"bad_split": 1, "duplicate_id": 1, "bad_type": 1, "malformed_row": 1}
    for where in ("list_eval_partition.txt line 8", "list_eval_partition.txt line 9", "list_bbox_inshop.txt line 6",
                  "list_bbox_inshop.txt line 7"):
        assert any(w.startswith(where) for w in r.warnings), where
    assert cat.schema.values("gender") == ("Women", "Men")
    assert cat.schema.values("category") == ("Blouses_Shirts", "Denim", "Dresses")
    assert cat.schema.values("clothes_type") == ("lower-body", "full-body")
    assert cat.schema.values("pose_type") == ("frontal", "side")


def test_partition_file_path_and_flat_layout(tmp_path, root):
    assert detect_format(root / "Eval" / "list_eval_partition.txt") == "deepfashion-inshop"
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(root / "Eval" / "list_eval_partition.txt", flat)
    assert detect_format(flat) == "deepfashion-inshop"  # told apart by its 3-column header alone
    cat = Catalog.load(flat)
    assert cat.ids() == IDS and all(it.box is None for it in cat)
    assert cat["WOMEN/Dresses/id_00000002/02_1_front"].attributes == {"gender": "Women", "category": "Dresses"}


def test_end_to_end_summary_with_images(root):
    for name in IDS[:2]:
        p = root / "img" / f"{name}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 10, 200)).save(p)
    s = Catalog.load(root).summary()
    assert s["items"] == 5 and s["instances"] == 3
    assert s["splits"] == {"train": 2, "gallery": 2, "query": 1}
    assert s["images"]["found"] == 2 and s["images"]["missing"] == 3


def test_missing_partition(root):
    (root / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(CatalogError, match="no list_eval_partition.txt"):
        Catalog.load(root, format="deepfashion-inshop")


def test_attribute_benchmark_partition_rejected(tmp_path):
    shutil.copytree(FIXTURES / "deepfashion_attributes" / "Eval", tmp_path / "Eval")
    assert not deepfashion_inshop.detect(tmp_path)
    with pytest.raises(CatalogError, match="image_name item_id evaluation_status"):
        Catalog.load(tmp_path, format="deepfashion-inshop")


def test_detection_is_specific():
    assert not deepfashion_inshop.detect(FIXTURES / "deepfashion_attributes")
    others = [m for n, m in READERS.items() if n != "deepfashion-inshop"]
    assert not any(m.detect(FIXTURE) for m in others)
