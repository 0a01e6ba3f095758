"""`vestis index`: embed a catalogue with a trained run into one index per vector space the run's model declares.

An index directory holds `engine.json`, which names the run, the catalogue, what each space holds and the
generation folder the spaces live in, and that folder, with one sub-folder per space (`model.spaces()`: "main",
"visual", one per attribute, one per part...)::

    index_dir/
      engine.json                      <- the commit point: {"generation": "gen-...", "spaces": {...}, ...}
      gen-20261203T150000-1a2b3c4d/
        main/  visual/  labels/ ...    <- vestis.index directories (manifest.json + data-*)

A rebuild writes every space into a NEW generation folder, then replaces engine.json in one rename
(`atomic_write`), then removes the previous generation: a reader - or a rebuild killed at any point - sees the
old index or the new one, never a mix of spaces from two builds. Leftover generations of a killed build are
removed by the next build. engine.json records, per space, the count, run id and the `data_dir` of the space's
manifest (unique to one save), which `Engine.load` checks against each space's manifest (`check_spaces`).

Index folders of the previous layout (spaces directly under index_dir, no "generation") are still read, with
the same count / run id / kind checks, so existing indexes keep working; rebuilding one moves it to the new
layout and removes the old space folders.

A per-attribute space holds only the items with a known catalogue value of its attribute; a per-part space holds
`item#k` vectors with a `part` attribute (the engine collapses them back to the item).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from vestis import catalogue_ranking
from vestis.catalog import Catalog
from vestis.errors import VestisError
from vestis.fsutil import atomic_write
from vestis.models import embed_spaces_batched, run_batched
from vestis.models.base import PART_LABEL
from vestis.runs import load_run
from vestis.vision.extract import catalogue_features
from vestis.vision.trunk import TrunkSpec

ENGINE_FILE = "engine.json"
GENERATION_PREFIX = "gen-"
_GENERATION_RE = re.compile(r"gen-[0-9A-Za-z-]+")
PART_SEPARATOR = "#"
CONNECTION_OPTIONS = ("uri", "token", "db_name")
UPDATES_FILE = "attribute_updates.json"  # in the generation folder: the changes since the build  # where a Milvus index lives: the same for every space


def part_id(item_id: str, k: int) -> str:
    return f"{item_id}{PART_SEPARATOR}{k}"


def parent_id(vector_id: str) -> str:
    return vector_id.rsplit(PART_SEPARATOR, 1)[0]


class IndexLayoutError(VestisError):
    """An index directory whose spaces disagree with its engine.json (a mixed or tampered build)."""


def space_dir(index_dir: Path, meta: dict, space: str) -> Path:
    """Where `space` of the index described by `meta` (its engine.json) lives."""
    gen = meta.get("generation")
    return Path(index_dir) / gen / space if gen is not None else Path(index_dir) / space  # previous layout


def check_spaces(index_dir: Path, meta: dict) -> dict[str, Path]:
    """Each space's folder, after checking that its manifest belongs to the build engine.json describes: the
    generation folder, run id, item count, kind, size and (new layout) the manifest's data folder. Raises
    `IndexLayoutError` naming the first disagreement; reads manifests only (no vectors)."""
    from vestis.index import read_manifest

    index_dir = Path(index_dir)
    where = index_dir / ENGINE_FILE
    rebuild = "rebuild it with `vestis index` (an interrupted or mixed build?)"
    gen = meta.get("generation")
    if gen is not None:
        if not isinstance(gen, str) or not _GENERATION_RE.fullmatch(gen):
            raise IndexLayoutError(f"{where} names an invalid generation {gen!r}; {rebuild}")
        if not (index_dir / gen).is_dir():
            raise IndexLayoutError(f"{where} names generation {gen}, but {index_dir / gen} is missing; {rebuild}")
    out = {}
    for name, rec in meta["spaces"].items():
        d = space_dir(index_dir, meta, name)
        if not isinstance(rec, dict):
            raise IndexLayoutError(f"{where} has no record of space {name!r}; {rebuild}")
        m = read_manifest(d)
        checks = [("run id", meta.get("run_id"), m.run_id), ("item count", rec.get("count"), m.count),
                  ("index kind", rec.get("kind"), m.kind), ("embedding size", rec.get("dim"), m.dim)]
        if gen is not None:  # the manifest of exactly the save this build made
            checks.append(("data folder", rec.get("data_dir"), m.data_dir))
        for what, recorded, found in checks:
            if (recorded is not None or gen is not None) and recorded != found:
                raise IndexLayoutError(f"index {index_dir}: space {name!r} holds {what} {found!r} but {ENGINE_FILE} "
                                       f"records {recorded!r}; {rebuild}")
        out[name] = d
    return out


def read_attribute_updates(index_dir: Path, meta: dict) -> dict[str, dict[str, str | None]]:
    """The attribute changes applied to the index since it was built (`vestis.attribute_updates`): {item id:
    {attribute: value, or None for a cleared label}}, kept in the generation folder; {} for none."""
    rec = meta.get("attribute_updates")
    if not rec:
        return {}
    path = space_dir(index_dir, meta, UPDATES_FILE)
    try:
        changes = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(changes, dict) or not all(isinstance(c, dict) for c in changes.values()):
            raise ValueError("not an object of objects")
    except (OSError, ValueError) as e:
        raise IndexLayoutError(f"cannot read the attribute updates {path} that {ENGINE_FILE} names ({e}); rebuild "
                               f"the index with `vestis index`") from None
    return changes


def _read_meta(index_dir: Path) -> dict | None:
    try:
        meta = json.loads((index_dir / ENGINE_FILE).read_text())
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def _remove_generations(out: Path, keep: str | None) -> None:
    """Generation folders other than `keep`: superseded ones, or half-built ones of a killed build."""
    for p in out.iterdir():
        if p.is_dir() and p.name != keep and _GENERATION_RE.fullmatch(p.name):
            shutil.rmtree(p, ignore_errors=True)


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
                split: str | None = None, cache_dir: Path, progress: bool = True, extract_options: dict | None = None,
                **index_options) -> dict:
    """Embed `catalog` (or one split of it) with a trained run and save a searchable index to `out`.

    kind "auto" (the default) chooses per vector space from its size (`vestis.index.auto_kind`): exact
    search for small catalogues, the tuned HNSW graph for large ones; `engine.json` records the choice.
    Rebuilding in place is atomic: see the module docstring. extract_options: how images not cached yet are
    encoded (`extract_catalog` arguments, e.g. {"engine": "ray", "address": ...})."""
    model, info = load_run(run_dir)
    spec = TrunkSpec.from_json(info.trunk)
    part = catalog.split(split) if split else catalog
    if len(part) == 0:
        raise VestisError(f"nothing to index: the catalogue has no {split!r} items")
    feats = catalogue_features(part, spec, cache_dir, progress=progress, extract_options=extract_options)
    if len(feats) == 0:
        raise VestisError(f"no item of the catalogue has features ({feats.describe()})")
    attrs = [part[i].attributes for i in feats.ids]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = _read_meta(out)
    _remove_generations(out, keep=(previous or {}).get("generation"))  # leftovers of a killed build
    generation = f"{GENERATION_PREFIX}{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    try:
        meta = _build_generation(model, info, feats, attrs, out / generation, backend, kind, index_options)
    except BaseException:
        shutil.rmtree(out / generation, ignore_errors=True)
        raise
    meta = {"run_id": info.run_id, "run_dir": str(Path(run_dir).resolve()), "model": info.model,
            "catalog": {"path": str(Path(catalog.path).resolve()) if catalog.path else None,
                        "format": catalog.source, "name": catalog.name, "split": split},
            "backend": backend, "kind": kind, "generation": generation, **meta,
            "count": len(feats.ids),
            "without_features": {"missing": len(feats.missing), "unreadable": len(feats.unreadable),
                                 "not_extracted": len(feats.not_extracted)}}
    atomic_write(out / ENGINE_FILE, json.dumps(meta, indent=1) + "\n")  # the switch
    _remove_generations(out, keep=generation)
    if previous and previous.get("generation") is None and isinstance(previous.get("spaces"), dict):
        for name in previous["spaces"]:  # the previous layout's space folders
            old = out / str(name)
            if old.parent == out and old.name not in ("", ".", "..") and (old / "manifest.json").is_file():
                shutil.rmtree(old, ignore_errors=True)
    return meta


def _build_generation(model, info, feats, attrs, gen_dir: Path, backend: str, kind: str, index_options: dict) -> dict:
    """Every space of one build, into `gen_dir`; engine.json's "kinds" and "spaces"."""
    from vestis.index import create_index, read_manifest

    gen_dir.mkdir()
    spaces = {}
    declared = model.spaces()
    embedded = embed_spaces_batched(model, list(declared), feats.maps)  # one pass for every space
    for name, space in declared.items():
        vecs, codes = embedded.pop(name)
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
            if space.labels:  # each part's label, for a probe's filter
                for r, c in zip(rows, codes.reshape(-1)):
                    r[PART_LABEL] = space.labels[c]
        if vecs.shape[-1] != space.dim:
            raise VestisError(f"model {model.name} declares space {name!r} of {space.dim} dimensions but embeds "
                              f"{vecs.shape[-1]}")
        idx = create_index(backend=backend, kind=kind, dim=space.dim, metric=space.metric, run_id=info.run_id,
                           schema_digest=model.schema.digest(), attributes=sorted({a for d in rows for a in d}),
                           n_items=len(ids), **_space_options(name, backend, index_options))
        if ids:
            idx.add(ids, vecs, rows)
        idx.save(gen_dir / name)
        spaces[name] = {"kind": idx.kind, "dim": space.dim, "metric": space.metric, "members": space.members,
                        "attribute": space.attribute, "parts": space.parts, "count": len(ids),
                        "data_dir": read_manifest(gen_dir / name).data_dir}
        idx.close()
    labels = _label_space(model, feats, attrs)
    if labels is not None:  # catalogue-aware ranking (labels on): vestis.catalogue_ranking
        vecs, scale = labels
        idx = create_index(backend=backend, kind=kind, dim=vecs.shape[1], metric="ip", run_id=info.run_id,
                           schema_digest=model.schema.digest(), attributes=sorted({a for d in attrs for a in d}),
                           n_items=len(feats.ids), **_space_options(catalogue_ranking.SPACE, backend, index_options))
        idx.add(list(feats.ids), vecs, [dict(a) for a in attrs])
        idx.save(gen_dir / catalogue_ranking.SPACE)
        spaces[catalogue_ranking.SPACE] = {"kind": idx.kind, "dim": int(vecs.shape[1]), "metric": "ip",
                                           "members": "items", "attribute": None, "parts": 1, "count": len(feats.ids),
                                           "labels": scale,
                                           "data_dir": read_manifest(gen_dir / catalogue_ranking.SPACE).data_dir}
        idx.close()
    return {"kinds": {s: d["kind"] for s, d in spaces.items()}, "spaces": spaces}
