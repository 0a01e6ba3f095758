"""HTTP API and web page over a loaded engine (`create_app`), and `serve` to run it with uvicorn."""

from __future__ import annotations

from pathlib import Path


def load_engine(run: Path, index: Path, catalog: Path | None = None, format: str | None = None,
                cache_dir: Path | None = None):
    """The engine `vestis serve` serves: a run + its index + the catalogue (default: the one the index names)."""
    from vestis.catalog import Catalog
    from vestis.engine import Engine

    cat = Catalog.load(catalog, format=format) if catalog is not None else None
    return Engine.load(run, index, catalog=cat, cache_dir=cache_dir)


def serve(engine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning", **app_options) -> None:
    """Serve the API and the web page until interrupted; prints the URL first."""
    import socket

    import uvicorn

    from vestis.errors import VestisError
    from vestis.serve.app import create_app

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise VestisError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    app = create_app(engine, **app_options)
    problem = app.state.service.warm_up()
    if problem:
        print(f"vestis: warning: a first search failed: {problem}", flush=True)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(f"vestis: serving run {engine.info.run_id} ({engine.model.name}, {len(app.state.service.indexed)} items "
          f"indexed) at http://{shown}:{port}/  (API docs: /docs; Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
