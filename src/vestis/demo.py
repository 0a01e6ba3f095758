"""`vestis demo`: the whole pipeline on the built-in synthetic catalogue (or a user's catalogue).

Each step reuses what an earlier run built: the catalogue is generated once per (n, seed), and the
feature cache is keyed by image content, so a second run only re-checks.
"""

from __future__ import annotations

import json
from pathlib import Path

from vestis.catalog import Catalog

DEMO_SEED = 0


def _synthetic_catalogue(workdir: Path, n: int) -> Path:
    from vestis.catalog.synthetic import generate

    out = workdir / f"synthetic-n{n}-seed{DEMO_SEED}"
    stamp = out / ".complete"
    if stamp.is_file():
        print(f"[1/3] synthetic catalogue: reusing {out}")
    else:
        print(f"[1/3] synthetic catalogue: generating {n} images into {out}")
        generate(n=n, seed=DEMO_SEED, out=out, contact_sheet=True)
        stamp.write_text(json.dumps({"n": n, "seed": DEMO_SEED}) + "\n")
    return out


def run_demo(data: Path | None, workdir: Path, n: int, cache_dir: Path) -> int:
    from vestis.cli import format_summary
    from vestis.vision.extract import extract_catalog
    from vestis.vision.trunk import TrunkSpec

    workdir.mkdir(parents=True, exist_ok=True)
    path = Path(data) if data is not None else _synthetic_catalogue(workdir, n)
    if data is not None:
        print(f"[1/3] catalogue: {path}")
    catalog = Catalog.load(path)
    print(f"[2/3] features: encoding with the default trunk (cache {cache_dir})")
    report = extract_catalog(catalog, TrunkSpec(), cache_dir=cache_dir)
    print(report.describe())
    print("[3/3] summary")
    print(format_summary(catalog.summary(check_images=False)))
    if data is None:
        print(f"\nlook at the catalogue: {path / 'contact_sheet.png'}")
    return 0
