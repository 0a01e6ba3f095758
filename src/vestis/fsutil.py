"""Small file-system helpers for atomic writes, shared by the feature cache and the index."""

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Flush a directory entry (after os.replace) so a rename survives a crash; a no-op where
    directories cannot be opened (e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
