"""Index benchmark (PROTOCOLS.md section 5): build time, single-query latency p50 / p99 and recall@k
against exact search on the same vectors, with the machine it ran on.

    python -m vestis.index.bench --n 200000 --dim 128 --queries 500 --k 30

`bench_index` takes arrays and returns rows (dicts); `format_table` renders them as Markdown.
Latency is per query at batch size 1 (one `search` call per query, filters off unless given),
timed with `time.perf_counter` after a warm-up; p50 / p99 are computed per repeat and the median
over repeats is reported. Recall@k = |returned top-k  intersect  exact top-k| / k, averaged over queries
(the exact top-k from a FAISS flat index over the same vectors and metric). Where exact ties decide
which items make the top k (duplicate vectors), `recall_with_ties` also counts a returned item as a hit
when its exact score is >= the k-th exact score (minus a relative 1e-5 for float rounding); both are
reported by `vestis bench search` ("recall@k" and "recall@k ties").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from vestis.index import create_index  # first: it sets OMP_WAIT_POLICY before FAISS loads

import faiss  # noqa: E402  (after vestis.index on purpose)

DEFAULT_SWEEPS: dict[str, list[dict]] = {
    "flat": [{}],
    "hnsw": [{"ef_search": e} for e in (32, 64, 96, 128)],
    "ivfpq": [{"nprobe": p} for p in (8, 16, 24, 32)],
}


def clustered_vectors(n: int, dim: int, n_clusters: int = 2000, spread: float = 1.0, seed: int = 0,
                      centers: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`n` L2-normalised float32 vectors around `n_clusters` random unit centres (Gaussian noise of
    total norm ~`spread`); returns (vectors, centres). Pass `centres` back to draw queries from the
    same clusters."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    step = 50_000
    for s in range(0, n, step):
        m = min(step, n - s)
        c = centers[rng.integers(0, len(centers), m)]
        x = c + rng.standard_normal((m, dim)).astype(np.float32) * (spread / np.sqrt(dim))
        out[s: s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centers


def exact_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip") -> np.ndarray:
    """Row numbers of the exact top-k per query."""
    idx = faiss.IndexFlatIP(vectors.shape[1]) if metric == "ip" else faiss.IndexFlatL2(vectors.shape[1])
    idx.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return idx.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at_k(found: Sequence[Sequence[int]], truth: np.ndarray, k: int) -> float:
    hits = [len(set(f[:k]) & set(t[:k].tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k) if hits else float("nan")


def exact_scores(vectors: np.ndarray, queries: np.ndarray, metric: str = "ip", chunk: int = 65536) -> np.ndarray:
    """(n_queries, n) float32 exact scores, higher is better (inner product, or minus squared L2)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.empty((len(q), len(vectors)), dtype=np.float32)
    for s in range(0, len(vectors), chunk):
        x = np.ascontiguousarray(vectors[s: s + chunk], dtype=np.float32)
        ip = q @ x.T
        if metric == "l2":
            ip = 2 * ip - (q * q).sum(1, keepdims=True) - (x * x).sum(1)[None, :]
        out[:, s: s + chunk] = ip
    return out


def recall_with_ties(found: Sequence[Sequence[int]], scores: np.ndarray, k: int, rel_eps: float = 1e-5) -> float:
    """Recall@k counting ties: a returned row number is a hit when its exact score (`scores`, from
    `exact_scores`) is >= the k-th best exact score minus rel_eps * max(1, |k-th score|)."""
    kk = min(k, scores.shape[1])
    kth = np.partition(scores, -kk, axis=1)[:, -kk]
    hits = []
    for i, f in enumerate(found):
        f = np.asarray(list(f)[:k], dtype=np.int64)
        f = f[f >= 0]
        eps = rel_eps * max(1.0, abs(float(kth[i])))
        hits.append(int((scores[i, f] >= kth[i] - eps).sum()) if len(f) else 0)
    return float(np.mean(hits) / kk) if hits else float("nan")


def machine_info() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    cpu, mem = platform.processor() or "unknown", None
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    try:
        load = round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        load = None
    return {"cores": cores, "cpu": cpu, "memory_gib": mem, "accelerator": "none", "load_avg_1m": load,
            "python": sys.version.split()[0],
            "platform": platform.platform(), "faiss": faiss.__version__, "numpy": np.__version__}


def _latencies(index, queries: np.ndarray, k: int, params: dict, warmup: int = 20) -> np.ndarray:
    for q in queries[:warmup]:
        index.search(q, k, **params)
    out = np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        index.search(q, k, **params)
        out[i] = time.perf_counter() - t
    return out * 1000.0


def bench_index(vectors: np.ndarray, queries: np.ndarray, k: int = 30, kinds: Iterable[str] = ("flat", "hnsw", "ivfpq"),
                backends: Iterable[str] = ("faiss",), repeats: int = 3, metric: str = "ip",
                options: Mapping[str, Mapping] | None = None, sweeps: Mapping[str, Sequence[dict]] | None = None,
                filters: Mapping | None = None, attributes: Sequence[Mapping[str, str]] | None = None,
                log=print) -> list[dict]:
    """Build each (backend, kind) index over `vectors` and measure it on `queries`.

    options: per kind (or "backend/kind") construction options; sweeps: per kind a list of
    search-option dicts, each measured as its own row (default: the kind's default only, i.e. [{}]);
    a sweep entry may also set the faiss option ``single_query_threads``.
    `filters` (+ the items' `attributes`) measures filtered searches instead; recall is then
    against the exact top-k among matching items. Returns one dict per measured configuration.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, dim = vectors.shape
    ids = [str(i) for i in range(n)]
    if filters:
        ref = create_index("faiss", "flat", dim, metric)
        ref.add(ids, vectors, attributes)
        truth = np.array([[int(i) for i in r] + [-1] * (k - len(r)) for r in ref.search(queries, k, filters).ids])
        ref.close()
    else:
        truth = exact_neighbours(vectors, queries, k, metric)
    info = machine_info()
    rows = []
    for backend in backends:
        for kind in kinds:
            opts = dict((options or {}).get(f"{backend}/{kind}", (options or {}).get(kind, {})))
            with tempfile.TemporaryDirectory(prefix="vestis-bench-") as tmp:
                if backend == "milvus":
                    opts.setdefault("work_dir", tmp)
                t = time.perf_counter()
                index = create_index(backend, kind, dim, metric, **opts)
                index.add(ids, vectors, attributes)
                build_s = time.perf_counter() - t
                effective = index.options()
                log(f"[bench] {backend}/{kind}: built {n} x {dim} in {build_s:.1f} s")
                for params in (sweeps or {}).get(kind, [{}]):
                    params = dict(params)
                    sq_threads = params.pop("single_query_threads", None)
                    if sq_threads is not None:  # a faiss construction option, switched in place for the sweep
                        index._opts["single_query_threads"] = int(sq_threads)
                    lat = [_latencies(index, queries, k, dict(params, **({"filters": filters} if filters else {})))
                           for _ in range(repeats)]
                    res = index.search(queries, k, filters, **params)
                    found = [[int(i) for i in r] for r in res.ids]
                    t = time.perf_counter()
                    index.search(queries, k, filters, **params)
                    batch_ms = (time.perf_counter() - t) * 1000 / len(queries)
                    row = {
                        "backend": backend, "kind": kind,
                        "params": {**{p: effective.get(p) for p in ("M", "ef_construction", "ef_search", "nlist", "m",
                                                                      "nbits", "nprobe", "refine_factor",
                                                                      "index_type") if p in effective},
                                   **params, **({"single_query_threads": sq_threads} if sq_threads else {})},
                        "n": n, "dim": dim, "metric": metric, "k": k, "queries": len(queries),
                        "filters": dict(filters) if filters else None, "batch_size": 1,
                        "build_s": round(build_s, 2),
                        "p50_ms": round(float(np.median([np.percentile(x, 50) for x in lat])), 3),
                        "p99_ms": round(float(np.median([np.percentile(x, 99) for x in lat])), 3),
                        "batch_ms_per_query": round(batch_ms, 3),
                        f"recall@{k}": round(recall_at_k(found, truth, k) if not filters else
                                             _filtered_recall(found, truth), 4),
                        "repeats": repeats, "machine": info,
                    }
                    log(f"[bench] {backend}/{kind} {params}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                        f"recall@{k} {row[f'recall@{k}']}")
                    rows.append(row)
                index.close()
    return rows


def _filtered_recall(found, truth) -> float:
    vals = []
    for f, t in zip(found, truth):
        t = [x for x in t.tolist() if x >= 0]
        if t:
            vals.append(len(set(f) & set(t)) / len(t))
    return float(np.mean(vals)) if vals else float("nan")


def format_table(rows: Sequence[dict]) -> str:
    if not rows:
        return ""
    k = rows[0]["k"]
    head = ["backend", "kind", "params", "build s", "p50 ms", "p99 ms", "batch ms/q", f"recall@{k}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        params = ", ".join(f"{a}={b}" for a, b in r["params"].items() if b is not None)
        lines.append(f"| {r['backend']} | {r['kind']} | {params} | {r['build_s']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['batch_ms_per_query']} | {r[f'recall@{k}']} |")
    m = rows[0]["machine"]
    lines.append("")
    lines.append(f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB, accelerator: none, "
                 f"1-min load average {m.get('load_avg_1m')} when the run began; "
                 f"faiss {m['faiss']}, numpy {m['numpy']}, Python {m['python']}. Gallery {rows[0]['n']} x "
                 f"{rows[0]['dim']} float32 ({rows[0]['metric']}), {rows[0]['queries']} queries, batch size 1, "
                 f"median of {rows[0]['repeats']} repeats.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--spread", type=float, default=1.0)
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--kinds", default="flat,hnsw,ivfpq")
    ap.add_argument("--backends", default="faiss")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--metric", default="ip")
    ap.add_argument("--sweep", action="store_true", help="measure several ef_search / nprobe values")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    x, centres = clustered_vectors(a.n, a.dim, a.clusters, a.spread, seed=0)
    q, _ = clustered_vectors(a.queries, a.dim, spread=a.spread, seed=1, centers=centres)
    rows = bench_index(x, q, k=a.k, kinds=a.kinds.split(","), backends=a.backends.split(","), repeats=a.repeats,
                       metric=a.metric, sweeps=DEFAULT_SWEEPS if a.sweep else None)
    print(format_table(rows))
    if a.json:
        import json
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
