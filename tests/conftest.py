import contextlib
import json
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "fashion-product-images-small"


@pytest.fixture
def real_data_path() -> Path:
    if not (REAL_DATA / "styles.csv").is_file():
        pytest.skip(f"real dataset not found at {REAL_DATA}")
    return REAL_DATA


def train_cli(root: Path, cat: Path, model: str, config: dict, cache: Path, *extra: str, name: str = "run") -> Path:
    """Train `model` on catalogue `cat` through `vestis train` with `config` (JSON written beside it); the run dir."""
    from vestis.cli import main

    cfg = root / f"{name}.json"
    cfg.write_text(json.dumps(config))
    run = root / name
    assert main(["train", "--model", model, "--catalog", str(cat), "--out", str(run), "--config", str(cfg),
                 "--cache", str(cache), *extra]) == 0
    return run


@pytest.fixture(scope="session")
def train_tiny():
    return train_cli


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A tiny synthetic catalogue (160 images) with a trained attribute_baseline run and a gallery index, built
    through the command line once per test session: (root, catalogue, run, index, feature cache)."""
    from vestis.cli import main

    root = tmp_path_factory.mktemp("e2e")
    cache = root / "cache"
    cat = root / "cat"
    assert main(["synth", "-n", "160", "--seed", "5", "--out", str(cat), "--workers", "1"]) == 0
    run = train_cli(root, cat, "attribute_baseline", {"epochs": 3, "hidden": 64, "batch_size": 32,
                                                      "attributes": ["category", "colour", "pattern"]}, cache)
    idx = root / "idx"
    assert main(["index", "--run", str(run), "--catalog", str(cat), "--out", str(idx), "--split", "gallery",
                 "--cache", str(cache)]) == 0
    return root, cat, run, idx, cache


@pytest.fixture(scope="session")
def parts_pipeline(tiny_pipeline):
    """A `parts` run (mode diverse, its quick_config) on the tiny pipeline's catalogue, and its gallery index."""
    from vestis.cli import main
    from vestis.models import MODELS

    root, cat, run, idx, cache = tiny_pipeline
    prun = train_cli(root, cat, "parts", dict(MODELS["parts"].quick_config), cache, name="parts-run")
    pidx = root / "parts-idx"
    assert main(["index", "--run", str(prun), "--catalog", str(cat), "--out", str(pidx), "--split", "gallery",
                 "--cache", str(cache)]) == 0
    return prun, pidx


@pytest.fixture(scope="module")
def engine(tiny_pipeline):
    """The tiny pipeline's run and index, loaded (the HTTP API tests serve it)."""
    from vestis.engine import Engine

    root, cat, run, idx, cache = tiny_pipeline
    return Engine.load(run, idx, cache_dir=cache)


MILVUS_URI_ENV = "VESTIS_TEST_MILVUS_URI"  # an existing Milvus server or cluster to test against instead


class MilvusServerHandle:
    """The session's Milvus server: its uri, and stop / start for a restart test (same data folder)."""

    def __init__(self, server=None, uri: str | None = None):
        self.server, self._uri = server, uri

    @property
    def uri(self) -> str:
        return self._uri or f"http://127.0.0.1:{self.server.listen_port}"

    def restart(self) -> None:
        if self.server is None:
            pytest.skip(f"{MILVUS_URI_ENV} names an external server, which the tests do not restart")
        self.server.stop()
        self.server.start()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A Milvus standalone server started once per test session, for the tests that ask for it: the PyPI package
    `milvus` (embedded Milvus 2.3, a real server binary; about 15 s to start) in a temporary folder, on the first free
    port from 19530. Skipped, with the reason, only where the package is missing or its binary cannot run here;
    `VESTIS_TEST_MILVUS_URI=http://host:19530` tests an existing server (or cluster) instead."""
    import os

    if os.environ.get(MILVUS_URI_ENV):
        yield MilvusServerHandle(uri=os.environ[MILVUS_URI_ENV])
        return
    pytest.importorskip("pymilvus", reason="the Milvus tests need pymilvus: pip install 'vestis[milvus]'")
    try:
        from milvus import MilvusServer
    except ImportError:
        pytest.skip("the Milvus server tests need the package `milvus` (embedded Milvus 2.3, Linux x86-64): "
                    "pip install 'vestis[milvus]'")
    import logging

    server = MilvusServer()
    logging.getLogger("milvus.MilvusServer").setLevel(logging.WARNING)
    server.set_base_dir(str(tmp_path_factory.mktemp("milvus-server")))
    try:
        server.start()
    except Exception as e:  # no binary for this platform, no permission to run it, a port taken midway...
        with contextlib.suppress(Exception):
            server.stop()
        pytest.skip(f"the Milvus server binary cannot run here: {type(e).__name__}: {e}")
    try:
        yield MilvusServerHandle(server)
    finally:
        server.stop()


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread is several times faster than two on a busy 2-core machine. Use it in a module
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
