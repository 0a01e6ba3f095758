"""The HTTP API (vestis.serve.app) on the tiny synthetic run of conftest.tiny_pipeline, through FastAPI's
TestClient: every route, and a 4xx with a clear message for every kind of bad input."""

import io
import json
import re
import struct
import threading
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from vestis.cli import main  # noqa: E402
from vestis.engine import Engine  # noqa: E402
from vestis.serve.app import MAX_K, create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(engine):
    return TestClient(create_app(engine))


@pytest.fixture(scope="module")
def query(engine):
    """A query-split item (not in the gallery index) with a known colour, and another colour to ask for."""
    gallery = set(engine.spaces["main"].ids())
    it = next(it for it in engine.catalog
              if engine.catalog.split_of(it.id) == "query" and it.id not in gallery and "colour" in it.attributes)
    new = next(v for v in engine.model.schema.values("colour") if v != it.attributes["colour"])
    return it, new


def _png(w=64, h=80, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def _png_claiming(w: int, h: int) -> bytes:
    """A valid 1x1 PNG whose header claims w x h pixels (CRC fixed): a decompression bomb's header."""
    data = bytearray(_png(1, 1))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


# --- what is loaded ----------------------------------------------------------------------------------
def test_health_and_schema(client, engine):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["run_id"] == engine.info.run_id and h["indexed"] == len(engine.spaces["main"])
    s = client.get("/schema").json()
    assert [a["name"] for a in s["attributes"]] == engine.model.schema.attributes
    assert s["attributes"][1]["values"] == list(engine.model.schema.values("colour"))
    assert s["modes"] == ["manipulate", "same_item", "visual", "attribute:category", "attribute:colour", "attribute:pattern"]
    assert "diverse" in s["unavailable_modes"] and s["predicts_attributes"] and s["explains"]
    assert client.app.state.service.warm_up() is None


def test_openapi_and_docs_need_no_cdn(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/schema", "/items/{item_id}", "/items/{item_id}/image", "/items/{item_id}/explain",
            "/health", "/understand"} <= set(spec["paths"])
    docs = client.get("/docs").text
    refs = re.findall(r'(?:src|href)="([^"]+)"', docs)
    assert refs and all(r.startswith("/") for r in refs), refs
    for r in refs:
        assert client.get(r).status_code == 200, r


def test_web_page_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in refs and "/static/style.css" in refs
    for r in refs:
        assert not r.startswith(("http:", "https:", "//")), r
        if r.startswith("/static/"):
            assert client.get(r).status_code == 200
    js = client.get("/static/app.js").text + client.get("/static/style.css").text
    assert not re.search(r"https?://", js)


# --- items ---------------------------------------------------------------------------------------
def test_browse_find_and_random(client, engine):
    first = client.get("/items", params={"limit": 5}).json()
    assert first["total"] == len(engine.catalog) and len(first["items"]) == 5
    nxt = client.get("/items", params={"limit": 5, "offset": 5}).json()
    assert not {i["id"] for i in first["items"]} & {i["id"] for i in nxt["items"]}
    red = client.get("/items", params={"q": "red", "limit": 500}).json()
    assert red["total"] > 0 and all("red" in " ".join(i["attributes"].values()) for i in red["items"])
    q = client.get("/items", params={"split": "query", "limit": 500}).json()
    assert q["items"] and all(i["split"] == "query" and not i["indexed"] for i in q["items"])
    a = client.get("/items", params={"random": "true", "limit": 3, "seed": 7}).json()
    b = client.get("/items", params={"random": "true", "limit": 3, "seed": 7}).json()
    assert a == b and len(a["items"]) == 3
    assert client.get("/items", params={"limit": 0}).status_code == 422


def test_item_detail_image_and_prediction(client, engine, query):
    it, _ = query
    d = client.get(f"/items/{it.id}").json()
    assert d["attributes"] == it.attributes and d["split"] == "query"
    assert set(d["predicted"]) == set(engine.model.schema.attributes)
    col = d["predicted"]["colour"]
    assert col["top"][0]["value"] == col["value"] and 0 < col["probability"] <= 1
    r = client.get(d["image_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"  # synthetic shots are JPEGs
    assert r.content == Path(it.image).read_bytes()


def test_unknown_items_are_404(client):
    for path in ("/items/nope", "/items/nope/image", "/items/nope/explain"):
        r = client.get(path)
        assert r.status_code == 404 and "unknown item id 'nope'" in r.json()["detail"]
    r = client.post("/search", json={"item_id": "nope"})
    assert r.status_code == 404


def test_path_traversal_in_image_routes(client, engine, query, tmp_path):
    for path in ("/items/..%2F..%2F..%2Fetc%2Fpasswd/image", "/items/%2E%2E/%2E%2E/etc/passwd/image",
                 "/items/..%5C..%5Cetc%5Cpasswd/image", "/static/..%2F..%2F..%2Fetc%2Fpasswd"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert b"root:" not in r.content
    # a catalogue row pointing outside the catalogue's folder is not served either
    it, _ = query
    outside = tmp_path / "secret.png"
    outside.write_bytes(_png())
    svc = client.app.state.service
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(engine.catalog.by_id, it.id, replace(it, image=outside))
        r = client.get(f"/items/{it.id}/image")
        assert r.status_code == 404 and "outside the catalogue's folder" in r.json()["detail"]
        allowed = TestClient(create_app(engine, image_roots=[tmp_path]))  # `vestis serve --image-root DIR`
        assert allowed.get(f"/items/{it.id}/image").content == outside.read_bytes()
        mp.setitem(engine.catalog.by_id, it.id, replace(it, image=Path(it.image).with_suffix(".txt")))
        assert client.get(f"/items/{it.id}/image").status_code == 404
    assert svc.image_roots


# --- search --------------------------------------------------------------------------------------
def test_search_by_item_matches_the_engine(client, engine, query):
    it, new = query
    r = client.post("/search", json={"item_id": it.id, "manipulations": {"colour": new}, "k": 7})
    assert r.status_code == 200, r.text
    d = r.json()
    want = engine.search(item_id=it.id, manipulations={"colour": new}, k=7)
    assert [x["id"] for x in d["results"]] == [h.id for h in want]
    assert [x["rank"] for x in d["results"]] == list(range(1, 8))
    # labels on (the default): the requested colour is a constraint, so every item with it comes first; where fewer
    # than k have it, the closest others follow, and the answer says so
    met = [x["attributes"].get("colour") in (new, None) for x in d["results"]]
    assert d["labels"] == "on" and met == sorted(met, reverse=True) and met[0]
    assert all(met) or ("the closest others follow" in d["note"] and d["note"].startswith("only "))
    for part in (True, False):  # descending scores among the items that meet the request, and among the others
        scores = [x["score"] for x, m in zip(d["results"], met) if m == part]
        assert scores == sorted(scores, reverse=True)
    assert it.id not in [x["id"] for x in d["results"]]
    assert d["target"]["colour"] == {"value": new, "source": "requested"}
    for a in ("category", "pattern"):
        if a in it.attributes:
            assert d["target"][a] == {"value": it.attributes[a], "source": "catalogue"}
    for x in d["results"]:
        assert x["matches"] == {a: x["attributes"].get(a) == t["value"] for a, t in d["target"].items()}
        assert x["n_matched"] == sum(x["matches"].values())
        assert x["image_url"] == f"/items/{x['id']}/image"
    assert d["query"]["item"]["id"] == it.id and set(d["query"]["predicted"]) == {"category", "colour", "pattern"}
    # a flat mode answers one group, whose results are `results`
    assert len(d["groups"]) == 1 and d["groups"][0]["results"] == d["results"] and d["groups"][0]["box"] is None


def test_modes(client, engine, query):
    it, _ = query
    for mode in ("same_item", "visual", "attribute:colour"):
        d = client.post("/search", json={"item_id": it.id, "mode": mode, "k": 5}).json()
        want = engine.search(item_id=it.id, mode=mode, k=5)
        assert [x["id"] for x in d["results"]] == [h.id for h in want], mode
    d = client.post("/search", json={"item_id": it.id, "mode": "attribute:colour", "k": 5}).json()
    assert list(d["target"]) == ["colour"]


def test_filters(client, engine, query):
    it, new = query
    col = next(c for c in engine.model.schema.values("colour")
               if any(engine.catalog[i].attributes.get("colour") == c for i in engine.spaces["main"].ids()))
    d = client.post("/search", json={"item_id": it.id, "filters": {"colour": col}, "k": 50}).json()
    assert d["results"] and all(x["attributes"]["colour"] == col for x in d["results"])
    r = client.post("/search", json={"item_id": it.id, "filters": {"colour": "plaid"}})
    assert r.status_code == 400 and "valid values" in r.json()["detail"]
    r = client.post("/search", json={"item_id": it.id, "filters": {"smell": "nice"}})
    assert r.status_code == 400 and "valid attributes" in r.json()["detail"]


def test_text_request(client, engine, query):
    it, _ = query
    r = client.post("/search", json={"item_id": it.id, "text": "same but navy blue, for women", "k": 6})
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["understood"]["manipulations"] == {"colour": "navy blue"}
    assert d["understood"]["unmatched"] == ["women"]  # no gender in this catalogue: said, not ignored
    assert d["manipulations"] == {"colour": "navy blue"}
    want = engine.search(item_id=it.id, manipulations={"colour": "navy blue"}, k=6)
    assert [x["id"] for x in d["results"]] == [h.id for h in want]
    u = client.get("/understand", params={"text": "polka dots"}).json()
    assert u["manipulations"] == {"pattern": "polka dots"}


@pytest.mark.parametrize("body, status, message", [
    ({"text": "for women"}, 400, "could not map 'for women' onto any attribute value"),
    ({"text": "red", "manipulations": {"colour": "blue"}}, 400, "the text asks for colour=red but manipulations set colour=blue"),
    ({"text": "red", "mode": "visual"}, 400, "only mode 'manipulate'"),
    ({"manipulations": {"sleeves": "long"}}, 400, "unknown attribute 'sleeves'; valid attributes: category, colour, pattern"),
    ({"manipulations": {"colour": "navy"}}, 400, "unknown value 'navy' for attribute 'colour'; valid values: black"),
    ({"manipulations": {"colour": "red"}, "mode": "visual"}, 400, "does not take manipulations"),
    ({"mode": "diverse"}, 400, "mode 'diverse' is not available"),
    ({"mode": "psychic"}, 400, "unknown mode 'psychic'; this run (model attribute_baseline) answers: manipulate, same_item"),
    ({"mode": "attribute:smell"}, 400, "attribute:colour"),
    ({"k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ({"k": MAX_K + 1}, 422, f"k: Input should be less than or equal to {MAX_K}"),
    ({"k": "many"}, 422, "k: Input should be a valid integer"),
    ({"colour": "red"}, 422, "colour: Extra inputs are not permitted"),
])
def test_bad_search_requests(client, query, body, status, message):
    it, _ = query
    r = client.post("/search", json={"item_id": it.id, **body})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_unknown_value_error_lists_valid_values_as_data(client, query):
    it, _ = query
    d = client.post("/search", json={"item_id": it.id, "manipulations": {"colour": "navy"}}).json()
    assert d["attribute"] == "colour" and "navy blue" in d["valid"]


def test_malformed_bodies(client, query):
    assert client.post("/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/search", json=["item"]).status_code == 400
    r = client.post("/search", content=b"item_id=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/search", json={})
    assert r.status_code == 400 and "exactly one query" in r.json()["detail"]


# --- uploads -------------------------------------------------------------------------------------
def test_upload_search_equals_item_search(client, query):
    it, new = query
    files = {"image": ("q.jpg", Path(it.image).read_bytes(), "image/jpeg")}
    # vision only: an item query's own catalogue labels would be its preferences with labels on, a photo's are not
    r = client.post("/search", files=files, data={"manipulations": json.dumps({"colour": new}), "k": "5",
                                                  "labels": "off"})
    assert r.status_code == 200, r.text
    d = r.json()
    by_item = client.post("/search", json={"item_id": it.id, "manipulations": {"colour": new}, "k": 5,
                                           "labels": "off"}).json()
    assert d["labels"] == by_item["labels"] == "off"
    # the same ranking up to near-ties (uploads are encoded in float32, cached maps are float16)
    assert [x["score"] for x in d["results"]] == pytest.approx([x["score"] for x in by_item["results"]], abs=1e-2)
    assert len({x["id"] for x in d["results"]} & {x["id"] for x in by_item["results"]}) >= 4
    assert d["query"]["item"] is None and d["query"]["upload"]["bytes"] == len(files["image"][1])
    # the same predictions; probabilities agree to the float16 precision of the cached maps (uploads are encoded fresh)
    up, cached = d["query"]["predicted"], by_item["query"]["predicted"]
    assert up.keys() == cached.keys()
    for a in up:
        assert up[a]["value"] == cached[a]["value"]
        assert up[a]["probability"] == pytest.approx(cached[a]["probability"], abs=2e-3)
    assert all(t["source"] in ("predicted", "requested") for t in d["target"].values())
    r = client.post("/search", files=files, data={"text": "in red"})
    assert r.status_code == 200 and r.json()["manipulations"] == {"colour": "red"}


def test_upload_crop_answers_the_box_searched(client, query):
    import io

    import numpy as np
    from PIL import Image

    it, _ = query
    bg = np.clip(np.random.default_rng(1).normal(150, 8, (300, 400, 3)), 0, 255).astype(np.uint8)
    photo = Image.fromarray(bg)
    photo.paste(Image.open(it.image).convert("RGB").resize((120, 150)), (150, 80))
    buf = io.BytesIO()
    photo.save(buf, "JPEG", quality=92)
    files = {"image": ("phone.jpg", buf.getvalue(), "image/jpeg")}
    on = client.post("/search", files=files, data={"crop": "on", "k": "5"}).json()
    x0, y0, x1, y1 = on["query"]["upload"]["crop"]
    assert x0 <= 155 and y0 <= 85 and x1 >= 265 and y1 >= 225 and (x1 - x0) * (y1 - y0) < 0.6 * 400 * 300
    off = client.post("/search", files=files, data={"k": "5"}).json()  # the API's default: the whole photo
    assert off["query"]["upload"]["crop"] is None
    r = client.post("/search", files=files, data={"crop": "maybe"})
    assert r.status_code == 422


def test_bad_uploads(client, query):
    it, _ = query
    cases = [
        (("notes.txt", b"hello, not an image", "text/plain"), 422, "not an image"),
        (("empty.png", b"", "image/png"), 422, "empty"),
        (("cut.jpg", Path(it.image).read_bytes()[:400], "image/jpeg"), 422, "image"),
        (("bomb.png", _png_claiming(40000, 40000), "image/png"), 413, "over the pixel limit"),
        (("bomb2.png", _png_claiming(5000, 5000), "image/png"), 413, "5000x5000 pixels, over the limit of 20000000"),
    ]
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    cases.append((("x.tiff", buf.getvalue(), "image/tiff"), 422, "format TIFF is not accepted"))
    for upload, status, message in cases:
        r = client.post("/search", files={"image": upload})
        assert r.status_code == status, (upload[0], r.text)
        assert message in r.json()["detail"], (upload[0], r.text)
    r = client.post("/search", files={"image": ("q.png", _png(), "image/png")}, data={"item_id": it.id})
    assert r.status_code == 400 and "exactly one query" in r.json()["detail"]
    r = client.post("/search", files={"image": ("q.png", _png(), "image/png")}, data={"manipulations": "{colour"})
    assert r.status_code == 400 and "must be a JSON object" in r.json()["detail"]
    r = client.post("/search", files={"image": ("q.png", _png(), "image/png")}, data={"price": "1"})
    assert r.status_code == 422 and "unknown form field 'price'" in r.json()["detail"]


def test_upload_limits(engine):
    c = TestClient(create_app(engine, max_upload_bytes=20_000, max_pixels=500_000))
    big = _png(1000, 1000)  # a flat colour: few bytes, many pixels (a small decompression bomb)
    assert len(big) < 20_000
    r = c.post("/search", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "1000x1000 pixels, over the limit of 500000" in r.json()["detail"]
    noisy = Image.effect_noise((200, 200), 64).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, format="PNG")
    assert len(buf.getvalue()) > 100_000
    r = c.post("/search", files={"image": ("noisy.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(100):
            yield b"x" * 1000

    r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]
    assert c.get("/health").status_code == 200  # the server is still fine


# --- explanations and other runs -----------------------------------------------------------------
def test_explain_overlay(client, query):
    it, _ = query
    r = client.get(f"/items/{it.id}/explain")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "PNG" and im.width > 300 and im.height > 100
    assert client.get(f"/items/{it.id}/explain").content == r.content  # cached, deterministic


def test_explain_an_upload(client, query):
    it, _ = query
    r = client.post("/explain", files={"image": ("q.jpg", Path(it.image).read_bytes(), "image/jpeg")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == Image.open(io.BytesIO(client.get(f"/items/{it.id}/explain").content)).size
    r = client.post("/explain", files={"image": ("x.txt", b"not an image", "text/plain")})
    assert r.status_code == 422 and "not an image" in r.json()["detail"]
    r = client.post("/explain", files={"image": ("bomb.png", _png_claiming(6000, 6000), "image/png")})
    assert r.status_code == 413
    assert client.post("/explain", json={"item_id": it.id}).status_code == 415


def test_explain_one_attribute(client, query):
    it, _ = query
    whole = Image.open(io.BytesIO(client.get(f"/items/{it.id}/explain").content))
    r = client.get(f"/items/{it.id}/explain", params={"attribute": "colour"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    one = Image.open(io.BytesIO(r.content))
    assert one.width < whole.width  # one panel instead of one per attribute
    r = client.get(f"/items/{it.id}/explain", params={"attribute": "neckline"})
    assert r.status_code == 400 and "colour" in r.json()["detail"]  # names the valid attributes
    photo = Path(it.image).read_bytes()
    r = client.post("/explain", files={"image": ("q.jpg", photo, "image/jpeg")}, data={"attribute": "colour"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == one.size
    r = client.post("/explain", files={"image": ("q.jpg", photo, "image/jpeg")}, data={"k": "3"})
    assert r.status_code == 422 and "attribute" in r.json()["detail"]


@pytest.fixture(scope="module")
def agmlan_client(tiny_pipeline, train_tiny):
    root, cat, run, idx, cache = tiny_pipeline
    arun, aidx = root / "serve-agmlan-run", root / "serve-agmlan-idx"
    if not (aidx / "engine.json").is_file():
        train_tiny(root, cat, "agmlan", {"low": 8, "high": 8, "attention": 8, "attr_embed": 8, "dim": 8, "epochs": 1,
                                        "triplets_per_batch": 16, "attributes": ["category", "colour", "pattern"]},
                  cache, name="serve-agmlan-run")
        assert main(["index", "--run", str(arun), "--catalog", str(cat), "--out", str(aidx), "--split", "gallery",
                     "--cache", str(cache)]) == 0
    return TestClient(create_app(Engine.load(arun, aidx, cache_dir=cache)))


def test_similar_in_one_attribute_with_agmlan(agmlan_client, query):
    """AG-MLAN ranks `attribute:<name>` in that attribute's own space, and shows that attribute's attention map."""
    it, _ = query
    s = agmlan_client.get("/schema").json()
    assert "attribute:colour" in s["modes"] and "manipulate" not in s["modes"] and s["explains"]
    d = agmlan_client.post("/search", json={"item_id": it.id, "mode": "attribute:colour", "k": 5}).json()
    assert len(d["results"]) == 5 and [g["label"] for g in d["groups"]] == ["colour"]
    assert all(h["attributes"].get("colour") for h in d["results"])  # candidates: items with a known colour
    engine = agmlan_client.app.state.service.engine
    maps = engine.item_maps([it.id])
    want = engine.model.embed(maps, "attr_colour").numpy()[0]
    got = [h["score"] for h in d["results"]]
    ids = [h["id"] for h in d["results"]]
    vecs = engine.model.embed(engine.item_maps(ids), "attr_colour").numpy()
    assert np.allclose(vecs @ want, got, atol=1e-4)  # the scores are cosines in the colour space
    r = agmlan_client.get(f"/items/{it.id}/explain", params={"attribute": "colour"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "PNG"


@pytest.fixture(scope="module")
def visual_client(tiny_pipeline):
    root, cat, run, idx, cache = tiny_pipeline
    vrun, vidx = root / "serve-visual-run", root / "serve-visual-idx"
    if not (vidx / "engine.json").is_file():
        assert main(["train", "--model", "visual", "--catalog", str(cat), "--out", str(vrun), "--cache", str(cache)]) == 0
        assert main(["index", "--run", str(vrun), "--catalog", str(cat), "--out", str(vidx), "--split", "gallery",
                     "--cache", str(cache)]) == 0
    return TestClient(create_app(Engine.load(vrun, vidx, cache_dir=cache)))


def test_a_run_without_classifiers_or_explanations(visual_client, query):
    it, _ = query
    s = visual_client.get("/schema").json()
    assert "manipulate" not in s["modes"] and not s["explains"] and not s["predicts_attributes"]
    r = visual_client.get(f"/items/{it.id}/explain")
    assert r.status_code == 400 and "has no explanation maps" in r.json()["detail"]
    r = visual_client.post("/explain", files={"image": ("q.jpg", Path(it.image).read_bytes(), "image/jpeg")})
    assert r.status_code == 400 and "has no explanation maps" in r.json()["detail"]
    r = visual_client.post("/search", json={"item_id": it.id, "manipulations": {"colour": "red"}})
    assert r.status_code == 400 and "cannot apply manipulations" in r.json()["detail"]
    d = visual_client.post("/search", json={"item_id": it.id, "mode": "visual", "k": 3}).json()
    assert len(d["results"]) == 3 and d["query"]["predicted"] is None
    assert visual_client.get(f"/items/{it.id}").json()["predicted"] is None


@pytest.fixture(scope="module")
def parts_client(tiny_pipeline, parts_pipeline):
    """The `parts` run (diverse mode) on the tiny pipeline's catalogue, served."""
    prun, pidx = parts_pipeline
    return TestClient(create_app(Engine.load(prun, pidx, cache_dir=tiny_pipeline[-1])))


def _check_groups(d, engine, size):
    """Groups of a diverse answer: each a predicted category, its box inside the query photo, items once overall."""
    groups = d["groups"]
    assert groups and d["query"]["size"] == list(size)
    categories = set(engine.model.schema.values("category"))
    seen = []
    for g in groups:
        assert g["label"] in categories and 0 < g["score"] <= 1 and g["results"]
        x0, y0, x1, y1 = g["box"]
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
        seen += [h["id"] for h in g["results"]]
    assert len(seen) == len(set(seen))  # de-duplicated across groups
    assert sorted(h["id"] for h in d["results"]) == sorted(seen)  # the merged list reads every group
    assert [g["score"] for g in groups] == sorted((g["score"] for g in groups), reverse=True)


def test_diverse_mode_answers_groups(parts_client, query):
    it, _ = query
    engine = parts_client.app.state.service.engine
    assert "diverse" in parts_client.get("/schema").json()["modes"]
    r = parts_client.post("/search", json={"item_id": it.id, "mode": "diverse", "k": 4})
    assert r.status_code == 200, r.text
    d = r.json()
    with Image.open(it.image) as im:
        _check_groups(d, engine, im.size)
    assert all(len(g["results"]) <= 4 for g in d["groups"])
    # an outfit photo, uploaded: the same, boxes in the upload's pixels
    outfit = next(x for x in engine.catalog if x.parts)
    data = Path(outfit.image).read_bytes()
    r = parts_client.post("/search", files={"image": ("outfit.jpg", data, "image/jpeg")}, data={"mode": "diverse", "k": "3"})
    assert r.status_code == 200, r.text
    with Image.open(outfit.image) as im:
        _check_groups(r.json(), engine, im.size)
    # other modes of the run still answer one list without boxes
    d = parts_client.post("/search", json={"item_id": it.id, "mode": "same_item", "k": 3}).json()
    assert len(d["groups"]) == 1 and d["groups"][0]["box"] is None and d["query"]["size"] is None


def test_concurrent_requests_all_answer(client, query):
    it, new = query
    statuses = []

    def hit(i):
        body = {"item_id": it.id, "manipulations": {"colour": new} if i % 2 else {}, "k": 5}
        statuses.append(client.post("/search", json=body).status_code)

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert statuses == [200] * 16


# --- the command line ----------------------------------------------------------------------------
def test_vestis_serve_command(tiny_pipeline, capsys):
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    root, cat, run, idx, cache = tiny_pipeline
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["serve", "--run", str(run), "--index", str(idx), "--catalog", str(cat), "--port", str(port),
                "--cache", str(cache)]
        assert main(args) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "vestis.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in first, first
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.time() < deadline and proc.poll() is None, "vestis serve did not come up"
                time.sleep(0.2)
        assert r.json()["status"] == "ok"
        assert "vestis" in httpx.get(f"http://127.0.0.1:{port}/").text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
