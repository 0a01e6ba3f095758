"""Screenshots of the web page for the README: one query, labels on and off, in headless Chromium.

    .venv/bin/python benchmarks/page_screenshots.py RUN_DIR INDEX_DIR CATALOG ITEM_ID "same but red" [--cache DIR]

Starts `vestis serve` on port 8765, loads ITEM_ID, types the request, searches with the page's "use the catalogue's
labels" box on and then off, and writes docs/img/page-labels-{on,off}.png; prints the status line and the note.
With --upload PHOTO it instead uploads that phone photo and writes docs/img/page-upload.png (the crop searched and
the predicted attributes above the results).
"""

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

p = argparse.ArgumentParser()
p.add_argument("run"), p.add_argument("index"), p.add_argument("catalog"), p.add_argument("item"), p.add_argument("text")
p.add_argument("--cache", default=None)
p.add_argument("--out", type=Path, default=Path("docs/img"))
p.add_argument("--upload", type=Path, default=None, help="a phone photo to upload instead of the item query")
args = p.parse_args()
cmd = [str(Path(sys.executable).parent / "vestis"), "serve", "--run", args.run, "--index", args.index, "--catalog",
       args.catalog, "--port", "8765"] + (["--cache", args.cache] if args.cache else [])
srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(240):
        try:
            urllib.request.urlopen("http://127.0.0.1:8765/health")
            break
        except OSError:
            time.sleep(0.5)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto("http://127.0.0.1:8765/")
        args.out.mkdir(parents=True, exist_ok=True)
        if args.upload:
            page.click(".tab[data-tab='upload']")
            page.set_input_files("#upload", str(args.upload))
            page.wait_for_selector("#results .card", timeout=120000)
            time.sleep(2)
            out = args.out / "page-upload.png"
            page.screenshot(path=str(out))
            print(out, "|", page.inner_text("#status"), "|", page.inner_text("#query-attrs").replace("\n", " "))
        page.click(".tab[data-tab='byid']")
        for labels in (() if args.upload else (True, False)):
            page.fill("#item-id", args.item)
            page.press("#item-id", "Enter")
            time.sleep(2)
            page.fill("#text", args.text)
            if page.is_checked("#labels") != labels:
                page.click("#labels")
            page.click("#search-btn")
            time.sleep(3)
            out = args.out / f"page-labels-{'on' if labels else 'off'}.png"
            page.screenshot(path=str(out))
            print(out, "|", page.inner_text("#status"), "|", page.inner_text("#note"))
        browser.close()
finally:
    srv.terminate()
