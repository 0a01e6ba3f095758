"""`vestis index`: embed a catalogue with a trained run into one index per vector space the run's model declares.

An index directory holds one sub-folder per space (`model.spaces()`: "main", "visual", one per attribute, one per
part...) and `engine.json`, which names the run, the catalogue and what each space holds. A per-attribute space
holds only the items with a known catalogue value of its attribute; a per-part space holds `item#k` vectors with
a `part` attribute (the engine collapses them back to the item).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from vestis import catalogue_ranking
from vestis.catalog import Catalog
from vestis.errors import VestisError
from vestis.fsutil import atomic_write
from vestis.models import run_batched
from vestis.runs import load_run
from vestis.vision.extract import catalogue_features
from vestis.vision.trunk import TrunkSpec

ENGINE_FILE = "engine.json"
PART_SEPARATOR = "#"
CONNECTION_OPTIONS = ("uri", "token", "db_name")  # where a Milvus index lives: the same for every space


def part_id(item_id: str, k: int) -> str:
    return f"{item_id}{PART_SEPARATOR}{k}"


def parent_id(vector_id: str) -> str:
    return vector_id.rsplit(PART_SEPARATOR, 1)[0]


def _space_options(space: str, backend: str, options: dict) -> dict:
    """The main space takes every option given; the others only where a Milvus index lives, in a collection of
    their own (one collection per space: `<collection>_<space>`)."""
    if space == "main":
        return dict(options)
    out = {k: v for k, v in options.items() if k in CONNECTION_OPTIONS}
    if backend == "milvus" and ("collection" in options or out):
        base = options.get("collection", "vestis")
        out["collection"] = f"{base}_{re.sub(r'[^A-Za-z0-9_]', '_', space)}"
    return out


def _label_space(model, feats, attrs) -> tuple[np.ndarray, dict] | None:
    """The label vectors of catalogue-aware ranking, for runs that manipulate, classify every attribute and have
    one "main" vector per item; None for others (they rank by vision alone)."""
    main = model.spaces()["main"]
    if "manipulate" not in model.modes() or main.members != "items" or not model.predicts_attributes:
        return None
    names = model.schema.attributes

    def one_batch(m):
        probs = model.attribute_probabilities(m)
        if set(probs) != set(names):
            return None
        return torch.cat([*(probs[a] for a in names), model.embed(m, "main")], dim=1)

    with torch.inference_mode():
        probe = one_batch({k: torch.from_numpy(v[:1]).float() for k, v in feats.maps.items()})
    if probe is None:
        return None
    both = run_batched(one_batch, feats.maps)
    widths = [len(model.schema.values(a)) + 1 for a in names]
    split = np.cumsum(widths)
    predicted = dict(zip(names, np.split(both[:, :split[-1]], split[:-1], axis=1)))
    blocks = catalogue_ranking.label_blocks(model.schema, attrs, predicted)
    vecs, scale = catalogue_ranking.gallery_vectors(blocks, both[:, split[-1]:], main.metric)
    return vecs, {**scale, "main_metric": main.metric}


def build_index(run_dir: Path, catalog: Catalog, out: Path, *, backend: str = "faiss", kind: str = "auto",
                split: str | None = None, cache_dir: Path, progress: bool = True, **index_options) -> dict:
    """Embed `catalog` (or one split of it) with a trained run and save a searchable index to `out`.

    kind "auto" (the default) chooses per vector space from its size (`vestis.index.auto_kind`): exact
    search for small catalogues, the tuned HNSW graph for large ones; `engine.json` records the choice."""
    from vestis.index import create_index

    model, info = load_run(run_dir)
    spec = TrunkSpec.from_json(info.trunk)
    part = catalog.split(split) if split else catalog
    if len(part) == 0:
        raise VestisError(f"nothing to index: the catalogue has no {split!r} items")
    feats = catalogue_features(part, spec, cache_dir, progress=progress)
    if len(feats) == 0:
        raise VestisError(f"no item of the catalogue has features ({feats.describe()})")
    attrs = [part[i].attributes for i in feats.ids]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spaces = {}
    for name, space in model.spaces().items():
        vecs = run_batched(lambda m, name=name: model.embed(m, name), feats.maps)
        ids, rows = list(feats.ids), [dict(a) for a in attrs]
        if space.members == "known":  # only items whose catalogue knows the attribute (PROTOCOLS.md section 2)
            known = set(model.schema.values(space.attribute))
            keep = np.array([a.get(space.attribute) in known for a in attrs], bool)
            vecs, ids, rows = vecs[keep], [i for i, k in zip(ids, keep) if k], [r for r, k in zip(rows, keep) if k]
        elif space.members == "parts":  # (N, K, D) -> N*K vectors item#k
            n, k = vecs.shape[:2]
            vecs = vecs.reshape(n * k, -1)
            ids = [part_id(i, j) for i in ids for j in range(k)]
            rows = [{**r, "part": str(j)} for r in rows for j in range(k)]
        if vecs.shape[-1] != space.dim:
            raise VestisError(f"model {model.name} declares space {name!r} of {space.dim} dimensions but embeds "
                              f"{vecs.shape[-1]}")
        idx = create_index(backend=backend, kind=kind, dim=space.dim, metric=space.metric, run_id=info.run_id,
                           schema_digest=model.schema.digest(), attributes=sorted({a for d in rows for a in d}),
                           n_items=len(ids), **_space_options(name, backend, index_options))
        if ids:
            idx.add(ids, vecs, rows)
        idx.save(out / name)
        spaces[name] = {"kind": idx.kind, "dim": space.dim, "metric": space.metric, "members": space.members,
                        "attribute": space.attribute, "parts": space.parts, "count": len(ids)}
        idx.close()
    labels = _label_space(model, feats, attrs)
    if labels is not None:  # catalogue-aware ranking (labels on): vestis.catalogue_ranking
        vecs, scale = labels
        idx = create_index(backend=backend, kind=kind, dim=vecs.shape[1], metric="ip", run_id=info.run_id,
                           schema_digest=model.schema.digest(), attributes=sorted({a for d in attrs for a in d}),
                           n_items=len(feats.ids), **_space_options(catalogue_ranking.SPACE, backend, index_options))
        idx.add(list(feats.ids), vecs, [dict(a) for a in attrs])
        idx.save(out / catalogue_ranking.SPACE)
        spaces[catalogue_ranking.SPACE] = {"kind": idx.kind, "dim": int(vecs.shape[1]), "metric": "ip",
                                           "members": "items", "attribute": None, "parts": 1, "count": len(feats.ids),
                                           "labels": scale}
        idx.close()
    meta = {"run_id": info.run_id, "run_dir": str(Path(run_dir).resolve()), "model": info.model,
            "catalog": {"path": str(Path(catalog.path).resolve()) if catalog.path else None,
                        "format": catalog.source, "name": catalog.name, "split": split},
            "backend": backend, "kind": kind, "kinds": {s: d["kind"] for s, d in spaces.items()}, "spaces": spaces,
            "count": len(feats.ids),
            "without_features": {"missing": len(feats.missing), "unreadable": len(feats.unreadable),
                                 "not_extracted": len(feats.not_extracted)}}
    atomic_write(out / ENGINE_FILE, json.dumps(meta, indent=1) + "\n")
    return meta
