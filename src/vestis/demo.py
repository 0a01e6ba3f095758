"""`vestis demo`: the whole pipeline on the built-in synthetic catalogue (or a user's catalogue):
catalogue -> cached trunk features -> trained attribute model -> index -> an example manipulation search ->
the web page (`serve=True`, the default of `vestis demo`; `--no-serve` stops after the search).

Each step reuses what an earlier run built: the catalogue is generated once per (n, seed), the feature
cache is keyed by image content, and the run and index are kept in the work directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from vestis.catalog import Catalog

DEMO_SEED = 0
DEMO_MODEL = "attribute_baseline"


def _synthetic_catalogue(workdir: Path, n: int) -> Path:
    from vestis.catalog.synthetic import generate

    out = workdir / f"synthetic-n{n}-seed{DEMO_SEED}"
    stamp = out / ".complete"
    if stamp.is_file():
        print(f"[1/5] synthetic catalogue: reusing {out}")
    else:
        print(f"[1/5] synthetic catalogue: generating {n} images into {out}")
        generate(n=n, seed=DEMO_SEED, out=out, contact_sheet=True)
        stamp.write_text(json.dumps({"n": n, "seed": DEMO_SEED}) + "\n")
    return out


def _example_query(catalog: Catalog, engine) -> tuple[str, str, str]:
    """A query-split item with a known colour, and another colour to ask for."""
    schema = engine.model.schema
    attr = "colour" if "colour" in schema else ("baseColour" if "baseColour" in schema else schema.attributes[0])
    for it in catalog.split("query"):
        if attr in it.attributes and it.image is not None and it.image.is_file():
            new = next(v for v in schema.values(attr) if v != it.attributes[attr])
            return it.id, attr, new
    raise SystemExit("the catalogue has no query item to demonstrate with")


def run_demo(data: Path | None, workdir: Path, n: int, cache_dir: Path, serve: bool = False,
             host: str = "127.0.0.1", port: int = 8000) -> int:
    from vestis.catalog.catalog import format_summary
    from vestis.engine import Engine
    from vestis.indexing import build_index
    from vestis.train import train_run
    from vestis.vision.extract import extract_catalog
    from vestis.models import declared_levels
    from vestis.vision.trunk import TrunkSpec
    from vestis.catalog.readers import default_attributes

    workdir.mkdir(parents=True, exist_ok=True)
    path = Path(data) if data is not None else _synthetic_catalogue(workdir, n)
    if data is not None:
        print(f"[1/5] catalogue: {path}")
    catalog = Catalog.load(path)
    catalog = catalog.with_attributes(default_attributes(catalog))
    print(format_summary(catalog.summary(check_images=False)))
    spec = TrunkSpec(levels=declared_levels())  # what every built-in method reads: one cache for all
    print(f"[2/5] features: encoding with {spec.name} at {spec.resolution[0]}x{spec.resolution[1]} (cache {cache_dir})")
    print(extract_catalog(catalog, spec, cache_dir=cache_dir).describe())

    name = catalog.name or "catalogue"
    run_dir, index_dir = workdir / f"{name}-{DEMO_MODEL}", workdir / f"{name}-{DEMO_MODEL}-index"
    if (run_dir / "run.json").is_file():
        print(f"[3/5] model: reusing {run_dir}")
    else:
        print(f"[3/5] model: training {DEMO_MODEL} on the train split")
        train_run(DEMO_MODEL, catalog, run_dir, spec, cache_dir)
    info = json.loads((run_dir / "run.json").read_text())
    built = index_dir / "engine.json"
    if built.is_file() and json.loads(built.read_text()).get("run_id") == info["run_id"]:
        print(f"[4/5] index: reusing {index_dir}")
    else:
        print(f"[4/5] index: embedding the catalogue into {index_dir}")
        build_index(run_dir, catalog, index_dir, cache_dir=cache_dir)

    engine = Engine.load(run_dir, index_dir, catalog=catalog, cache_dir=cache_dir)
    item, attr, new = _example_query(catalog, engine)
    print(f"[5/5] search: item {item} ({', '.join(f'{a}={v}' for a, v in catalog[item].attributes.items())}), "
          f"but {attr}={new}")
    attrs = engine.model.schema.attributes
    print(f"{'rank':>4}  {'item':<10} {'score':>8}  " + "  ".join(attrs))
    for r, h in enumerate(engine.search(item_id=item, manipulations={attr: new}, k=8), 1):
        print(f"{r:>4}  {h.id:<10} {h.score:>8.2f}  " + "  ".join(h.attributes.get(a, "-") for a in attrs))
    print(f"\ntry it yourself:\n  .venv/bin/vestis search --run {run_dir} --index {index_dir} --item {item} --set {attr}='{new}'")
    if data is None:
        print(f"look at the catalogue: {path / 'contact_sheet.png'}")
    serve_cmd = f".venv/bin/vestis serve --run {run_dir} --index {index_dir} --catalog {path} --port {port}"
    if not serve:
        print(f"serve the web page:\n  {serve_cmd}")
        return 0
    from vestis.serve import serve as serve_engine

    print(f"[web] the same search on a web page (later, without the demo: {serve_cmd})")
    serve_engine(engine, host=host, port=port)
    return 0
