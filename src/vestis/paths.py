"""Where vestis keeps machine-wide state."""

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """The feature cache: $VESTIS_CACHE, else ~/.cache/vestis (keyed inside by trunk, weights, resolution)."""
    return Path(os.environ.get("VESTIS_CACHE") or Path.home() / ".cache" / "vestis")
