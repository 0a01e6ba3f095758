"""`vestis bench query`: the time one manipulation query takes through the engine, as a user's request
would (PROTOCOLS.md section 5): the model's manipulation (`embed_query`) plus the search of the index as
it was built (its kind and size), the query item itself excluded, k results with their catalogue entries.
One query at a time (batch size 1) on the query items' cached trunk maps, so image encoding is excluded;
`vestis bench search` covers index scaling and encoding separately. Reports p50 and p99 of the whole query,
and p50 of the two parts timed on their own (`embed_query` alone; the index search of its vector alone), each
the median over `repeats` passes of the pass's percentile (`vestis.bench.timing`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vestis.bench.adapter import BenchRun
from vestis.bench.timing import time_calls
from vestis.errors import VestisError


def bench_query(run_dir: Path, index_dir: Path, queries_file: Path, n_queries: int = 500, k: int = 30,
                repeats: int = 3, warmup: int = 20, cache_dir: Path | None = None, labels: bool = False) -> dict:
    """labels=True times the catalogue-aware query (attribute probabilities, label-space vector, the constrained
    search inside the index, and its fill when fewer than k items meet the request) as a whole."""
    from vestis.eval.queries import read_queries

    run = BenchRun.load(run_dir, index_dir, cache_dir=cache_dir)
    qs = [q for q in read_queries(queries_file) if q.get("item_id")][:n_queries]
    if not qs:
        raise VestisError(f"{queries_file} has no catalogue-item queries to time")
    queries = [(m, dict(q.get("manipulations") or {}), q["item_id"])
               for m, q in zip(run.query_maps([q["item_id"] for q in qs]), qs)]
    with torch.no_grad():
        total = time_calls(lambda q: run.search(q[0], q[1], k, exclude=q[2], labels=labels), queries, repeats, warmup)
        manipulation = time_calls(lambda q: run.embed_query(q[0], q[1]), queries, repeats, warmup)
        vectors = [np.asarray(v, dtype=np.float32) for v in manipulation.results]
        search = time_calls(lambda v: run.space.search(v, k + 1), vectors, repeats, warmup)
    return {"run": run.run_id, "model": run.model.name, "index": f"{type(run.space).__name__} {run.space.kind}",
            "gallery_size": len(run.space.ids()), "dim": int(vectors[0].shape[1]), "k": k, "queries": len(qs),
            "repeats": repeats, "torch_threads": torch.get_num_threads(), "labels": "on" if labels else "off",
            "p50_ms": total.ms(50), "p99_ms": total.ms(99),
            "manipulation_p50_ms": manipulation.ms(50), "search_p50_ms": search.ms(50)}


def describe(r: dict) -> str:
    return (f"{r['model']} ({r['run']}), labels {r.get('labels', 'off')}: {r['queries']} queries x {r['repeats']}, k={r['k']}, gallery "
            f"{r['gallery_size']:,} x {r['dim']}-d, index {r['index']}, torch threads {r['torch_threads']}\n"
            f"  manipulation + search: p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms "
            f"(manipulation alone p50 {r['manipulation_p50_ms']:.2f} ms, search alone p50 {r['search_p50_ms']:.2f} ms)")
