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
    """Serve the API and the web page until interrupted; prints the URL it is bound to first. The socket is bound
    here and handed to uvicorn, so the printed address (and a --port 0 choice) is the one that serves."""
    import socket

    import uvicorn

    from vestis.errors import VestisError
    from vestis.images import return_large_buffers
    from vestis.serve.app import create_app

    return_large_buffers()  # large uploads' decoded pixels go back to the system once answered

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise VestisError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    except (socket.gaierror, UnicodeError) as e:
        sock.close()
        raise VestisError(f"cannot listen on {host!r}: {e}") from None
    bound_host, bound_port = sock.getsockname()[:2]
    app = create_app(engine, **app_options)
    problem = app.state.service.warm_up()
    if problem:
        print(f"vestis: warning: a first search failed: {problem}", flush=True)
    print(f"vestis: serving run {engine.info.run_id} ({engine.model.name}, {len(app.state.service.indexed)} items "
          f"indexed) at {_urls(bound_host, bound_port)}  (API docs: /docs; Ctrl+C stops)", flush=True)
    if not _loopback(bound_host) and not app_options.get("allowed_hosts"):
        print("vestis: warning: listening beyond this machine and answering any Host header; name the host names "
              "clients use with --allowed-host (against DNS rebinding)", flush=True)
    config = uvicorn.Config(app, log_level=log_level)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _urls(host: str, port: int) -> str:
    """The bound address as URLs: all interfaces (0.0.0.0 / ::) are shown as such, with this machine's URL."""
    def url(h):
        return f"http://[{h}]:{port}/" if ":" in h else f"http://{h}:{port}/"

    if host in ("0.0.0.0", "::"):
        local = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"{url(host)} (all interfaces; on this machine {url(local)})"
    return url(host)
