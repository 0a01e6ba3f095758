import json
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashion-product-images-small"


@pytest.fixture
def real_data_path() -> Path:
    if not (REAL_DATA / "styles.csv").is_file():
        pytest.skip(f"real dataset not found at {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A tiny synthetic catalogue (160 images) with a trained attribute_baseline run and a gallery index, built
    through the command line once per test session: (root, catalogue, run, index, feature cache)."""
    from vestis.cli import main

    root = tmp_path_factory.mktemp("e2e")
    cache = root / "cache"
    cat = root / "cat"
    assert main(["synth", "-n", "160", "--seed", "5", "--out", str(cat), "--workers", "1"]) == 0
    run = root / "run"
    cfg = root / "cfg.json"
    cfg.write_text(json.dumps({"epochs": 3, "hidden": 64, "batch_size": 32,
                               "attributes": ["category", "colour", "pattern"]}))
    assert main(["train", "--model", "attribute_baseline", "--catalog", str(cat), "--out", str(run),
                 "--config", str(cfg), "--cache", str(cache)]) == 0
    idx = root / "idx"
    assert main(["index", "--run", str(run), "--catalog", str(cat), "--out", str(idx), "--split", "gallery",
                 "--cache", str(cache)]) == 0
    return root, cat, run, idx, cache
