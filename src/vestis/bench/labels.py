"""`vestis bench labels`: the time a catalogue-aware (labels on) manipulation query takes at catalogue scale.

The gallery is `vestis.bench.gallery`'s: every real item with cached maps plus variants made in feature-map space,
up to `n`, each through the run's own classifiers and embedding. Real items keep their catalogue labels; a variant
is labelled with the run's own predicted values (a stand-in for a merchandiser's labels: a new product has
labels, and they agree with its picture about as often as the classifier does). Their label vectors
(`vestis.catalogue_ranking.gallery_vectors`) go into the default index (`kind="auto"`) with their labels as
filterable attributes, exactly as `vestis index` builds the "labels" space.

One query at a time (batch size 1), from the cached maps of protocol-1 query items (image encoding excluded;
`vestis bench search` reports it): the run's attribute probabilities and manipulated query vector, the label-space
query vector, the search with the requested values as a filter INSIDE the index, and - where fewer than k items
meet them - the unconstrained search that fills the list, as `Engine.search_maps` does. p50 / p99 are medians
over `repeats` passes (`vestis.bench.timing`); recall@k compares the constrained results with the exact top k among
the items that pass the same filter.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vestis import catalogue_ranking as CR
from vestis.bench.adapter import BenchRun
from vestis.bench.recall import recall_at_k
from vestis.bench.timing import time_calls
from vestis.errors import VestisError
from vestis.machine import format_machine, machine_info


def _label_rows(model, probs: np.ndarray) -> list[dict]:
    """The predicted value of every attribute (the arg-max, "unspecified" left out) as a label dict per row."""
    out = [{} for _ in range(len(probs))]
    off = 0
    for a in model.schema.attributes:
        values = model.schema.values(a)
        best = probs[:, off:off + len(values) + 1].argmax(1)
        for row, b in zip(out, best.tolist()):
            if b < len(values):
                row[a] = values[b]
        off += len(values) + 1
    return out


def bench_labels(run_dir: Path, index_dir: Path, queries_file: Path, n: int = 200_000, n_queries: int = 300,
                 k: int = 30, repeats: int = 3, seed: int = 0, cache_dir: Path | None = None,
                 index_options: dict | None = None, log=print) -> str:
    """`index_options`: options of the FAISS index over the default `kind="auto"` choice (e.g.
    {"exact_filter_fraction": 0.05}: filters matching at most that share of the items are answered by an exact scan
    of the matches, broader ones by the filtered graph walk)."""
    from vestis.bench.gallery import augmented_gallery, cached_gallery
    from vestis.eval.queries import read_queries
    from vestis.index import create_index

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = BenchRun.load(run_dir, index_dir, cache_dir=cache_dir)
        model, engine = run.model, run.engine
        if CR.SPACE not in engine.spaces:
            raise VestisError(f"index {index_dir} has no label space (model {model.name} does not classify every "
                              "attribute, or the index predates it): rebuild it with `vestis index`")
        names = model.schema.attributes
        width = sum(len(model.schema.values(a)) + 1 for a in names)

        def probs_and_main(maps):
            t = {lv: torch.from_numpy(np.asarray(v, np.float32)) for lv, v in maps.items()}
            with torch.inference_mode():
                p = model.attribute_probabilities(t)
                return torch.cat([*(p[a] for a in names), model.embed(t, "main")], dim=1).numpy()

        t0 = time.perf_counter()
        feats = run.catalogue_maps()
        real_ids = list(feats.ids)
        both = cached_gallery(run.cache_dir, f"{run.run_id}-{run.catalog.name}-labels-n{n}-s{seed}",
                              lambda: augmented_gallery(probs_and_main, feats.maps, n, seed=seed, log=log))[:n]
        del feats
        labels = [dict(run.catalog[i].attributes) for i in real_ids[:n]] + _label_rows(model, both[len(real_ids):, :width])
        blocks = CR.label_blocks(model.schema, labels, dict(zip(names, np.split(
            both[:, :width], np.cumsum([len(model.schema.values(a)) + 1 for a in names])[:-1], axis=1))))
        main_metric = model.spaces()["main"].metric
        vectors, scale = CR.gallery_vectors(blocks, both[:, width:], main_metric)
        gallery_s = time.perf_counter() - t0
        log(f"[bench] label gallery {vectors.shape} in {gallery_s:.0f} s")
        t0 = time.perf_counter()
        index = create_index("faiss", "auto", vectors.shape[1], "ip", n_items=len(vectors),
                             attributes=sorted({a for d in labels for a in d}), **(index_options or {}))
        ids = [str(i) for i in range(len(vectors))]
        index.add(ids, vectors, labels)
        build_s = time.perf_counter() - t0
        log(f"[bench] {index.kind} index {index.options()} built in {build_s:.0f} s")

        qs = [q for q in read_queries(queries_file) if q.get("item_id") and q.get("manipulations")]
        qs = [qs[i] for i in np.unique(np.linspace(0, len(qs) - 1, min(n_queries, len(qs))).astype(int))]
        queries = [(m, dict(q["manipulations"])) for m, q in zip(run.query_maps([q["item_id"] for q in qs]), qs)]

        def query(q):
            maps, manip = q
            with torch.inference_mode():
                probs = {a: p.numpy() for a, p in model.attribute_probabilities(maps).items()}
                main = model.embed_query(maps, [manip]).numpy()
            qv = CR.query_vectors(model.schema, CR.targets(model.schema, probs, [manip], None), main, main_metric,
                                  scale, engine.label_weight)
            res = index.search(qv, k, filters=CR.constraints(manip))
            got = list(res.ids[0])
            if len(got) < k:  # the closest others follow
                more = index.search(qv, 2 * k).ids[0]
                got += [i for i in more if i not in set(got)][:k - len(got)]
            return qv, got

        timing = time_calls(query, queries, repeats)
        # recall of the constrained part against the exact top k among the items that pass the same filter
        columns = {a: np.array([lab.get(a, "") for lab in labels], dtype=object) for a in names}
        plain, ties = [], []
        for (maps, manip), (qv, got) in zip(queries, timing.results):
            keep = np.ones(len(labels), bool)
            for a, v in manip.items():
                keep &= (columns[a] == v) | (columns[a] == "")
            exact = np.where(keep, vectors @ qv[0], -np.inf)[None]
            r = recall_at_k([[int(i) for i in got[:int(keep.sum())]]], exact, k)
            plain.append(r.plain)
            ties.append(r.with_ties)
        recall = type(r)(float(np.mean(plain)), float(np.mean(ties)))
    finally:
        torch.set_num_threads(torch_threads)
    m = machine_info()
    return "\n".join([
        f"## Catalogue-aware (labels on) query time: {model.name}, {len(vectors):,} items x {vectors.shape[1]}-d",
        "",
        f"- gallery: {len(real_ids):,} real items (catalogue labels) + {max(0, len(vectors) - len(real_ids)):,} "
        f"feature-map variants (labelled with the run's predictions), built in {gallery_s:.0f} s",
        f"- index: FAISS {index.kind} {index.options()}, built in {build_s:.0f} s",
        f"- {len(queries)} protocol-1 queries x {repeats} passes, k {k}, batch size 1, torch 1 thread",
        f"- p50 **{timing.ms(50):.2f} ms**, p99 {timing.ms(99):.2f} ms (attribute probabilities, manipulation, label "
        f"vector, filtered search, fill)",
        f"- recall@{k} of the constrained results against the exact top {k} under the same filter: "
        f"{recall.plain:.4f} (with ties {recall.with_ties:.4f})",
        f"- machine: {format_machine(m, ('torch', 'faiss'))}",
    ])
