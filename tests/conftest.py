from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashion-product-images-small"


@pytest.fixture
def real_data_path() -> Path:
    if not (REAL_DATA / "styles.csv").is_file():
        pytest.skip(f"real dataset not found at {REAL_DATA}")
    return REAL_DATA
