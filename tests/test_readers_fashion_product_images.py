import pytest

from vestis.catalog import Catalog
from vestis.catalog.readers import detect_format
from vestis.catalog.readers.fashion_product_images import derive_pattern
from vestis.errors import CatalogError

STYLES = """id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName
15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt
39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Peter England Men Party Blue Jeans
59263,Women,Accessories,Watches,Watches,Silver,Winter,2016,,Titan Women Silver Watch
21379,Men,Apparel,Bottomwear,Track Pants,Black,,2011,Casual,Manchester United Men Solid Black Track Pants
1855,Men,Apparel,Topwear,Tshirts,Grey,Summer,2011,Casual,Inkfruit Mens Chain Reaction T-shirt,extra
53759,Women,Apparel,Topwear,Tops,Pink,Summer,2012,Casual,Floral Print Top
"""


@pytest.mark.parametrize("name,expected", [
    ("Turtle Check Men Navy Blue Shirt", "checked"),
    ("Floral Print Top", "floral"),
    ("Printed Striped Shirt", "striped"),
    ("Solid Black Track Pants", "solid"),
    ("Graphic Printed T-shirt", "graphic"),
    ("Polka Dot Dress", "polka dot"),
    ("Women Printed Kurta", "printed"),
    ("Checkered Scarf", "checked"),
    ("Puma Men Grey T-shirt", None),
    ("Stripes Socks", "striped"),
    ("Checkmate Watch", None),  # whole words only
])
def test_derive_pattern(name, expected):
    assert derive_pattern(name) == expected


def test_reads_styles_csv(tmp_path):
    (tmp_path / "styles.csv").write_text(STYLES)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "15970.jpg").write_bytes(b"")
    assert detect_format(tmp_path) == "fashion-product-images"
    cat = Catalog.load(tmp_path)
    assert cat.ids() == ["15970", "39386", "59263", "21379", "53759"]
    assert cat.report.counts == {"malformed_row": 1} and "line 6" in cat.report.warnings[0]
    a = cat["15970"].attributes
    assert a == {"gender": "Men", "masterCategory": "Apparel", "subCategory": "Topwear", "articleType": "Shirts",
                 "baseColour": "Navy Blue", "season": "Fall", "usage": "Casual", "pattern": "checked"}
    assert "usage" not in cat["59263"].attributes and "season" not in cat["21379"].attributes
    assert cat["15970"].image == tmp_path / "images" / "15970.jpg"
    assert cat.schema.values("pattern") == ("floral", "checked", "solid")  # defined order, present values
    assert cat.schema.values("gender") == ("Men", "Women")


def test_missing_column(tmp_path):
    (tmp_path / "styles.csv").write_text("id,gender,articleType,productDisplayName\n1,Men,Shirts,x\n")
    with pytest.raises(CatalogError, match="missing required column"):
        Catalog.load(tmp_path, format="fashion-product-images")


@pytest.mark.realdata
def test_real_dataset_counts(real_data_path):
    cat = Catalog.load(real_data_path)
    assert len(cat) == 35486 and cat.report.total == 0
    missing = [it.id for it in cat if not it.image.is_file()]
    assert len(missing) == 17
    assert sum(1 for it in cat if "pattern" in it.attributes) > 5000
