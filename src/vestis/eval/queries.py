"""Query files (PROTOCOLS.md): generated once from a seed, saved as JSONL, reused by every run.

One query per line:

    {"query_id": ..., "item_id": ... | "image": "path", "manipulations": {attribute: value},
     "attribute": ..., "target": {...}, "protocol": "manipulation" | "attribute" | "same_item" | "triplet"}

A protocol-4 line (`"protocol": "diverse"`, part-based suggestions) is a photo of several garments: `attribute`
names the category attribute the groups are labelled with, `target` gives one list per attribute with one value per
garment (in the same order; "unspecified" where a garment is not labelled), and `boxes` each garment's box
[x0, y0, x1, y1] in the photo's pixels.

`protocol` names which protocol the line belongs to (files written by other tools may leave it out
and name the protocol when evaluating). `target` is for scoring only; the engine never reads it.
Triplet lines also carry `positive_id` and `negative_id`. An `image` is a path relative to the query
file's folder in the file, and an absolute path in memory after `read_queries`.

Generators return `(queries, counts)`: the list of query dicts and a dict of per-attribute (or, for
same-item queries, summary) counts, in the order the queries were generated. All sampling uses
`numpy.random.default_rng(seed)` over candidates listed in a fixed order (query items sorted by id,
values in schema order), so a seed and a catalogue give the same file on every machine.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from vestis.catalog import UNSPECIFIED, Catalog, Item
from vestis.eval.errors import QueryFileError

PROTOCOLS = ("manipulation", "attribute", "triplet", "same_item", "consumer_to_shop", "diverse")
_KEY_ORDER = ("query_id", "item_id", "image", "positive_id", "negative_id", "manipulations", "attribute",
              "target", "boxes", "category", "protocol")
_ID_PREFIX = {"manipulation": "manip", "attribute": "attr", "triplet": "trip", "same_item": "same", "consumer_to_shop": "c2s",
              "diverse": "div"}


# --- helpers --------------------------------------------------------------------------------------
def _attribute_set(catalog: Catalog, attributes: Iterable[str] | None) -> list[str]:
    A = list(catalog.schema.attributes if attributes is None else attributes)
    if not A:
        raise QueryFileError("the attribute set is empty")
    if len(set(A)) != len(A):
        raise QueryFileError(f"attribute set lists an attribute twice: {A}")
    for a in A:
        catalog.schema.check_attribute(a)
    return A


def _vector(item: Item, A: Sequence[str]) -> tuple[str, ...]:
    return tuple(item.attributes.get(a, UNSPECIFIED) for a in A)


def _split_items(catalog: Catalog, split: str) -> list[Item]:
    return sorted(catalog.split(split).items, key=lambda it: it.id)


def _check_splits(query_split: str, gallery_split: str) -> None:
    if query_split == gallery_split:
        raise QueryFileError(f"query split and gallery split are both {query_split!r}: the query never sits in "
                             "the gallery it searches")


def _sample(rng: np.random.Generator, n_candidates: int, n: int | None) -> list[int]:
    """Indices of a seeded sample of at most n candidates (all when n is None), in candidate order."""
    if n is not None and n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    if n is None or n >= n_candidates:
        return list(range(n_candidates))
    return sorted(int(i) for i in rng.choice(n_candidates, size=n, replace=False))


def _number(queries: list[dict], protocol: str) -> list[dict]:
    width = max(6, len(str(len(queries))))
    for i, q in enumerate(queries, 1):
        q["query_id"] = f"{_ID_PREFIX[protocol]}-{i:0{width}d}"
    return [_ordered(q) for q in queries]


def _ordered(q: dict) -> dict:
    out = {k: q[k] for k in _KEY_ORDER if k in q}
    out.update({k: q[k] for k in sorted(q) if k not in out})
    return out


# --- protocol 1: attribute manipulation ------------------------------------------------------------
def manipulation_queries(catalog: Catalog, attributes: Iterable[str] | None = None, seed: int = 0,
                         per_attribute: int | None = 500, n_changes: int | Sequence[int] = 1,
                         query_split: str = "query", gallery_split: str = "gallery") -> tuple[list[dict], dict[str, int]]:
    """Attribute-manipulation queries (PROTOCOLS.md section 1).

    For each query-split item and each attribute a in A (or each pair of attributes for
    `n_changes=2`), every new value that makes a valid query is a candidate:
    - the item's current value of a is known (never manipulate from "unspecified");
    - the new value is a known value of a in the schema (never to "unspecified") and differs;
    - at least one gallery-split item has exactly the target vector (the item's vector over A with the
      manipulated attributes replaced; "unspecified" elsewhere must match "unspecified").
    At most `per_attribute` candidates (None: all) are sampled per attribute - per attribute *pair* for
    two-attribute queries - with `numpy.random.default_rng(seed)`, so every attribute that has any valid
    candidate is represented. `n_changes` may be 1, 2 (AMNet section 5.5: two attributes changed at
    once), or a sequence such as (1, 2) for both kinds in one file.

    Each query: {"query_id", "item_id", "manipulations": {a: new}, "attribute": "a" (or "a+b" in A's
    order), "target": {every attribute of A: value or "unspecified"}, "protocol": "manipulation"}.
    Returns (queries, counts) with counts = {"a" or "a+b": number of queries generated}; an attribute
    with no valid candidate in this catalogue appears with count 0 (the caller should warn).

    Cost: one pass over the gallery per attribute (pair), hashing each gallery vector with the
    manipulated positions left out, so 35k items x 6 attributes take well under a second.
    """
    A = _attribute_set(catalog, attributes)
    _check_splits(query_split, gallery_split)
    changes = [n_changes] if isinstance(n_changes, int) else list(n_changes)
    for n in changes:
        if not 1 <= n <= len(A):
            raise ValueError(f"n_changes must be between 1 and |A| = {len(A)}, got {n}")
    known = {a: catalog.schema.values(a) for a in A}
    order = {a: {v: i for i, v in enumerate(known[a])} for a in A}
    gallery_vectors = [_vector(it, A) for it in _split_items(catalog, gallery_split)]
    query_items = [(it, _vector(it, A)) for it in _split_items(catalog, query_split)]
    rng = np.random.default_rng(seed)
    queries: list[dict] = []
    counts: dict[str, int] = {}
    for n in changes:
        for combo in itertools.combinations(range(len(A)), n):
            rest = [i for i in range(len(A)) if i not in combo]
            names = [A[i] for i in combo]
            # gallery vectors with the manipulated positions left out -> the values seen at those positions
            reachable: dict[tuple, set[tuple]] = defaultdict(set)
            for v in gallery_vectors:
                reachable[tuple(v[i] for i in rest)].add(tuple(v[i] for i in combo))
            candidates: list[tuple[Item, tuple[str, ...], tuple[str, ...]]] = []
            for it, vec in query_items:
                current = tuple(vec[i] for i in combo)
                if UNSPECIFIED in current:
                    continue
                options = reachable.get(tuple(vec[i] for i in rest))
                if not options:
                    continue
                valid = [new for new in options
                         if all(new[j] != current[j] and new[j] in order[names[j]] for j in range(n))]
                valid.sort(key=lambda new: tuple(order[names[j]][new[j]] for j in range(n)))
                candidates.extend((it, vec, new) for new in valid)
            key = "+".join(names)
            chosen = _sample(rng, len(candidates), per_attribute)
            counts[key] = len(chosen)
            for c in chosen:
                it, vec, new = candidates[c]
                target = dict(zip(A, vec))
                target.update(zip(names, new))
                queries.append({"item_id": it.id, "manipulations": dict(zip(names, new)), "attribute": key,
                                "target": target, "protocol": "manipulation"})
    return _number(queries, "manipulation"), counts


# --- protocol 2: attribute-specific similarity -------------------------------------------------------
def attribute_queries(catalog: Catalog, attributes: Iterable[str] | None = None, seed: int = 0,
                      per_attribute: int | None = None, query_split: str = "query",
                      gallery_split: str = "gallery") -> tuple[list[dict], dict[str, int]]:
    """Attribute-specific retrieval queries (PROTOCOLS.md section 2, MAP).

    For each attribute a: query-split items with a known value of a; the candidates of such a query are
    the gallery-split items with a known value of a, relevant when their value equals the query's.
    Items whose value occurs in no gallery item are left out (their AP is undefined: no relevant
    candidate). `per_attribute`: seeded sample of at most that many per attribute (None: all).

    Each query: {"query_id", "item_id", "manipulations": {}, "attribute": a, "target": {a: value},
    "protocol": "attribute"}. Returns (queries, {a: count}).
    """
    A = _attribute_set(catalog, attributes)
    _check_splits(query_split, gallery_split)
    gallery = _split_items(catalog, gallery_split)
    query_items = _split_items(catalog, query_split)
    rng = np.random.default_rng(seed)
    queries, counts = [], {}
    for a in A:
        in_gallery = {it.attributes[a] for it in gallery if a in it.attributes}
        candidates = [it for it in query_items if it.attributes.get(a) in in_gallery]
        chosen = _sample(rng, len(candidates), per_attribute)
        counts[a] = len(chosen)
        for c in chosen:
            it = candidates[c]
            queries.append({"item_id": it.id, "manipulations": {}, "attribute": a,
                            "target": {a: it.attributes[a]}, "protocol": "attribute"})
    return _number(queries, "attribute"), counts


def triplet_queries(catalog: Catalog, attributes: Iterable[str] | None = None, n_per_attribute: int = 1000,
                    seed: int = 0, splits: Sequence[str] = ("gallery", "query")) -> tuple[list[dict], dict[str, int]]:
    """Fixed test triplets (x, x+, x- | a) (PROTOCOLS.md section 2, Zappos50k protocol).

    Items: those in `splits` (default: the held-out gallery + query items; never train) with a known
    value of a. x is drawn uniformly among items whose value is shared by at least one other item
    (and some item has another value); x+ uniformly among the other items with x's value; x-
    uniformly among items with a different known value. Duplicate triplets are redrawn; at most
    `n_per_attribute` per attribute (fewer when the items cannot give that many distinct triplets).

    Each query: {"query_id", "item_id": x, "positive_id": x+, "negative_id": x-, "manipulations": {},
    "attribute": a, "target": {a: x's value}, "protocol": "triplet"}. Returns (queries, {a: count}).
    """
    A = _attribute_set(catalog, attributes)
    pool = sorted((it for s in splits for it in catalog.split(s).items), key=lambda it: it.id)
    rng = np.random.default_rng(seed)
    queries, counts = [], {}
    for a in A:
        items = [it for it in pool if a in it.attributes]
        by_value: dict[str, list[Item]] = defaultdict(list)
        for it in items:
            by_value[it.attributes[a]].append(it)
        # items sorted by value (schema order) so "a different value" is everything outside one block
        values = [v for v in catalog.schema.values(a) if v in by_value]
        ordered = [it for v in values for it in by_value[v]]
        start, pos = {}, 0
        for v in values:
            start[v] = pos
            pos += len(by_value[v])
        anchors = [i for i, it in enumerate(ordered)
                   if len(by_value[it.attributes[a]]) >= 2 and len(by_value[it.attributes[a]]) < len(ordered)]
        seen: set[tuple[str, str, str]] = set()
        made = 0
        attempts = 0
        while anchors and made < n_per_attribute and attempts < 20 * n_per_attribute + 100:
            attempts += 1
            x = ordered[anchors[int(rng.integers(len(anchors)))]]
            v = x.attributes[a]
            same = by_value[v]
            p = same[int(rng.integers(len(same) - 1))]
            if p.id == x.id:  # draw among the others: skip x's own slot
                p = same[-1]
            r = int(rng.integers(len(ordered) - len(same)))
            neg = ordered[r if r < start[v] else r + len(same)]
            key = (x.id, p.id, neg.id)
            if key in seen:
                continue
            seen.add(key)
            made += 1
            queries.append({"item_id": x.id, "positive_id": p.id, "negative_id": neg.id, "manipulations": {},
                            "attribute": a, "target": {a: v}, "protocol": "triplet"})
        counts[a] = made
    return _number(queries, "triplet"), counts


# --- protocol 3: same-item retrieval ------------------------------------------------------------------
def same_item_queries(catalog: Catalog, seed: int = 0, max_queries: int | None = None,
                      query_split: str = "query", gallery_split: str = "gallery") -> tuple[list[dict], dict[str, int]]:
    """Same-item (instance) retrieval queries (PROTOCOLS.md section 3).

    Query-split items with an instance id that has at least one gallery-split image; target =
    {"instance_id": ...}. `max_queries`: seeded sample of at most that many (None: all).
    Each query: {"query_id", "item_id", "manipulations": {}, "attribute": None, "target":
    {"instance_id": ...}, "protocol": "same_item"}. Returns (queries, {"queries": n, "instances": distinct
    instances queried, "no_gallery_view": query items left out because their instance has no gallery
    image, "no_instance_id": query items without an instance id}).
    """
    _check_splits(query_split, gallery_split)
    in_gallery = Counter(it.instance_id for it in catalog.split(gallery_split).items if it.instance_id)
    candidates, no_view, no_id = [], 0, 0
    for it in _split_items(catalog, query_split):
        if not it.instance_id:
            no_id += 1
        elif it.instance_id not in in_gallery:
            no_view += 1
        else:
            candidates.append(it)
    chosen = [candidates[c] for c in _sample(np.random.default_rng(seed), len(candidates), max_queries)]
    queries = [{"item_id": it.id, "manipulations": {}, "attribute": None, "target": {"instance_id": it.instance_id},
                "protocol": "same_item"} for it in chosen]
    counts = {"queries": len(chosen), "instances": len({it.instance_id for it in chosen}),
              "no_gallery_view": no_view, "no_instance_id": no_id}
    return _number(queries, "same_item"), counts


# --- consumer-to-shop: a photo of another catalogue against this one's gallery --------------------------
def consumer_to_shop_queries(photos: Catalog, mapping, split: str = "query", seed: int = 0,
                             max_queries: int | None = None) -> tuple[list[dict], dict[str, int]]:
    """Consumer-to-shop queries: every `split` photo of the `photos` catalogue (e.g. clothing-dataset-small)
    whose `mapping.source_attribute` value the mapping (`vestis.catalog.mapping.LabelMapping`) names, as an image
    query. Each query: {"query_id", "image": the photo's path, "attribute": mapping.target_attribute, "target":
    {target_attribute: [accepted values]}, "category": the photo's source value, "protocol": "consumer_to_shop"}.
    The engine reads only the image. Returns (queries, {source value: queries, ..., "unmapped": photos left out
    because their value is missing or unmapped, "no_image": photos without an image file})."""
    src, dst = mapping.source_attribute, mapping.target_attribute
    candidates, unmapped, no_image = [], 0, 0
    for it in _split_items(photos, split):
        accepted = mapping.targets(it.attributes.get(src))
        if accepted is None:
            unmapped += 1
        elif it.image is None or not Path(it.image).is_file():
            no_image += 1
        else:
            candidates.append((it, accepted))
    chosen = [candidates[c] for c in _sample(np.random.default_rng(seed), len(candidates), max_queries)]
    queries = [{"image": str(Path(it.image).resolve()), "attribute": dst, "target": {dst: list(accepted)},
                "category": it.attributes[src], "protocol": "consumer_to_shop"} for it, accepted in chosen]
    counts: dict[str, int] = dict(sorted(Counter(q["category"] for q in queries).items()))
    counts.update({"unmapped": unmapped, "no_image": no_image})
    return _number(queries, "consumer_to_shop"), counts


# --- diverse part-based suggestions: a photo of several garments (protocol 4) ---------------------------
DIVERSE_RELEVANCE = ("baseColour", "colour", "pattern")  # part relevance's further attributes, where labelled


def diverse_queries(photos: Catalog, attribute: str, split: str = "query", attributes: Iterable[str] | None = None,
                    seed: int = 0, max_queries: int | None = None) -> tuple[list[dict], dict[str, int]]:
    """Protocol-4 queries: every `split` item of `photos` with parts (an outfit, a collage) and an image, as an image
    query (PROTOCOLS.md section 4). `attribute`: the garments' category attribute (what groups are labelled with);
    `attributes`: further per-garment attributes part relevance checks (default: those of DIVERSE_RELEVANCE in the
    schema). Each query: {"query_id", "image", "attribute", "target": {attr: [one value per garment]}, "boxes":
    [[x0, y0, x1, y1] per garment], "protocol": "diverse"}. Returns (queries, {"queries", "garments",
    "no_parts": items without parts, "no_image"})."""
    photos.schema.check_attribute(attribute)
    extra = [a for a in (attributes if attributes is not None else DIVERSE_RELEVANCE)
             if a in photos.schema and a != attribute]
    candidates, no_parts, no_image = [], 0, 0
    for it in _split_items(photos, split):
        if not it.parts:
            no_parts += 1
        elif it.image is None or not Path(it.image).is_file():
            no_image += 1
        else:
            candidates.append(it)
    chosen = [candidates[c] for c in _sample(np.random.default_rng(seed), len(candidates), max_queries)]
    queries = [{"image": str(Path(it.image).resolve()), "attribute": attribute,
                "target": {a: [p.attributes.get(a, UNSPECIFIED) for p in it.parts] for a in [attribute, *extra]},
                "boxes": [[float(v) for v in p.box] for p in it.parts], "source_id": it.id, "protocol": "diverse"}
               for it in chosen]
    counts = {"queries": len(queries), "garments": sum(len(q["boxes"]) for q in queries), "no_parts": no_parts,
              "no_image": no_image}
    return _number(queries, "diverse"), counts


def diverse_garments(q: dict, where: str = "query") -> tuple[str, dict[str, list[str]], list | None]:
    """A protocol-4 line's (category attribute, {attribute: per-garment values}, per-garment boxes or None), checked:
    every list one value per garment, at least one garment."""
    qid = q.get("query_id")
    attr, target, boxes = q.get("attribute"), q.get("target"), q.get("boxes")
    if not isinstance(attr, str) or not isinstance(target, dict) or not isinstance(target.get(attr), list):
        raise QueryFileError(f"{where} (query {qid!r}): a diverse query needs \"attribute\" (the category attribute) "
                             "and a \"target\" list of that attribute's value per garment")
    n = len(target[attr])
    for a, v in target.items():
        if not isinstance(v, list) or len(v) != n or not all(isinstance(x, str) for x in v):
            raise QueryFileError(f"{where} (query {qid!r}): target {a!r} must list one value per garment ({n})")
    if boxes is not None and (not isinstance(boxes, list) or len(boxes) != n or not all(
            isinstance(b, list) and len(b) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in b) for b in boxes)):
        raise QueryFileError(f"{where} (query {qid!r}): \"boxes\" must list one [x0, y0, x1, y1] per garment ({n})")
    return attr, target, boxes


# --- files --------------------------------------------------------------------------------------------
def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes (the name a figure gives its query file by)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_query(q, where: str) -> None:
    if not isinstance(q, dict):
        raise QueryFileError(f"{where}: a query must be a JSON object, got {type(q).__name__}")
    qid = q.get("query_id")
    if not isinstance(qid, str) or not qid:
        raise QueryFileError(f"{where}: missing or non-string \"query_id\"")
    if ("item_id" in q) == ("image" in q):
        raise QueryFileError(f"{where} (query {qid!r}): needs exactly one of \"item_id\" and \"image\"")
    src = q.get("item_id", q.get("image"))
    if not isinstance(src, str) or not src:
        raise QueryFileError(f"{where} (query {qid!r}): \"item_id\" / \"image\" must be a non-empty string")
    if "manipulations" in q and not (isinstance(q["manipulations"], dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in q["manipulations"].items())):
        raise QueryFileError(f"{where} (query {qid!r}): \"manipulations\" must be an object of strings")
    # a target value is one value, or a set of accepted values (consumer-to-shop: a category's mapped set)
    if "target" in q and not (isinstance(q["target"], dict) and all(
            isinstance(k, str) and (isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v)))
            for k, v in q["target"].items())):
        raise QueryFileError(f"{where} (query {qid!r}): \"target\" must be an object of strings (or non-empty "
                             "lists of strings: a set of accepted values)")
    if "attribute" in q and q["attribute"] is not None and not isinstance(q["attribute"], str):
        raise QueryFileError(f"{where} (query {qid!r}): \"attribute\" must be a string or null")
    if "protocol" in q and q["protocol"] not in PROTOCOLS:
        raise QueryFileError(f"{where} (query {qid!r}): unknown protocol {q['protocol']!r}; "
                             f"known: {', '.join(PROTOCOLS)}")
    if q.get("protocol") == "diverse":
        diverse_garments(q, where)
    if q.get("protocol") == "triplet":
        for key in ("item_id", "positive_id", "negative_id"):
            if not isinstance(q.get(key), str):
                raise QueryFileError(f"{where} (query {qid!r}): a triplet needs string \"item_id\", "
                                     "\"positive_id\" and \"negative_id\"")


def write_queries(path: str | Path, queries: Iterable[dict]) -> str:
    """Write queries as JSONL (UTF-8, one compact JSON object per line, "\\n" endings) and return the
    file's sha256.

    Keys are written in a fixed order (query_id, item_id, image, positive_id, negative_id,
    manipulations, attribute, target, protocol, then any other keys sorted), so the same queries
    always give the same bytes. An absolute "image" path is written relative to the file's folder
    (POSIX separators); a relative one is taken as already relative to that folder.
    Query ids must be unique.
    """
    path = Path(path)
    folder = path.resolve().parent
    seen: set[str] = set()
    lines = []
    for i, q in enumerate(queries, 1):
        _check_query(q, f"query #{i}")
        if q["query_id"] in seen:
            raise QueryFileError(f"query #{i}: duplicate query_id {q['query_id']!r}")
        seen.add(q["query_id"])
        q = dict(q)
        if "image" in q and os.path.isabs(q["image"]):
            q["image"] = Path(os.path.relpath(q["image"], folder)).as_posix()
        lines.append(json.dumps(_ordered(q), ensure_ascii=False, separators=(",", ":")))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(line + "\n" for line in lines))
    return file_sha256(path)


def read_queries(path: str | Path) -> list[dict]:
    """Read a query file; a malformed line raises `QueryFileError` naming the file and line number.

    Blank lines are ignored. An "image" is resolved against the file's folder and returned as an
    absolute path string. Query ids must be unique.
    """
    path = Path(path)
    folder = path.resolve().parent
    out: list[dict] = []
    seen: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise QueryFileError(f"query file {path} not found") from None
    except UnicodeDecodeError as e:
        raise QueryFileError(f"query file {path} is not UTF-8 text: {e}") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            raise QueryFileError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        _check_query(q, where)
        if q["query_id"] in seen:
            raise QueryFileError(f"{where}: duplicate query_id {q['query_id']!r} (first on line {seen[q['query_id']]})")
        seen[q["query_id"]] = lineno
        if "image" in q:
            q["image"] = os.path.normpath(str(folder / q["image"]))
        out.append(q)
    return out
