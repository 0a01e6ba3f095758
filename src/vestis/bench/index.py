"""Index benchmark on synthetic clustered vectors (PROTOCOLS.md section 5): build time, single-query
latency p50 / p99 and recall@k against exact search on the same vectors, with the machine it ran on.

    python -m vestis.bench.index --n 200000 --dim 128 --queries 500 --k 30

`bench_index` takes arrays and returns rows (dicts); `format_table` renders them as Markdown.
Latency is per query at batch size 1 (one `search` call per query, filters off unless given),
timed after a warm-up; p50 / p99 are computed per repeat and the median over repeats is reported
(`vestis.bench.timing`). Recall@k = |returned top-k  intersect  exact top-k| / k, averaged over queries
(`vestis.bench.recall`: exact scores over the same vectors and metric; with filters, over the matching items).
`vestis bench search` measures the same on a trained run's own vectors, and also reports recall with ties.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from vestis.bench.recall import exact_scores, recall_at_k
from vestis.bench.timing import time_calls
from vestis.index import create_index
from vestis.machine import format_machine, machine_info

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


def _matching(attributes: Sequence[Mapping[str, str]], filters: Mapping) -> np.ndarray:
    """Which items pass `filters` ({attribute: value or values}, every attribute must match)."""
    allowed = {a: {v} if isinstance(v, str) else set(v) for a, v in filters.items()}
    return np.array([all(it.get(a) in vals for a, vals in allowed.items()) for it in attributes], dtype=bool)


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
    scores = exact_scores(vectors, queries, metric)
    if filters:
        scores[:, ~_matching(attributes, filters)] = -np.inf
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
                    one = dict(params, **({"filters": filters} if filters else {}))
                    lat = time_calls(lambda q: index.search(q, k, **one), queries, repeats)
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
                        "p50_ms": round(lat.ms(50), 3), "p99_ms": round(lat.ms(99), 3),
                        "batch_ms_per_query": round(batch_ms, 3),
                        f"recall@{k}": round(recall_at_k(found, scores, k).plain, 4),
                        "repeats": repeats, "machine": info,
                    }
                    log(f"[bench] {backend}/{kind} {params}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                        f"recall@{k} {row[f'recall@{k}']}")
                    rows.append(row)
                index.close()
    return rows


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
    lines.append("")
    lines.append(f"Machine: {format_machine(rows[0]['machine'], ('faiss-cpu', 'faiss-gpu', 'numpy'))} when the run "
                 f"began. Gallery {rows[0]['n']} x "
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
