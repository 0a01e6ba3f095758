"""`vestis bench search`: query latency of manipulation + index search at catalogue scale (PROTOCOLS.md
section 5), on a trained run's real embeddings.

The gallery vectors of an index built with `vestis index` are tiled with small Gaussian perturbations
(5 % of each dimension's spread) up to `n` items, so the neighbourhood structure is that of real
embeddings at the size of a large catalogue. Each query is a real query item (its cached trunk maps) and
manipulation from a query file; one query at a time, the clock covers `embed_query` (the manipulation)
plus `index.search` for k results - image encoding excluded (measured separately, per image, on a
sample). Recall@k of every approximate index is measured against exact search over the same vectors.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vestis.engine import Engine, _embed
from vestis.index import create_index
from vestis.index.bench import exact_neighbours, machine_info, recall_at_k
from vestis.train import catalogue_features


def _tiled(vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    reps = -(-n // len(vectors))
    out = np.concatenate([vectors] * reps)[:n].copy()
    out[len(vectors):] += rng.standard_normal((n - len(vectors), vectors.shape[1])).astype(np.float32) * (
        0.05 * vectors.std(0, keepdims=True))
    return out


def _percentiles(ms: list[float]) -> tuple[float, float]:
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def bench_search(run_dir: Path, index_dir: Path, queries_file: Path, n: int = 200_000, n_queries: int = 300,
                 k: int = 30, kinds=("flat", "hnsw", "ivfpq"), milvus_n: int = 20_000, cache_dir: Path | None = None,
                 log=print) -> str:
    from vestis.eval.queries import read_queries

    engine = Engine.load(run_dir, index_dir, cache_dir=cache_dir)
    model = engine.model
    gallery_ids = engine.spaces["main"].ids()
    gallery = engine.catalog.filter(lambda it: it.id in set(gallery_ids))
    feats = catalogue_features(gallery, engine.spec, engine.cache_dir, progress=False)
    base = _embed(model.embed, feats.maps)
    vectors = _tiled(base, n)
    qs = [q for q in read_queries(queries_file) if q.get("item_id")][:n_queries]
    maps = engine.item_maps([q["item_id"] for q in qs])
    one = [{lv: v[i:i + 1] for lv, v in maps.items()} for i in range(len(qs))]
    with torch.inference_mode():
        qvec = np.concatenate([model.embed_query(m, [q.get("manipulations") or {}]).numpy() for m, q in zip(one, qs)])
    truth = exact_neighbours(vectors, qvec, k, model.metric)
    ids = [str(i) for i in range(n)]
    rows = []
    milvus_n = min(milvus_n, n)
    configs = [("faiss", kind, n) for kind in kinds] + ([("milvus", "hnsw", milvus_n)] if milvus_n else [])
    for backend, kind, size in configs:
        with tempfile.TemporaryDirectory(prefix="vestis-bench-") as tmp:
            opts = {"work_dir": tmp} if backend == "milvus" else {}
            t = time.perf_counter()
            index = create_index(backend, kind, vectors.shape[1], model.metric, **opts)
            index.add(ids[:size], vectors[:size])
            build = time.perf_counter() - t
            sub_truth = truth if size == n else exact_neighbours(vectors[:size], qvec, k, model.metric)
            nq = len(qs) if backend == "faiss" else min(len(qs), 50)
            lat, found = [], []
            with torch.inference_mode():
                for m, q in list(zip(one, qs))[:nq]:
                    t = time.perf_counter()
                    v = model.embed_query(m, [q.get("manipulations") or {}]).numpy()
                    res = index.search(v, k)
                    lat.append((time.perf_counter() - t) * 1000)
                    found.append([int(i) for i in res.ids[0]])
            p50, p99 = _percentiles(lat)
            rows.append({"backend": backend, "kind": kind, "items": size, "queries": nq, "build_s": build,
                         "p50_ms": p50, "p99_ms": p99, "recall": recall_at_k(found, sub_truth[:nq], k)})
            index.close() if hasattr(index, "close") else None
            log(f"{backend} {kind}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, recall@{k} {rows[-1]['recall']:.4f}")
    # image encoding, per image, for "including encoding" latency
    enc = []
    for q in qs[:30]:
        t = time.perf_counter()
        engine.encode_images([engine.catalog[q["item_id"]].image])
        enc.append((time.perf_counter() - t) * 1000)
    e50, e99 = _percentiles(enc[3:])
    m = machine_info()
    lines = [f"Search latency (PROTOCOLS.md section 5): run `{engine.info.run_id}` ({model.name}), "
             f"{vectors.shape[1]}-d vectors, metric {model.metric}, k={k}, batch size 1, "
             f"gallery = {len(base)} real gallery embeddings tiled/perturbed to the stated size",
             f"machine: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB, no accelerator; load avg {m['load_avg_1m']}",
             "", "| backend | kind | items | queries | build s | p50 ms | p99 ms | recall@%d vs exact |" % k,
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['kind']} | {r['items']} | {r['queries']} | {r['build_s']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['recall']:.4f} |")
    lines += ["", f"Image encoding (decode + letterbox + trunk, one image): p50 {e50:.1f} ms, p99 {e99:.1f} ms; "
              "latency including encoding = encoding + the row above."]
    return "\n".join(lines)
