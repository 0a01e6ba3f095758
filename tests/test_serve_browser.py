"""The web page, end to end in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium) against a
server on the tiny synthetic run: pick a query, change an attribute, check the results change and their badges
tell the truth, type a request, refine by clicking a result, undo, open an explanation, upload a photo.

Chromium comes from the system: when /usr/bin/chromium is missing and this runs as root with apt-get, the
fixture installs the Debian package `chromium` (what `make browser` does); only where that is impossible is
the test skipped, with the reason."""

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("VESTIS_CHROMIUM", "/usr/bin/chromium"))


def _ensure_chromium() -> str | None:
    """None when Chromium is there (installing it if we can), else why not."""
    if CHROMIUM.is_file():
        return None
    if not shutil.which("apt-get"):
        return f"{CHROMIUM} is missing and there is no apt-get to install the Debian package 'chromium'"
    if os.geteuid() != 0:
        return f"{CHROMIUM} is missing; install it with `sudo apt-get install -y chromium` (or run `make browser` as root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    try:
        if subprocess.run(cmd, env=env, capture_output=True, timeout=900).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
            subprocess.run(cmd, env=env, capture_output=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"installing chromium with apt-get failed: {e}"
    return None if CHROMIUM.is_file() else "apt-get could not install the Debian package 'chromium' (offline?)"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed "
                                                                 "(pip install -e '.[dev]')")
    why = _ensure_chromium()
    if why:
        pytest.skip(why)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    from vestis.engine import Engine

    root, cat, run, idx, cache = tiny_pipeline
    yield from _serve(Engine.load(run, idx, cache_dir=cache))


@pytest.fixture(scope="module")
def parts_server(tiny_pipeline, parts_pipeline):
    from vestis.engine import Engine

    yield from _serve(Engine.load(*parts_pipeline, cache_dir=tiny_pipeline[-1]))


def _serve(engine):
    import uvicorn

    from vestis.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + 30
    while not srv.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", engine
    srv.should_exit = True
    t.join(timeout=10)


def _pick(engine):
    """A query item and a colour whose manipulation puts an item of that colour first (the tiny model is weak;
    the page, not the model, is under test), and which changes the ranking."""
    gallery = set(engine.spaces["main"].ids())
    for it in engine.catalog.split("query"):
        if it.id in gallery or "colour" not in it.attributes:
            continue
        before = [h.id for h in engine.search(item_id=it.id, k=12)]
        for colour in engine.model.schema.values("colour"):
            if colour == it.attributes["colour"]:
                continue
            hits = engine.search(item_id=it.id, manipulations={"colour": colour}, k=12)
            if hits[0].attributes.get("colour") == colour and [h.id for h in hits] != before:
                return it, colour, before
    pytest.fail("no query item of the tiny run ranks a requested colour first")


def _wait(page, expression: str, timeout: float = 30.0) -> None:
    """Poll a JavaScript expression until it is true. Playwright's wait_for_function evaluates its predicate with
    eval() in the page, which the server's Content-Security-Policy (rightly) forbids; page.evaluate is not."""
    deadline = time.time() + timeout
    while not page.evaluate(expression):
        assert time.time() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def _cards(page):
    return page.eval_on_selector_all("#results .card", "cs => cs.map(c => c.dataset.id)")


def test_page_end_to_end(browser, server, tmp_path):
    base, engine = server
    item, colour, before = _pick(engine)
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    problems, outside = [], []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "blob:", "data:")) else None)
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#browse-grid img").count() > 0
    assert page.locator("#mode option[value='diverse'][disabled]").count() == 1

    # pick the query by id: its results are the plain ranking
    page.click(".tab[data-tab='byid']")
    page.fill("#item-id", item.id)
    page.press("#item-id", "Enter")
    _wait(page, "document.querySelectorAll('#results .card').length > 0")
    page.select_option("#k", "12")
    page.click("#search-btn")
    _wait(page, "document.querySelectorAll('#history-list li').length === 2")
    assert _cards(page) == before
    assert page.inner_text("#query-title").startswith(item.id)
    assert item.attributes["colour"] in page.inner_text("#query-attrs")

    # change the colour with its dropdown: results change, and the badges say which results have it
    page.select_option("select[data-attr='colour']", colour)
    page.click("#search-btn")
    _wait(page, f"document.querySelector('#status').textContent.includes('colour = {colour}')")
    after = _cards(page)
    want = [h.id for h in engine.search(item_id=item.id, manipulations={"colour": colour}, k=12)]
    assert after == want and after != before
    badges = page.eval_on_selector_all("#results .card", """cs => cs.map(c =>
        c.querySelector(".badge[data-attr='colour']").dataset.match)""")
    assert badges[0] == "1"
    assert badges == ["1" if engine.catalog[i].attributes.get("colour") == colour else "0" for i in after]
    page.screenshot(path=str(tmp_path / "after-change.png"), full_page=True)

    # strict: only items with the requested colour
    page.check("#strict")
    page.click("#search-btn")
    _wait(page, f"document.querySelector('#status').textContent.includes('only colour = {colour}')")
    strict = _cards(page)
    assert strict and all(engine.catalog[i].attributes.get("colour") == colour for i in strict)
    page.uncheck("#strict")

    # a typed request: understood words are shown and applied
    other = next(c for c in engine.model.schema.values("colour") if c not in (colour, item.attributes["colour"]))
    page.fill("#text", f"same but {other} please, for women")
    page.press("#text", "Enter")
    _wait(page, f"document.querySelector('#status').textContent.includes('colour = {other}')")
    understood = page.inner_text("#understood")
    assert f"colour = {other}" in understood and "not understood: women" in understood
    assert page.input_value("select[data-attr='colour']") == other

    # refine: a click on a result makes it the query; undo goes back
    first = _cards(page)[0]
    page.click(f"#results .card[data-id='{first}'] img")
    _wait(page, f"document.querySelector('#query-title').textContent.startsWith('{first}')")
    _wait(page, "document.querySelectorAll('#history-list li').length === 6")
    assert "picked " + first in page.inner_text("#history-list")
    page.click("#undo-btn")
    _wait(page, "document.querySelectorAll('#history-list li').length === 5")
    assert page.inner_text("#query-title").startswith(item.id)
    assert page.input_value("select[data-attr='colour']") == other

    # the explanation overlay of a result
    page.click("#results .card >> nth=0 >> button.explain")
    _wait(page, "document.querySelector('#explain-img').naturalWidth > 0")
    page.screenshot(path=str(tmp_path / "explain.png"))
    page.click("#explain-dialog .close")

    # an uploaded photo: predicted attributes appear, results come back
    page.click(".tab[data-tab='upload']")
    page.set_input_files("#upload", str(item.image))
    _wait(page, "document.querySelector('#query-title').textContent.startsWith('uploaded photo')")
    _wait(page, "document.querySelectorAll('#history-list li').length === 6")
    assert page.locator("#results .card").count() == 12
    assert "%" in page.inner_text("#query-attrs")
    page.click("#query-explain")  # the uploaded photo's own activation maps (POST /explain)
    _wait(page, "document.querySelector('#explain-img').naturalWidth > 0")
    assert "uploaded photo" in page.inner_text("#explain-title")
    page.click("#explain-dialog .close")

    # "similar colour" from the query card: the colour ranking, and where the model looked for colour
    page.click("#query-attrs button.similar:has-text('similar colour')")
    _wait(page, "document.querySelector('#status').textContent.includes('similar colour')")
    want = [h.id for h in engine.search(image=Path(item.image), mode="attribute:colour", k=12, crop=True)]
    assert _cards(page) == want
    _wait(page, "document.querySelector('#attention-img').naturalWidth > 0")
    assert "looked for colour" in page.inner_text("#attention-note")
    page.screenshot(path=str(tmp_path / "similar-colour.png"), full_page=True)
    page.select_option("#mode", "manipulate")
    _wait(page, "!document.querySelector('#text').disabled")

    # a phone-like photo (the garment on a textured surface): the crop that was searched shows under it
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    bg = np.clip(rng.normal(150, 8, (300, 400, 3)) + np.sin(np.arange(400) / 3)[None, :, None] * 20, 0, 255)
    photo = Image.fromarray(bg.astype(np.uint8))
    photo.paste(Image.open(item.image).convert("RGB").resize((120, 150)), (150, 80))
    phone = tmp_path / "phone.jpg"
    photo.save(phone, quality=90)
    page.set_input_files("#upload", str(phone))
    _wait(page, "document.querySelectorAll('#history-list li').length === 8")
    _wait(page, "!document.querySelector('#query-crop-box').classList.contains('hidden')")
    # the canvas holds the crop: its middle is the garment, not the grey surface
    px = page.evaluate("Array.from(document.querySelector('#query-crop').getContext('2d').getImageData(48, 60, 1, 1).data)")
    assert px[3] == 255 and abs(px[0] - 150) + abs(px[1] - 150) + abs(px[2] - 150) > 30
    page.screenshot(path=str(tmp_path / "upload-crop.png"))

    # bad input shows the server's message, not a broken page
    page.fill("#text", "something for my grandmother")
    page.press("#text", "Enter")
    page.wait_for_selector("#error:not(.hidden)")
    assert "could not map" in page.inner_text("#error")

    shots = os.environ.get("VESTIS_SCREENSHOTS")
    if shots:
        Path(shots).mkdir(parents=True, exist_ok=True)
        for f in tmp_path.glob("*.png"):
            shutil.copy(f, Path(shots) / f.name)
    assert not outside, f"the page reached outside the server: {outside}"
    assert not [p for p in problems if "400" not in p], problems  # the 400 of the bad request is expected
    page.close()


def test_docs_page_works_under_the_content_security_policy(browser, server):
    """The Swagger page (local assets, one inline script allowed by its hash) renders with nothing blocked."""
    base, _ = server
    page = browser.new_page()
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    r = page.goto(base + "/docs")
    assert "script-src 'self' 'sha256-" in r.headers["content-security-policy"]
    page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
    page.click(".opblock-summary-path[data-path='/search']")
    page.wait_for_selector(".opblock-body")
    assert not problems, problems
    page.close()


def test_diverse_groups_on_the_page(browser, parts_server, tmp_path):
    """Mode diverse on an outfit: one row per group titled with its label, each group's box drawn on the query
    image, and "search from this part" searching the cut-out part as an upload."""
    base, engine = parts_server
    outfit = next(it for it in engine.catalog if it.parts)
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(base + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.select_option("#mode", "diverse")
    page.click(".tab[data-tab='byid']")
    page.fill("#item-id", outfit.id)
    page.press("#item-id", "Enter")
    _wait(page, "document.querySelectorAll('#results section.group').length > 0")
    want = engine.search(item_id=outfit.id, mode="diverse", k=int(page.input_value("#k")))
    titles = page.eval_on_selector_all("#results section.group", "ss => ss.map(s => s.dataset.label)")
    assert titles == [g.label for g in want.groups]
    rows = page.eval_on_selector_all("#results section.group", "ss => ss.map(s => [...s.querySelectorAll('.card')].map(c => c.dataset.id))")
    assert rows == [[h.id for h in g.hits] for g in want.groups]
    boxes = page.eval_on_selector_all("#query-boxes rect", "rs => rs.map(r => r.dataset.label)")
    assert boxes == [g.label for g in want.groups]
    shots = Path(os.environ.get("VESTIS_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "diverse.png"), full_page=True)
    # refine from the first part: the cut-out is the new (uploaded) query, searched in the same mode
    page.click("#results section.group >> nth=0 >> button.refine")
    _wait(page, "document.querySelector('#query-title').textContent.startsWith('uploaded photo')")
    _wait(page, "document.querySelector('#status').textContent.includes('results')")
    assert page.input_value("#mode") == "diverse"
    page.screenshot(path=str(shots / "diverse-part.png"), full_page=True)
    assert not problems, problems
    page.close()
