"""Augmented views of single photos (vestis.vision.augmented_views, `vestis views`): a same-product catalogue made
from fashion-product-images' images_hr/ copies. Format fixture: a tiny fake dataset layout; the real-data test
skips when the dataset is absent."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vestis.catalog import Catalog, assign_split
from vestis.cli import main
from vestis.errors import CatalogError, VestisError
from vestis.eval.queries import same_item_queries
from vestis.vision.augment import shopper_view
from vestis.vision.augmented_views import validation_catalogue, view_seed, write_augmented_views

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"
TYPES = [("Apparel", "Topwear", "Tshirts"), ("Footwear", "Shoes", "Casual Shoes"), ("Accessories", "Watches", "Watches")]


def _ids_by_split(n_train, n_query, n_gallery):
    want = {"train": n_train, "query": n_query, "gallery": n_gallery}
    got = {k: [] for k in want}
    i = 1000
    while any(len(got[k]) < want[k] for k in want):
        s = assign_split(str(i))
        if len(got[s]) < want[s]:
            got[s].append(str(i))
        i += 1
    return got


def _photo(size, colour):
    im = Image.new("RGB", size, (255, 255, 255))
    w, h = size
    ImageDraw.Draw(im).rectangle([w // 4, h // 5, 3 * w // 4, 4 * h // 5], fill=colour)
    return im


@pytest.fixture
def fake_fpi(tmp_path):
    """styles.csv + images/ (60 x 80) + images_hr/ (90 x 120) for 3 train, 2 query, 2 gallery products; one more
    train product and one gallery product without a sharper copy."""
    ids = _ids_by_split(4, 2, 2)
    root = tmp_path / "fpi"
    (root / "images").mkdir(parents=True)
    (root / "images_hr").mkdir()
    rows = []
    every = ids["train"] + ids["query"] + ids["gallery"]
    for n, i in enumerate(every):
        m, s, a = TYPES[n % 3]
        rows.append(f"{i},Men,{m},{s},{a},Blue,Summer,2012,Casual,Test Product {i}\n")
        colour = (40 * n % 255, 90, 200 - 20 * n % 200)
        _photo((60, 80), colour).save(root / "images" / f"{i}.jpg")
        if i not in (ids["train"][3], ids["gallery"][1]):
            _photo((90, 120), colour).save(root / "images_hr" / f"{i}.jpg")
    (root / "styles.csv").write_text(HEADER + "".join(rows))
    return root, ids


def test_catalogue_layout(fake_fpi, tmp_path):
    root, ids = fake_fpi
    counts = write_augmented_views(Catalog.load(root), tmp_path / "out", views=3, query_views=2, progress=False)
    assert counts["train products"] == 3 and counts["query products"] == 2 and counts["gallery photos"] == 2
    assert counts["train products without images_hr"] == 1 and counts["train views"] == 9
    aug = Catalog.load(tmp_path / "out" / "augmented.jsonl")
    xres = Catalog.load(tmp_path / "out" / "cross-resolution.jsonl")
    train = aug.split("train")
    # each train product: its catalogue photo + 3 views, one instance id (the product's)
    for p in ids["train"][:3]:
        members = [it for it in train if it.instance_id == p]
        assert sorted(it.id for it in members) == sorted([p] + [f"{p}~v{k}" for k in (1, 2, 3)])
        assert all(it.attributes == aug[p].attributes for it in members)
    assert ids["train"][3] not in aug  # no sharper copy: nothing to make a view of
    # the catalogue photos are read in place (absolute paths into the dataset), views are written under out/
    assert aug[ids["train"][0]].image == (root / "images" / f"{ids['train'][0]}.jpg").resolve()
    assert aug[f"{ids['train'][0]}~v1"].image.parent == (tmp_path / "out" / "views").resolve()
    assert Image.open(aug[f"{ids['train'][0]}~v1"].image).size == (90, 120)
    # gallery: the gallery products' and the query products' own 60 x 80 photos
    assert sorted(it.id for it in aug.split("gallery")) == sorted(ids["gallery"] + ids["query"])
    assert sorted(it.id for it in xres.split("gallery")) == sorted(ids["gallery"] + ids["query"])
    # queries: augmented views, or the images_hr photo as it is
    assert sorted(it.id for it in aug.split("query")) == sorted(f"{p}~q{k}" for p in ids["query"] for k in (1, 2))
    assert sorted(it.id for it in xres.split("query")) == sorted(f"{p}~hr" for p in ids["query"])
    assert xres[f"{ids['query'][0]}~hr"].image == (root / "images_hr" / f"{ids['query'][0]}.jpg").resolve()
    # protocol 3 reads it unchanged: every query has its product's photo in the gallery
    qs, c = same_item_queries(aug)
    assert c == {"queries": 4, "instances": 2, "no_gallery_view": 0, "no_instance_id": 0}
    assert {q["target"]["instance_id"] for q in qs} == set(ids["query"])
    assert same_item_queries(xres)[1]["queries"] == 2


def test_validation_slice_holds_out_train_products(fake_fpi, tmp_path):
    """validation.jsonl: train products held out as queries (their first views) against their own 60x80 photo in
    the gallery; the query split never appears, the other train products still train."""
    root, ids = fake_fpi
    counts = write_augmented_views(Catalog.load(root), tmp_path / "out", views=3, query_views=2,
                                   validation_products=1, progress=False)
    assert counts["validation products (held out of train)"] == 1
    val = Catalog.load(tmp_path / "out" / "validation.jsonl")
    aug = Catalog.load(tmp_path / "out" / "augmented.jsonl")
    (held,) = {it.instance_id for it in val.split("query")}
    assert held in ids["train"][:3]
    assert sorted(it.id for it in val.split("query")) == [f"{held}~v1", f"{held}~v2"]
    assert f"{held}~v3" not in val
    assert sorted(it.id for it in val.split("gallery")) == sorted(ids["gallery"] + ids["query"] + [held])
    assert sorted(it.id for it in val.split("train")) == sorted(
        it.id for it in aug.split("train") if it.instance_id != held)
    assert not any("~q" in i for i in val.ids())
    qs, c = same_item_queries(val)
    assert c["queries"] == 2 and c["no_gallery_view"] == 0
    # seeded: the same choice again, another with another seed among the 3 products eventually
    assert validation_catalogue(aug, 1).ids() == val.ids()
    assert len({validation_catalogue(aug, 1, seed=s).split("query").ids()[0].split("~")[0] for s in range(8)}) > 1
    with pytest.raises(VestisError, match="validation products"):
        validation_catalogue(aug, 3)


def test_views_are_seeded_and_stable(fake_fpi, tmp_path):
    root, ids = fake_fpi
    src = Catalog.load(root)
    write_augmented_views(src, tmp_path / "a", views=2, query_views=1, seed=5, progress=False)
    write_augmented_views(src, tmp_path / "b", views=2, query_views=1, seed=5, progress=False)
    write_augmented_views(src, tmp_path / "c", views=2, query_views=1, seed=6, progress=False)
    names = sorted(p.name for p in (tmp_path / "a" / "views").iterdir())
    assert len(names) == 3 * 2 + 2 * 1
    for n in names:
        assert (tmp_path / "a" / "views" / n).read_bytes() == (tmp_path / "b" / "views" / n).read_bytes()
    assert any((tmp_path / "a" / "views" / n).read_bytes() != (tmp_path / "c" / "views" / n).read_bytes()
               for n in names)
    # a view is the product's sharper copy through shopper_view with its own seed
    p = ids["train"][0]
    v = np.asarray(Image.open(tmp_path / "a" / "views" / f"{p}~v1.jpg")).astype(int)
    want = np.asarray(shopper_view(Image.open(root / "images_hr" / f"{p}.jpg"), view_seed(5, p, "v1"), crop=0.15))
    assert np.abs(v - want.astype(int)).mean() < 2  # only the final JPEG pass differs
    assert view_seed(0, "1", "v1") != view_seed(0, "1", "v2") != view_seed(1, "1", "v1")


def test_errors(fake_fpi, tmp_path):
    root, _ = fake_fpi
    src = Catalog.load(root)
    with pytest.raises(VestisError, match="views"):
        write_augmented_views(src, tmp_path / "o", views=0, progress=False)
    with pytest.raises(VestisError, match="crop"):
        write_augmented_views(src, tmp_path / "o", crop=1.0, progress=False)
    with pytest.raises(CatalogError, match="images_hr"):
        write_augmented_views(src, tmp_path / "o", hr_dir=tmp_path / "nowhere", progress=False)


def test_cli(fake_fpi, tmp_path, capsys):
    root, _ = fake_fpi
    assert main(["views", "--catalog", str(root), "--out", str(tmp_path / "o"), "--views", "2"]) == 0
    out = capsys.readouterr().out
    assert "not a multi-view dataset" in out and "train views: 6" in out
    assert main(["views", "--catalog", str(root), "--out", str(tmp_path / "o"), "--crop", "2"]) == 2
    assert "crop must be in [0, 1)" in capsys.readouterr().err


def test_shopper_view_crop_frames_tighter():
    im = _photo((120, 160), (20, 30, 160))
    assert np.array_equal(np.asarray(shopper_view(im, 3)), np.asarray(shopper_view(im, 3, crop=0.0)))
    with pytest.raises(ValueError):
        shopper_view(im, 3, crop=-0.1)

    def blue(v):
        v = np.asarray(v).astype(int)
        return (v[..., 2] - v[..., 0] > 60).mean()

    loose = np.mean([blue(shopper_view(im, s)) for s in range(12)])
    tight = np.mean([blue(shopper_view(im, s, crop=0.4)) for s in range(12)])
    assert tight > loose * 1.1  # a tighter framing: the garment fills more of the frame


def test_real_images_hr(real_data_path, tmp_path):
    src = Catalog.load(real_data_path)
    hr = {p.stem for p in (real_data_path / "images_hr").iterdir()}
    assert len(hr) == 2354 and hr <= set(src.ids())
    keep = sorted(i for i in hr if src.split_of(i) == "train")[:3] + sorted(i for i in hr if src.split_of(i) == "query")[:2]
    gallery = sorted(it.id for it in src.split("gallery"))[:2]
    part = src.filter(lambda it: it.id in set(keep) | set(gallery))
    counts = write_augmented_views(part, tmp_path / "o", views=1, query_views=1, progress=False)
    assert counts["train products"] == 3 and counts["query products"] == 2
    aug = Catalog.load(tmp_path / "o" / "augmented.jsonl")
    assert Image.open(aug[f"{keep[0]}~v1"].image).size == Image.open(real_data_path / "images_hr" / f"{keep[0]}.jpg").size
    assert aug[keep[0]].image == (real_data_path / "images" / f"{keep[0]}.jpg").resolve()


def test_end_to_end_same_product_and_category_levels(fake_fpi, tmp_path, train_tiny, capsys):
    """views -> global_embed (OC+IS) -> gallery index -> same-item queries -> search -> eval, with the category
    classification at articleType and at the coarser levels (Park et al. Table 2)."""
    import json

    root, ids = fake_fpi
    out, cache = tmp_path / "o", tmp_path / "cache"
    assert main(["views", "--catalog", str(root), "--out", str(out), "--views", "3"]) == 0
    cat = out / "augmented.jsonl"
    run = train_tiny(tmp_path, cat, "global_embed", {"epochs": 2, "width": 16, "dim": 8, "p": 2, "k": 2,
                                                     "batch_size": 8}, cache)
    assert json.loads((run / "run.json").read_text())["config"]["category_attribute"] == "articleType"
    idx, q, r = tmp_path / "idx", tmp_path / "q.jsonl", tmp_path / "r.jsonl"
    assert main(["index", "--run", str(run), "--catalog", str(cat), "--out", str(idx), "--split", "gallery",
                 "--kind", "flat", "--cache", str(cache)]) == 0
    assert main(["queries", "--catalog", str(cat), "--protocol", "same_item", "--out", str(q)]) == 0
    assert main(["search", "--run", str(run), "--index", str(idx), "--queries", str(q), "--output", str(r),
                 "--labels", "off", "--cache", str(cache)]) == 0
    capsys.readouterr()
    assert main(["eval", "--queries", str(q), "--rankings", str(r), "--catalog", str(cat), "--run", str(run),
                 "--views", "augmented views of single photos", "--no-curve", "--classify", "--cache", str(cache),
                 "--report", str(tmp_path / "rep")]) == 0
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    same = rep["same_item"]
    assert same["n_scored"] == 4 and same["views"] == "augmented views of single photos"
    assert same["recall_at_k"]["50"] == 1.0  # 4 gallery photos: every query finds its product in the top 50
    cls, levels = rep["classification"], rep["classification_levels"]
    assert cls["n"] == 4 and cls["split"] == "query" and set(levels) == {"subCategory", "masterCategory"}
    for level in levels.values():
        assert level["n"] == 4 and 0 <= level["top_k"]["1"] <= level["top_k"]["3"] <= 1
    # a coarse level has fewer classes, and in this fixture each articleType has one subCategory, so the coarse
    # top-1 is at least the fine one (a right articleType is a right subCategory)
    assert levels["subCategory"]["n_classes"] == 3 and levels["subCategory"]["top_k"]["1"] >= cls["top_k"]["1"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Category classification by level" in md and "masterCategory Top-5" in md


def test_packshot_views_add_products_without_images_hr(fake_fpi, tmp_path):
    root, ids = fake_fpi
    counts = write_augmented_views(Catalog.load(root), tmp_path / "o", views=2, query_views=1, packshot_views=2,
                                   progress=False)
    p = ids["train"][3]  # the train product without a sharper copy
    assert counts["train products with views of the 60x80 photo"] == 1 and counts["train views"] == 3 * 2 + 2
    aug = Catalog.load(tmp_path / "o" / "augmented.jsonl")
    assert sorted(it.id for it in aug.split("train") if it.instance_id == p) == [p, f"{p}~p1", f"{p}~p2"]
    assert Image.open(aug[f"{p}~p1"].image).size == (60, 80)  # a view of the 60 x 80 photo
    assert ids["gallery"][1] in aug and f"{ids['gallery'][1]}~p1" not in aug  # only train products
    none = write_augmented_views(Catalog.load(root), tmp_path / "n", views=1, query_views=1, packshot_views=1,
                                 packshot_products=0, progress=False)
    assert "train products with views of the 60x80 photo" not in none
