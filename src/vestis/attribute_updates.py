"""Catalogue attributes change (a corrected colour, a new season): update an index without re-encoding images.

`vestis index --update-attributes FILE --out INDEX` and `PATCH /items/attributes` (with `vestis serve --allow-writes`)
both call `update_attributes(engine, index_dir, changes)` with `changes` = {item id: {attribute: value, or None /
"unspecified" to clear the label}}. What reads an item's labels, and what the update does there:

- filters: every space's index stores the labels beside the vectors -> `VectorIndex.set_attributes` (vectors kept);
- a per-attribute space ("known" members) holds only items with a known value of its attribute -> an item whose
  value becomes unspecified leaves it; one that gains a value enters it, embedded from its cached feature maps;
- catalogue-aware ranking (labels on): the "labels" space bakes the labels into each item's vector
  (`catalogue_ranking`: a one-hot block where the catalogue labels an attribute, the model's prediction where it
  does not) -> the changed items' label vectors are recomputed from their cached feature maps by the run's head,
  with the gallery's stored scale, and upserted;
- the hits' attributes, a query item's own labels and the "no exact match" notes read the catalogue -> the
  changes are kept in the index's generation folder (`attribute_updates.json`, cumulative since the build) and
  applied to the catalogue whenever the engine loads.

The trunk never runs: an item whose feature maps are not in the cache is an error (run `vestis extract`).

Atomic like a rebuild (`vestis.indexing`): every space is loaded afresh from the current generation, changed, and
saved into a NEW generation folder with the cumulative changes; engine.json switches to it in one rename, and the
old generation is removed. A reader sees the old index or the new one. Every id, attribute and value is checked
before anything is written: an unknown one is an error that changes nothing. On a Milvus server the spaces' data
stay in their collections, which the update changes in place (row by row, after the same checks); only the
generation bookkeeping switches atomically.

A rebuild with `vestis index` starts again from the catalogue file: apply the update file again after it, or edit
the catalogue.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
import shutil
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from vestis import catalogue_ranking
from vestis.catalog.schema import UNSPECIFIED
from vestis.errors import UnknownAttributeError, UnknownValueError, VestisError, echo
from vestis.fsutil import atomic_write
from vestis.indexing import (
    ENGINE_FILE,
    GENERATION_PREFIX,
    UPDATES_FILE,
    check_spaces,
    parent_id,
    part_id,
    read_attribute_updates,
)

Changes = dict[str, dict[str, "str | None"]]


class AttributeUpdateError(VestisError):
    """An update file or request that cannot be applied (nothing was changed)."""


class UnknownItemsError(AttributeUpdateError):
    """Ids the index does not hold (the API answers 404)."""


# --- reading ----------------------------------------------------------------------------------------------------
def read_updates(path: str | Path) -> Changes:
    """An update file: CSV with an `id` column and one column per attribute (an empty cell leaves the attribute as
    it is, "unspecified" clears it), or JSONL with one `{"id": ..., "attributes": {attribute: value or null}}` per
    line (null or "unspecified" clears). The format is told by the suffix (.csv / .jsonl / .json)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json", ".ndjson"):
        raise AttributeUpdateError(f"{path}: give a .csv or .jsonl update file (id + attributes)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AttributeUpdateError(f"cannot read the update file {path}: {e}") from None
    if suffix == ".csv":
        return _from_csv(text, path)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:
            raise AttributeUpdateError(f"{path} line {n} is not JSON: {e}") from None
    return parse_rows(rows, where=str(path))


def _from_csv(text: str, path: Path) -> Changes:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "id" not in reader.fieldnames:
        raise AttributeUpdateError(f"{path}: the CSV needs a header with an `id` column and one column per attribute")
    rows = []
    for n, row in enumerate(reader, 2):
        if None in row:
            raise AttributeUpdateError(f"{path} line {n} has more cells than the header")
        rows.append({"id": row["id"], "attributes": {a: v for a, v in row.items() if a != "id" and v not in ("", None)}})
    return parse_rows(rows, where=str(path))


def parse_rows(rows, where: str = "the request") -> Changes:
    """[{"id": ..., "attributes": {...}}] -> {id: {attribute: value or None}}; the shape is checked here, the
    catalogue's ids, attributes and values by `check_changes`."""
    if not isinstance(rows, list):
        raise AttributeUpdateError(f"{where}: expected a list of {{\"id\": ..., \"attributes\": {{...}}}}")
    out: Changes = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or set(row) != {"id", "attributes"}:
            raise AttributeUpdateError(f"{where}: entry {n} must be {{\"id\": ..., \"attributes\": {{attribute: value}}}}, "
                                       f"got {echo(row)}")
        iid, attrs = row["id"], row["attributes"]
        if not isinstance(iid, str) or not iid:
            raise AttributeUpdateError(f"{where}: entry {n}: the id must be a non-empty string, got {echo(iid)}")
        if not isinstance(attrs, dict) or not attrs:
            raise AttributeUpdateError(f"{where}: entry {n} ({echo(iid)}): `attributes` must be a non-empty object")
        for a, v in attrs.items():
            if v is not None and not isinstance(v, str):
                raise AttributeUpdateError(f"{where}: entry {n} ({echo(iid)}): the value of {echo(a)} must be a string "
                                           f"or null, got {echo(v)}")
        if iid in out:
            raise AttributeUpdateError(f"{where}: item {echo(iid)} is listed more than once")
        out[iid] = {a: (None if v in (None, UNSPECIFIED) else v) for a, v in attrs.items()}
    if not out:
        raise AttributeUpdateError(f"{where}: no updates")
    return out


# --- checking ---------------------------------------------------------------------------------------------------
def indexed_ids(engine) -> set[str]:
    """The catalogue items the index holds (the "main" space's items)."""
    main = engine.spaces["main"]
    ids = main.ids()
    return {parent_id(i) for i in ids} if engine.space_defs["main"].members == "parts" else set(ids)


def check_changes(engine, changes: Changes, indexed: set[str] | None = None) -> None:
    """Every id indexed, every attribute in the catalogue's schema, every value one of its values: else an error
    naming the first problem (UnknownAttributeError / UnknownValueError carry what is valid)."""
    indexed = indexed_ids(engine) if indexed is None else indexed
    unknown = [i for i in changes if i not in indexed]
    if unknown:
        raise UnknownItemsError(
            f"{len(unknown)} id(s) not in the index: {', '.join(echo(i) for i in unknown[:5])}"
            f"{', ...' if len(unknown) > 5 else ''}; nothing was changed")
    schema = engine.catalog.schema
    for iid, change in changes.items():
        for a, v in change.items():
            try:
                schema.check_attribute(a)
                if v is not None:
                    schema.check_value(a, v)
            except (UnknownAttributeError, UnknownValueError) as e:
                e.args = (f"item {echo(iid)}: {e}; nothing was changed",)
                raise


# --- applying ---------------------------------------------------------------------------------------------------
def update_attributes(engine, index_dir: str | Path, changes: Changes) -> dict:
    """Apply `changes` to the index at `index_dir` (which `engine` was loaded from) and to `engine` itself; returns
    a summary. Callers that search `engine` from other threads hold their search lock around `install` only:
    `prepare` (the slow part) works on fresh copies. See the module docstring."""
    prepared = prepare(engine, index_dir, changes)
    return install(engine, prepared)


def prepare(engine, index_dir: str | Path, changes: Changes) -> dict:
    """Check, then write the new generation; `engine` is not touched. Returns what `install` swaps in."""
    from vestis.index import load_index, read_manifest

    index_dir = Path(index_dir)
    check_changes(engine, changes)
    meta = engine.meta
    if meta.get("generation") is None:
        raise AttributeUpdateError(f"{index_dir} has the previous index layout; rebuild it once with `vestis index`")
    dirs = check_spaces(index_dir, meta)
    catalog, model = engine.catalog, engine.model
    attrs = {}
    for iid, change in changes.items():
        a = dict(catalog[iid].attributes)
        for k, v in change.items():
            if v is None:
                a.pop(k, None)
            else:
                a[k] = v
        attrs[iid] = a
    ids = list(changes)
    position = {i: n for n, i in enumerate(ids)}
    cumulative = read_attribute_updates(index_dir, meta)
    for iid, change in changes.items():
        cumulative[iid] = {**cumulative.get(iid, {}), **change}
    generation = f"{GENERATION_PREFIX}{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
    gen_dir = index_dir / generation
    gen_dir.mkdir()
    spaces, records = {}, {}
    maps = None

    def cached(for_ids):
        nonlocal maps
        if maps is None:  # every changed item's maps, once; the trunk never runs
            maps = engine.item_maps(ids, encode_missing=False)
        rows = [position[i] for i in for_ids]
        return {k: v[rows] for k, v in maps.items()}

    try:
        for name, d in dirs.items():
            idx = spaces[name] = load_index(d, expect_run_id=engine.info.run_id,
                                            expect_schema_digest=model.schema.digest())
            rec = meta["spaces"][name]
            members = rec.get("members", "items")
            if name == catalogue_ranking.SPACE:
                _update_labels(engine, idx, rec, ids, attrs, cached)
            elif members == "parts":
                pids = [(part_id(i, k), i, k) for i in ids for k in range(int(rec.get("parts") or 1))]
                pids = [p for p in pids if p[0] in idx]
                idx.set_attributes([p for p, _, _ in pids], [{**attrs[i], "part": str(k)} for _, i, k in pids])
            elif members == "known":
                _update_known(engine, name, idx, rec["attribute"], ids, attrs, cached)
            else:
                held = [i for i in ids if i in idx]
                idx.set_attributes(held, [attrs[i] for i in held])
            idx.save(gen_dir / name)
            records[name] = {**rec, "count": len(idx), "data_dir": read_manifest(gen_dir / name).data_dir}
        (gen_dir / UPDATES_FILE).write_text(json.dumps(cumulative, ensure_ascii=False) + "\n", encoding="utf-8")
    except BaseException:
        for idx in spaces.values():
            idx.close()
        shutil.rmtree(gen_dir, ignore_errors=True)
        raise
    new_meta = {**meta, "generation": generation, "spaces": records,
                "kinds": {s: r["kind"] for s, r in records.items()},
                "attribute_updates": {"file": UPDATES_FILE, "items": len(cumulative),
                                      "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}}
    return {"index_dir": index_dir, "meta": new_meta, "spaces": spaces, "changes": changes,
            "old_generation": meta["generation"]}


def install(engine, prepared: dict) -> dict:
    """Switch the index directory and `engine` to the prepared generation (hold the search lock around this)."""
    index_dir, meta = prepared["index_dir"], prepared["meta"]
    atomic_write(index_dir / ENGINE_FILE, json.dumps(meta, indent=1) + "\n")  # the switch
    old = engine.spaces
    engine.spaces, engine.meta = prepared["spaces"], meta
    engine.catalog.set_attributes(prepared["changes"])
    engine._present = None  # the label vectors present changed
    for name, idx in old.items():
        if idx is not engine.spaces.get(name):
            idx.close()
    shutil.rmtree(index_dir / prepared["old_generation"], ignore_errors=True)
    return {"updated": len(prepared["changes"]), "generation": meta["generation"],
            "attribute_updates": meta["attribute_updates"]["items"], "spaces": sorted(meta["spaces"])}


def _update_known(engine, name, idx, attribute, ids, attrs, cached) -> None:
    """A per-attribute space: items with a known value stay or enter (embedded from cached maps), others leave."""
    known = set(engine.model.schema.values(attribute))
    keep = [i for i in ids if attrs[i].get(attribute) in known]
    leave = [i for i in ids if attrs[i].get(attribute) not in known and i in idx]
    if leave:
        idx.remove(leave)
    held = [i for i in keep if i in idx]
    idx.set_attributes(held, [attrs[i] for i in held])
    enter = [i for i in keep if i not in idx]
    if enter:
        with torch.inference_mode():
            vecs = np.asarray(engine.model.embed(cached(enter), name), np.float32)
        idx.add(enter, vecs, [attrs[i] for i in enter])


def _update_labels(engine, idx, rec, ids, attrs, cached) -> None:
    """The label vectors of the changed items, recomputed as `indexing._label_space` does, with the stored scale."""
    model = engine.model
    maps = cached(ids)
    with torch.inference_mode():
        probs = {a: np.asarray(p, np.float32) for a, p in model.attribute_probabilities(maps).items()}
        main = np.asarray(model.embed(maps, "main"), np.float32)
    scale = rec["labels"]
    blocks = catalogue_ranking.label_blocks(model.schema, [attrs[i] for i in ids], probs)
    vecs = catalogue_ranking.scaled_gallery_vectors(blocks, main, scale["main_metric"], scale)
    idx.add(ids, vecs, [attrs[i] for i in ids])


def summary_line(result: Mapping) -> str:
    return (f"updated the attributes of {result['updated']} item(s) in every space ({', '.join(result['spaces'])}); "
            f"{result['attribute_updates']} item(s) changed since the build; generation {result['generation']}")
