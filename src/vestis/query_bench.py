"""`vestis bench query`: the time one manipulation query takes through the engine, as a user's request
would (PROTOCOLS.md section 5): the model's manipulation (`embed_query`) plus the search of the index as
it was built (its kind and size), the query item itself excluded, k results with their catalogue entries.
One query at a time (batch size 1) on the query items' cached trunk maps, so image encoding is excluded;
`vestis bench search` covers index scaling and encoding separately. Reports the median and p99 of all
timed queries, and the medians of the two parts timed on their own.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vestis.engine import Engine
from vestis.errors import VestisError


def bench_query(run_dir: Path, index_dir: Path, queries_file: Path, n_queries: int = 500, k: int = 30,
                repeats: int = 3, warmup: int = 20, cache_dir: Path | None = None) -> dict:
    from vestis.eval.queries import read_queries

    engine = Engine.load(run_dir, index_dir, cache_dir=cache_dir)
    qs = [q for q in read_queries(queries_file) if q.get("item_id")][:n_queries]
    if not qs:
        raise VestisError(f"{queries_file} has no catalogue-item queries to time")
    maps = engine.item_maps([q["item_id"] for q in qs])
    one = [{lv: v[i:i + 1] for lv, v in maps.items()} for i in range(len(qs))]
    mans = [dict(q.get("manipulations") or {}) for q in qs]
    space = engine.spaces["main"]
    with torch.no_grad():
        total, manip, search, dim = _timed(engine, space, qs, one, mans, k, repeats, warmup)
    ms = lambda xs, p: float(np.percentile(xs, p) * 1000)  # noqa: E731
    return {"run": engine.info.run_id, "model": engine.model.name, "index": f"{type(space).__name__} {space.kind}",
            "gallery_size": len(space.ids()), "dim": dim, "k": k, "queries": len(qs), "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "p50_ms": ms(total, 50), "p99_ms": ms(total, 99),
            "manipulation_p50_ms": ms(manip, 50), "search_p50_ms": ms(search, 50)}


def _timed(engine, space, qs, one, mans, k, repeats, warmup):
    for i in range(min(warmup, len(qs))):
        engine.search_maps(one[i], [mans[i]], k=k, exclude=[qs[i]["item_id"]])
    total, manip, search = [], [], []
    for _ in range(repeats):
        for i, q in enumerate(qs):
            t0 = time.perf_counter()
            engine.search_maps(one[i], [mans[i]], k=k, exclude=[q["item_id"]])
            t1 = time.perf_counter()
            v = engine.model.embed_query(one[i], [mans[i]]).numpy().astype(np.float32)
            t2 = time.perf_counter()
            space.search(v, k + 1)
            t3 = time.perf_counter()
            total.append(t1 - t0)
            manip.append(t2 - t1)
            search.append(t3 - t2)
    return total, manip, search, int(v.shape[1])


def describe(r: dict) -> str:
    return (f"{r['model']} ({r['run']}): {r['queries']} queries x {r['repeats']}, k={r['k']}, gallery "
            f"{r['gallery_size']:,} x {r['dim']}-d, index {r['index']}, torch threads {r['torch_threads']}\n"
            f"  manipulation + search: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms "
            f"(manipulation alone p50 {r['manipulation_p50_ms']:.2f} ms, search alone p50 {r['search_p50_ms']:.2f} ms)")
