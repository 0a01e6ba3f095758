"""HTTP API and web page over a loaded engine (`create_app`), and `serve` to run it with uvicorn."""

from __future__ import annotations

import os
from pathlib import Path


def load_engine(run: Path, index: Path, catalog: Path | None = None, format: str | None = None,
                cache_dir: Path | None = None):
    """The engine `vestis serve` serves: a run + its index + the catalogue (default: the one the index names)."""
    from vestis.catalog import Catalog
    from vestis.engine import Engine

    cat = Catalog.load(catalog, format=format) if catalog is not None else None
    return Engine.load(run, index, catalog=cat, cache_dir=cache_dir)


def serve(engine, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning", workers: int = 1,
          precompute_items: int = 100_000, **app_options) -> None:
    """Serve the API and the web page until interrupted; prints the URL it is bound to first. The socket is bound
    here and handed to uvicorn, so the printed address (and a --port 0 choice) is the one that serves.

    `workers` > 1 forks that many server processes after the engine is loaded (POSIX): they share the loaded
    index, model and catalogue pages copy-on-write, each listening on its own socket of one SO_REUSEPORT group (where
    the system has it; else all accept from the one socket). Every server process runs torch
    and FAISS on one thread: a search is small, and the engine answers one at a time per process, so a second
    thread would only wait (or spin) beside the event loop and the other requests. Writes
    (`allow_writes`) need one process, since each worker holds its own engine.

    `precompute_items`: the query side of up to that many catalogue items (those with cached maps: the model's
    attribute probabilities and map summary) is computed before serving and kept (`Engine.keep_item_queries`;
    shared by the workers), so an item-id search skips the classifiers and the feature cache, and their answer rows
    and image paths are prepared (`Service.prepare_items`); 0: none."""
    import socket

    import uvicorn

    from vestis.errors import VestisError
    from vestis.images import return_large_buffers
    from vestis.serve.app import create_app

    return_large_buffers()  # large uploads' decoded pixels go back to the system once answered

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # several workers: each listens on its own socket of one SO_REUSEPORT group, and the kernel spreads new connections
    # over them; on one shared socket the first worker awake accepted nearly every connection (7 or 8 of the bench's
    # 8, measured), leaving the other idle
    spread = workers > 1 and hasattr(socket, "SO_REUSEPORT")
    if spread:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise VestisError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    except (socket.gaierror, UnicodeError) as e:
        sock.close()
        raise VestisError(f"cannot listen on {host!r}: {e}") from None
    bound_host, bound_port = sock.getsockname()[:2]
    if workers < 1:
        sock.close()
        raise VestisError(f"--workers must be at least 1, got {workers}")
    if workers > 1 and app_options.get("allow_writes"):
        sock.close()
        raise VestisError("--allow-writes needs one server process (--workers 1): each worker holds its own engine")
    if workers > 1 and not hasattr(os, "fork"):
        sock.close()
        raise VestisError("--workers > 1 needs a POSIX system (fork)")
    if precompute_items < 0:
        sock.close()
        raise VestisError(f"--precompute-items must be at least 0, got {precompute_items}")
    app = create_app(engine, **app_options)
    _one_thread(engine)  # before the precompute's model passes: no torch / OpenMP thread pool exists when workers fork
    kept = _precompute(app, precompute_items)
    exposed = not _loopback(bound_host) and not app_options.get("allowed_hosts")

    def warn_if_exposed():
        if exposed:
            print("vestis: warning: listening beyond this machine and answering any Host header; name the host names "
                  "clients use with --allowed-host (against DNS rebinding)", flush=True)

    config = uvicorn.Config(app, log_level=log_level)
    if workers == 1:
        _warm(app)
        print(f"vestis: serving run {engine.info.run_id} ({engine.model.name}, {len(app.state.service.indexed)} items "
              f"indexed{kept}) at {_urls(bound_host, bound_port)}  (API docs: /docs; Ctrl+C stops)", flush=True)
        warn_if_exposed()
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()
        return
    sock.set_inheritable(True)
    children = []
    for i in range(workers):  # forked before any search ran: no torch / OpenMP thread pool exists yet
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _warm(app)
                uvicorn.Server(config).run(sockets=[_worker_socket(sock) if spread and i else sock])
            except BaseException:  # noqa: BLE001 - a worker never returns into the parent's code
                code = 1
            finally:
                os._exit(code)
        children.append(pid)
    print(f"vestis: serving run {engine.info.run_id} ({engine.model.name}, {len(app.state.service.indexed)} items "
          f"indexed{kept}) at {_urls(bound_host, bound_port)} with {workers} worker processes  (API docs: /docs; Ctrl+C "
          f"stops)", flush=True)
    warn_if_exposed()
    _supervise(children, sock)


def _worker_socket(sock):
    """A socket of its own for a worker, in the SO_REUSEPORT group of `sock` (bound to the same address)."""
    import socket

    own = socket.socket(sock.family)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    own.bind(sock.getsockname())
    return own


def _precompute(app, limit: int) -> str:
    """Before serving (and forking): `Engine.keep_item_queries` and `Service.prepare_items`; what was kept, for the
    "serving" line."""
    import time

    if not limit:
        return ""
    t0 = time.perf_counter()
    engine = app.state.service.engine
    n = engine.keep_item_queries(limit)
    ready = app.state.service.prepare_items(limit)
    kept = f"the query side of {n:,} items kept ({engine.kept_bytes() / 2**20:.0f} MiB), " if n else ""
    return f"; {kept}{ready:,} items prepared in {time.perf_counter() - t0:.1f} s"


def _warm(app) -> None:
    problem = app.state.service.warm_up()
    if problem:
        print(f"vestis: warning: a first search failed: {problem}", flush=True)


def _one_thread(engine) -> None:
    """One torch and one FAISS thread in a server process, for a batch of queries too."""
    import torch

    torch.set_num_threads(1)
    engine.set_search_threads(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        pass


def _supervise(children: list[int], sock) -> None:
    """Wait for the workers; on Ctrl+C or SIGTERM, stop them all (uvicorn in each shuts down gracefully)."""
    import signal

    def stop(*_):
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    previous = signal.signal(signal.SIGTERM, lambda *_: stop())
    try:
        while children:
            try:
                pid, _ = os.wait()
            except ChildProcessError:
                break
            if pid in children:
                children.remove(pid)
                if children:  # one worker died: the server is not what was asked for; stop the others too
                    print("vestis: a worker process exited; stopping the others", flush=True)
                    stop()
    except KeyboardInterrupt:
        stop()
        for pid in list(children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)
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
