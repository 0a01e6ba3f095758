"""Running an engine over a query file: the rankings (and triplet scores, category scores) the protocols score.

A layer above the engine: these call `Engine.search_maps` exactly as interactive search does, so a figure is
measured on the answers a user would get.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from vestis.catalog import Catalog
from vestis.errors import VestisError
from vestis.models import run_batched
from vestis.runs import load_run
from vestis.vision.extract import catalogue_features
from vestis.vision.trunk import TrunkSpec


def category_scores(run_dir: Path, catalog: Catalog, split: str, cache_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Category probabilities of a run that classifies the category attribute (Park et al.'s OC path, or any model
    with attribute classifiers) for one split's items with a known category: (scores (n, C), true class indices
    (n,), class names)."""
    return _category_scores(run_dir, catalog, split, cache_dir)[:3]


def _category_scores(run_dir: Path, catalog: Catalog, split: str, cache_dir: Path):
    """category_scores' (scores, labels, names) plus the scored item ids (rows) and the category attribute."""
    model, info = load_run(run_dir)
    if not model.predicts_attributes:
        raise VestisError(f"model {info.model} does not classify attributes")
    attr = model.config.get("category_attribute") or next(
        (a for a in ("category", "articleType") if a in model.schema), model.schema.attributes[0])
    part = catalog.split(split).filter(lambda it: it.attributes.get(attr) in model.schema.values(attr))
    feats = catalogue_features(part, TrunkSpec.from_json(info.trunk), cache_dir, progress=False)
    n_values = len(model.schema.values(attr))
    scores = run_batched(lambda m: model.attribute_probabilities(m)[attr][:, :n_values], feats.maps)
    labels = np.array([model.schema.index(attr, part[i].attributes[attr]) for i in feats.ids])
    return scores, labels, list(model.schema.values(attr)), list(feats.ids), attr


def category_level_scores(run_dir: Path, catalog: Catalog, split: str, cache_dir: Path,
                          levels: Sequence[str] = ("subCategory", "masterCategory")) -> dict[str, tuple]:
    """The run's category classifier at coarser levels (Park et al. Table 2: several category levels): for each
    attribute of `levels` in the catalogue (other than the one the run classifies), (scores (n, C), true class
    indices (n,), class names), with P(level) = sum over the run's classes of P(class) P(level | class), the
    conditional counted on the catalogue's train split (`metrics.coarse_conditional`). Items of `split` whose
    level value is unknown are left out."""
    from vestis.eval.metrics import coarse_conditional, coarse_scores

    scores, _, names, ids, fine = _category_scores(run_dir, catalog, split, cache_dir)
    fine_index = {v: i for i, v in enumerate(names)}
    out = {}
    for level in levels:
        if level == fine or level not in catalog.schema:
            continue
        values = list(catalog.schema.values(level))
        index = {v: i for i, v in enumerate(values)}
        pairs = [(fine_index[it.attributes[fine]], index[it.attributes[level]]) for it in catalog.split("train")
                 if it.attributes.get(fine) in fine_index and it.attributes.get(level) in index]
        if not pairs:
            continue
        f, c = zip(*pairs)
        probs = coarse_scores(scores, coarse_conditional(f, c, len(names), len(values)))
        keep = [j for j, i in enumerate(ids) if catalog[i].attributes.get(level) in index]
        out[level] = (probs[keep], np.array([index[catalog[ids[j]].attributes[level]] for j in keep]), values)
    return out


def mapped_accuracy(run_dir: Path, queries: Sequence[Mapping], cache_dir: Path, batch: int = 64) -> dict:
    """Category accuracy of a run on photo queries of another catalogue (consumer-to-shop query lines): the share
    of photos whose most likely value of the query's `attribute` (among the known values) is in its target set;
    overall and per query "category". Photos are encoded now, as uploads."""
    from vestis.vision.extract import encode_images, make_backend

    model, info = load_run(run_dir)
    if not model.predicts_attributes:
        raise VestisError(f"model {info.model} does not classify attributes")
    spec = TrunkSpec.from_json(info.trunk)  # load_run resolved a fine-tuned trunk inside the run
    backend = make_backend(spec, cache_dir).backend
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(queries), batch):
        chunk = [q for q in queries[i:i + batch] if q.get("image") and q.get("attribute") in model.schema]
        if not chunk:
            continue
        maps = encode_images(backend, spec.resolution, [q["image"] for q in chunk])
        with torch.inference_mode():
            probs = model.attribute_probabilities(maps)
        for j, q in enumerate(chunk):
            a = q["attribute"]
            values = model.schema.values(a)
            best = values[int(probs[a][j, :len(values)].argmax())]
            accepted = q["target"][a]
            accepted = {accepted} if isinstance(accepted, str) else set(accepted)
            hits.setdefault(str(q.get("category", "all")), []).append(best in accepted)
    if not hits:
        raise VestisError("no photo query whose attribute the run classifies")
    every = [h for c in hits.values() for h in c]
    return {"n": len(every), "accuracy": float(np.mean(every)),
            "per_category": {c: {"n": len(h), "accuracy": float(np.mean(h))} for c, h in sorted(hits.items())}}


def triplet_scores(engine, queries: Sequence[Mapping], batch: int = 256) -> list[dict]:
    """Rows {query_id, scores: [sim(x, x+ | a), sim(x, x- | a)]} for triplet queries (PROTOCOLS.md section 2):
    the attribute-specific query of x (the model's plan for `attribute:<a>`) against the gallery vectors of x+ and
    x- in the space that plan searches. Batched per attribute; rows in the order of `queries`."""
    from vestis.models import Request

    by_attribute: dict[str, list[Mapping]] = {}
    for q in queries:
        by_attribute.setdefault(q["attribute"], []).append(q)
    out: dict[str, dict] = {}
    for attribute, qs in by_attribute.items():
        for i in range(0, len(qs), batch):
            chunk = qs[i:i + batch]
            anchors = engine.item_maps([q["item_id"] for q in chunk])
            (probe,) = engine.model.plan(anchors, Request(f"attribute:{attribute}", [{}] * len(chunk)))
            with torch.inference_mode():
                pos, neg = (engine.model.embed(engine.item_maps([q[key] for q in chunk]), probe.space).numpy()
                            for key in ("positive_id", "negative_id"))
            if engine.space_defs[probe.space].metric == "l2":
                sp, sn = (-((v - probe.vectors) ** 2).sum(-1) for v in (pos, neg))
            else:
                sp, sn = ((v * probe.vectors).sum(-1) for v in (pos, neg))
            for q, a, b in zip(chunk, sp, sn):
                out[q["query_id"]] = {"query_id": q["query_id"], "scores": [float(a), float(b)]}
    return [out[q["query_id"]] for q in queries]


def _mode(engine, q: Mapping) -> str:
    """The mode that answers a query line: protocol 2 -> attribute:<a>, 3 -> same_item, 4 -> diverse, 1 ->
    manipulate (a run that cannot manipulate answers with its plain embedding: the floor protocol 1 measures)."""
    protocol = q.get("protocol")
    if protocol == "attribute":
        return f"attribute:{q['attribute']}"
    if protocol in ("same_item", "diverse"):
        return protocol
    return "manipulate" if "manipulate" in engine.modes() else "same_item"


def _group_row(group, geometry) -> dict:
    box = None
    if group.box is not None:  # trunk-input pixels -> query-image pixels (PROTOCOLS.md section 4)
        box = [round(v, 2) for v in geometry.feature_to_image(tuple(group.box), 1)] if geometry else list(group.box)
    return {"label": group.label, "box": box, "ranked": [h.id for h in group.hits]}


def rank_queries(engine, queries: Sequence[Mapping], k: int = 50, batch: int = 256, progress: bool = True,
                 labels: bool = False, photos: bool = False, crop: bool = False) -> list[dict]:
    """Answer a query file (PROTOCOLS.md format) into rankings rows {query_id, ranked, labels} (grouped modes add
    `groups`; triplets: scores).

    labels: False - vision only, the papers' protocol (the engine reads no label); True - catalogue-aware ranking.
    photos: a catalogue-item query is searched by its image file (encoded now, as an upload), so its own catalogue
    labels are never available - what a shopper's photo is; otherwise item queries read their cached maps and,
    with labels on, their own labels as preferences. crop: image queries are cut to their foreground box first."""
    from tqdm import tqdm

    triplets = [q for q in queries if q.get("protocol") == "triplet"]
    queries = [q for q in queries if q.get("protocol") != "triplet"]
    rows = triplet_scores(engine, triplets) if triplets else []
    bar = tqdm(total=len(queries), desc="search", unit="query", disable=not progress)
    for i in range(0, len(queries), batch):
        chunk = queries[i:i + batch]
        by_mode: dict[str, list[int]] = {}
        for j, q in enumerate(chunk):
            by_mode.setdefault(_mode(engine, q), []).append(j)
        answered: dict[int, dict] = {}
        for mode, js in by_mode.items():
            sub = [chunk[j] for j in js]
            item_ids = [q.get("item_id") for q in sub]
            images = [engine.catalog[q["item_id"]].image if q.get("item_id") else q["image"] for q in sub]
            studio = [] if engine.photo_preferences is not None else None  # packshot or shopper photo, per row
            maps = (engine.item_maps(item_ids) if all(item_ids) and not photos
                    else engine.encode_images(images, crop, studio=studio))
            known = [engine.catalog[i].attributes if i and not photos else None for i in item_ids] if labels else None
            # protocol 2 ranks every candidate (MAP over the full list)
            kk = len(engine.spaces["main"]) if mode.startswith("attribute:") else k
            manip = [q.get("manipulations") or {} for q in sub] if mode == "manipulate" else None
            results = engine.search_maps(maps, manip, k=kk, mode=mode, exclude=item_ids, labels=labels,
                                         query_labels=known, shopper=[not x for x in studio] if studio else None)
            for j, res, image in zip(js, results, images):
                row = {"query_id": chunk[j]["query_id"], "ranked": [h.id for h in res.hits], "labels": res.labels}
                if len(res.groups) > 1 or any(g.box is not None for g in res.groups):
                    geo = _geometry(image, engine.spec.resolution)
                    row["groups"] = [_group_row(g, geo) for g in res.groups]
                answered[j] = row
        rows.extend(answered[j] for j in range(len(chunk)))
        bar.update(len(chunk))
    bar.close()
    return rows


def _geometry(image, resolution):
    from vestis.images import load_rgb
    from vestis.vision.preprocess import letterbox_geometry

    img = load_rgb(image)
    w0, h0 = img.info.get("original_size", img.size)
    return letterbox_geometry(w0, h0, tuple(resolution))


class VisualVectors:
    """ids -> (n, C) the pooled stride-32 trunk features of catalogue items, L2-normalised (every model's "visual"
    space), read from the feature cache and memoised: protocol 4's space for intra-list diversity, the same for every
    run so that lists of different methods are compared in one space."""

    def __init__(self, catalog: Catalog, spec, cache_dir: Path):
        self.catalog, self.spec, self.cache_dir, self.memo = catalog, spec, Path(cache_dir), {}

    def __call__(self, ids: Sequence[str]) -> np.ndarray:
        from vestis.models.layers import l2n, pool_maps

        todo = list(dict.fromkeys(i for i in ids if i not in self.memo))
        if todo:
            feats = catalogue_features(Catalog([self.catalog[i] for i in todo], self.catalog.schema), self.spec,
                                       self.cache_dir, progress=False)
            if len(feats.ids) != len(todo):
                raise VestisError(f"{len(todo) - len(feats.ids)} ranked items have no cached features "
                                  f"({feats.describe()})")
            with torch.inference_mode():
                v = l2n(pool_maps({"s32": torch.from_numpy(feats.maps["s32"]).float()})).numpy()
            self.memo.update(zip(feats.ids, v))
        return np.stack([self.memo[i] for i in ids]) if len(ids) else np.zeros((0, 1), np.float32)
