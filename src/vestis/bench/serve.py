"""`vestis bench serve`: a bounded load test of the HTTP API on loopback.

The server runs as its own process (`vestis serve --workers N`, uvicorn; one row per N asked for), exactly as a
user starts it; the
clients are keep-alive connections from this process (one asyncio loop for the JSON queries, httpx threads for
uploads), sending item-id
queries: catalogue items whose image file exists (the query split first) and, per request, one manipulation of a
seeded random attribute to another value (mode manipulate, k 30). After a warm-up, each repeat sends
`n_requests` requests from `concurrency` clients and records every latency (request sent -> response
read) and every non-200 answer. Reported: the median over repeats of p50, p99 and requests/s
(`vestis.bench.timing`), the server's and the clients' CPU time per request (they share the machine), and the
total error count (the goal is zero).
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from vestis.bench.adapter import BenchRun
from vestis.bench.timing import Timings
from vestis.errors import VestisError
from vestis.machine import format_machine, machine_info

WARMUP = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _queries(catalog, schema, n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    def ok(it):
        return it.image is not None and Path(it.image).is_file()

    items = [it for it in catalog.split("query") if ok(it)] or [it for it in catalog if ok(it)]
    if not items:
        raise VestisError("the catalogue has no item with an image to query with")
    attrs = schema.attributes
    out = []
    for i in range(n):
        it = items[int(rng.integers(len(items)))]
        a = attrs[int(rng.integers(len(attrs)))]
        vals = [v for v in schema.values(a) if v != it.attributes.get(a)]
        body = {"item_id": it.id, "k": 30}
        if vals:
            body["manipulations"] = {a: vals[int(rng.integers(len(vals)))]}
        out.append(body)
    return out


def _run(base: str, bodies: list, concurrency: int) -> tuple[np.ndarray, int, float, list[str]]:
    """Send every body (a JSON dict, or ("upload", image bytes, manipulations) for a multipart photo upload): JSON
    bodies through `_run_json`, uploads through httpx threads."""
    if all(isinstance(b, dict) for b in bodies):
        return _run_json(base, bodies, concurrency)
    return _run_httpx(base, bodies, concurrency)


def _run_json(base: str, bodies: list[dict], concurrency: int) -> tuple[np.ndarray, int, float, list[str]]:
    """`concurrency` keep-alive HTTP/1.1 connections driven by one asyncio loop (plain streams, Content-Length
    framing), each answer's JSON parsed and checked: a client that costs the shared cores ~0.2 ms per request
    where httpx threads cost ~1.5 ms (measured), so the server gets the CPU a remote client would leave it."""
    import asyncio
    import json
    from urllib.parse import urlsplit

    try:
        import orjson
        loads = orjson.loads
    except ImportError:  # pragma: no cover - orjson is in the serve extra
        loads = json.loads
    url = urlsplit(base)
    host, port = url.hostname, url.port
    payloads = [json.dumps(b).encode() for b in bodies]
    lat = np.zeros(len(bodies))
    errors: list[str] = []
    nxt = iter(range(len(bodies)))

    async def client():
        reader, writer = await asyncio.open_connection(host, port)
        head = f"POST /search HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        try:
            for i in nxt:
                t = time.perf_counter()
                try:
                    writer.write(f"{head}Content-Length: {len(payloads[i])}\r\n\r\n".encode() + payloads[i])
                    status_line = await reader.readuntil(b"\r\n")
                    headers = await reader.readuntil(b"\r\n\r\n")
                    length = next(int(line.split(b":", 1)[1]) for line in headers.split(b"\r\n")
                                  if line[:15].lower() == b"content-length:")
                    body = await reader.readexactly(length)
                    status = int(status_line.split()[1])
                    ok = status == 200 and loads(body)["results"] is not None
                    msg = f"{status} {body[:120]!r}"
                except Exception as e:  # counted, never hidden
                    ok, msg = False, repr(e)
                lat[i] = time.perf_counter() - t
                if not ok:
                    errors.append(msg)
                    if not msg[:3].isdigit():  # an exception, not an HTTP status: the connection is broken, a new one
                        writer.close()
                        reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    async def main():
        await asyncio.gather(*(client() for _ in range(concurrency)))

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    return lat, len(errors), wall, errors[:5]


def _run_httpx(base: str, bodies: list, concurrency: int) -> tuple[np.ndarray, int, float, list[str]]:
    """Send every body from `concurrency` threads, each with its own keep-alive httpx client."""
    import json

    import httpx

    lat = np.zeros(len(bodies))
    errors: list[str] = []
    lock = threading.Lock()
    nxt = iter(range(len(bodies)))

    def client():
        with httpx.Client(base_url=base, timeout=60) as c:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                t = time.perf_counter()
                try:
                    b = bodies[i]
                    if isinstance(b, tuple):
                        r = c.post("/search", files={"image": ("photo.jpg", b[1], "image/jpeg")},
                                   data={"manipulations": json.dumps(b[2]), "k": "30"})
                    else:
                        r = c.post("/search", json=b)
                    ok = r.status_code == 200 and r.json()["results"] is not None
                    msg = f"{r.status_code} {r.text[:120]}"
                except Exception as e:  # counted, never hidden
                    ok, msg = False, repr(e)
                lat[i] = time.perf_counter() - t
                if not ok:
                    with lock:
                        errors.append(msg)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return lat, len(errors), wall, errors[:5]


def _uploads(bodies: list[dict], catalog, n: int) -> list[tuple]:
    """The first `n` queries as photo uploads: the item's image file bytes and its manipulation."""
    out = []
    for b in bodies[:n]:
        out.append(("upload", Path(catalog[b["item_id"]].image).read_bytes(), b.get("manipulations", {})))
    return out


def _cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) of a process and its live children (Linux /proc; None elsewhere): on a shared
    machine the server's CPU per request is steadier than its requests per second."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, found = 0.0, False
    try:
        procs = [d for d in Path("/proc").iterdir() if d.name.isdigit()]
    except OSError:
        return None
    for d in procs:
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(d.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
            found = True
    return total if found else None


def _start(run, index, catalog, cache_dir, port, workers, env) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "vestis.cli", "serve", "--run", str(run), "--index", str(index), "--port", str(port)]
    if workers != 1:
        cmd += ["--workers", str(workers)]
    if catalog is not None:
        cmd += ["--catalog", str(catalog)]
    if cache_dir is not None:
        cmd += ["--cache", str(cache_dir)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        if server.poll() is not None:
            raise VestisError(f"the server exited (code {server.returncode}): {server.stdout.read()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            server.terminate()
            raise VestisError("the server did not start within 300 s")
        time.sleep(0.3)


def _batched(base: str) -> tuple[int, int] | None:
    """(searches, batches) the server says it has answered (GET /health; one process of several: its own), None
    from a server that does not batch."""
    import httpx

    try:
        b = httpx.get(base + "/health", timeout=10).json().get("batched")
        return (int(b["searches"]), int(b["batches"])) if b else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def bench_serve(run: Path, index: Path, catalog: Path | None = None, n_requests: int = 2000, concurrency: int = 8,
                repeats: int = 3, cache_dir: Path | None = None, port: int | None = None,
                workers: tuple[int, ...] = (1,), uploads: int = 0) -> str:
    """One table row per server configuration (`workers`: a server with that many processes, started in turn,
    each sent the same queries). `uploads` > 0 also sends that many photo uploads (the query items' image files,
    multipart, with their manipulation) per configuration, after the item queries: their p50 is reported apart."""
    bench_run = BenchRun.load(run, index, cache_dir=cache_dir, catalog_path=catalog)  # for the query list only
    bodies = _queries(bench_run.catalog, bench_run.model.schema, n_requests * repeats + WARMUP)
    photos = _uploads(bodies, bench_run.catalog, uploads) if uploads else []
    # VESTIS_BENCH_SERVER_SRC: serve another source tree (e.g. an earlier commit's src/) with the same clients
    src = os.environ.get("VESTIS_BENCH_SERVER_SRC") or str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    m = machine_info()
    lines = [f"vestis bench serve: {n_requests} POST /search item-id queries (one manipulation each, k 30) x {repeats} "
             f"repeats, {concurrency} concurrent keep-alive clients, server: `vestis serve --workers N` (uvicorn) on "
             f"loopback" + (f"; then {uploads} photo uploads (multipart, one manipulation, k 30)" if uploads else ""),
             f"run {bench_run.run_id} ({bench_run.model.name}), {len(bench_run.space)} items indexed "
             f"({bench_run.index_name})",
             f"machine at the start: {format_machine(m, ())}", ""]
    header = ("| workers | repeat | p50 ms | p99 ms | requests/s | server CPU ms / request | client CPU ms / request | "
              "requests per batch | errors |")
    lines += [header, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    upload_rows = []
    for n_workers in workers:
        server = _start(run, index, catalog, cache_dir, port or _free_port(), n_workers, env)
        try:
            base = _base_of(server)
            _run(base, bodies[:WARMUP], concurrency)
            latencies, rows = [], []
            total_errors, samples = 0, []
            for r in range(repeats):
                chunk = bodies[WARMUP + r * n_requests: WARMUP + (r + 1) * n_requests]
                cpu0, own0, b0 = _cpu_seconds(server.pid), time.process_time(), _batched(base)
                lat, n_err, wall, errs = _run(base, chunk, concurrency)
                cpu1, own1, b1 = _cpu_seconds(server.pid), time.process_time(), _batched(base)
                total_errors += n_err
                samples += errs
                latencies.append(lat)
                rows.append({"rps": len(chunk) / wall, "wall": wall, "errors": n_err,
                             "cpu": (cpu1 - cpu0) / len(chunk) * 1000 if cpu0 is not None and cpu1 is not None else None,
                             "client": (own1 - own0) / len(chunk) * 1000,
                             "batch": (b1[0] - b0[0]) / max(b1[1] - b0[1], 1) if b0 and b1 and n_workers == 1 else None})
            if photos:
                _run(base, photos[:min(10, len(photos))], concurrency)  # the upload path's own warm-up
                lat, n_err, wall, errs = _run(base, photos, concurrency)
                upload_rows.append((n_workers, Timings(lat[None]), len(photos) / wall, n_err, errs))
        finally:
            _stop(server)
        timings = Timings(np.stack(latencies))
        def cpu(v):
            return "-" if v is None else f"{v:.2f}"

        for i, (r, p50, p99) in enumerate(zip(rows, timings.per_pass_ms(50), timings.per_pass_ms(99)), 1):
            lines.append(f"| {n_workers} | {i} | {p50:.1f} | {p99:.1f} | {r['rps']:.1f} | {cpu(r['cpu'])} | "
                         f"{cpu(r['client'])} | {cpu(r['batch'])} | {r['errors']} |")
        rps = statistics.median(r["rps"] for r in rows)
        cpus = [r["cpu"] for r in rows if r["cpu"] is not None]
        batches = [r["batch"] for r in rows if r["batch"] is not None]  # (with workers > 1: one process's, not shown)
        lines.append(f"| {n_workers} | **median** | {timings.ms(50):.1f} | {timings.ms(99):.1f} | {rps:.1f} | "
                     f"{cpu(statistics.median(cpus) if cpus else None)} | "
                     f"{cpu(statistics.median(r['client'] for r in rows))} | "
                     f"{cpu(statistics.median(batches) if batches else None)} | {total_errors} total |")
        if samples:
            lines.append("errors, first ones: " + " | ".join(samples))
    if upload_rows:
        lines += ["", "| workers | photo uploads | p50 ms | p99 ms | requests/s | errors |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n_workers, t, rps, n_err, errs in upload_rows:
            lines.append(f"| {n_workers} | {len(photos)} | {t.ms(50):.1f} | {t.ms(99):.1f} | {rps:.1f} | {n_err} |")
    lines += ["", f"machine at the end: {format_machine(machine_info(), ())}"]
    return "\n".join(lines)


def _base_of(server: subprocess.Popen) -> str:
    """The URL of a server `_start` started (its --port)."""
    return f"http://127.0.0.1:{server.args[server.args.index('--port') + 1]}"
