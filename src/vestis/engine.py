"""The search engine: a trained run + its index + the catalogue behind it.

`build_index` embeds a catalogue with a run and writes an index directory; `Engine.load` opens one and
`Engine.search` answers "this image / item, with these manipulations" in any mode:
  manipulate        the run's query embedding with the manipulations applied (the default)
  attribute:<name>  similarity with respect to one attribute, among items with a known value of it
  same_item         the run's plain embedding (no manipulation): the same product
  visual            pooled trunk features (cosine): the floor, and "more like this"
An index directory holds one vector space per need ("main": the run's gallery vectors; "visual": pooled
trunk features) and `engine.json`, which names the run and the catalogue it was built from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vestis.catalog import Catalog
from vestis.errors import VestisError
from vestis.models import SearchModel, load_run
from vestis.models.layers import gap, l2n
from vestis.paths import default_cache_dir
from vestis.train import catalogue_features, trunk_from_json

MODES = ("manipulate", "same_item", "visual", "attribute:<name>")
ENGINE_FILE = "engine.json"
EMBED_BATCH = 512
MAX_K = 1000  # for interactive search; query files may rank whole candidate sets


class EngineError(VestisError):
    pass


def _embed(fn, maps: Mapping[str, np.ndarray], batch: int = EMBED_BATCH) -> np.ndarray:
    """Run fn over float16 numpy maps in float32 batches; returns float32 (N, D)."""
    n = len(next(iter(maps.values())))
    out = []
    with torch.inference_mode():
        for i in range(0, n, batch):
            out.append(fn({k: torch.from_numpy(v[i:i + batch]).float() for k, v in maps.items()}).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def visual_vectors(maps: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return l2n(gap(maps["s32"].float()))


def build_index(run_dir: Path, catalog: Catalog, out: Path, *, backend: str = "faiss", kind: str = "auto",
                split: str | None = None, cache_dir: Path, progress: bool = True, **index_options) -> dict:
    """Embed `catalog` (or one split of it) with a trained run and save a searchable index to `out`.

    kind "auto" (the default) chooses per vector space from its size (`vestis.index.auto_kind`): exact
    search for small catalogues, the tuned HNSW graph for large ones; `engine.json` records the choice."""
    from vestis.index import create_index

    model, info = load_run(run_dir)
    spec = trunk_from_json(info.trunk)
    part = catalog.split(split) if split else catalog
    if len(part) == 0:
        raise EngineError(f"nothing to index: the catalogue has no {split!r} items")
    feats = catalogue_features(part, spec, cache_dir, progress=progress)
    if len(feats) == 0:
        raise EngineError(f"no item of the catalogue has features ({feats.describe()})")
    attrs = [part[i].attributes for i in feats.ids]
    spaces = {"main": (model.embed, model.metric)}
    if model.name != "visual":
        spaces["visual"] = (visual_vectors, "ip")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for space, (fn, metric) in spaces.items():
        vecs = _embed(fn, feats.maps)
        idx = create_index(backend=backend, kind=kind, dim=vecs.shape[1], metric=metric, run_id=info.run_id,
                           schema_digest=model.schema.digest(), attributes=sorted({a for d in attrs for a in d}),
                           n_items=len(feats.ids), **(index_options if space == "main" else {}))
        idx.add(feats.ids, vecs, attrs)
        idx.save(out / space)
        kinds[space] = idx.kind
    meta = {"run_id": info.run_id, "run_dir": str(Path(run_dir).resolve()), "model": info.model,
            "catalog": {"path": str(Path(catalog.path).resolve()) if catalog.path else None,
                        "format": catalog.source, "name": catalog.name, "split": split},
            "backend": backend, "kind": kind, "kinds": kinds, "spaces": list(spaces), "count": len(feats.ids),
            "without_features": {"missing": len(feats.missing), "unreadable": len(feats.unreadable),
                                 "not_extracted": len(feats.not_extracted)}}
    tmp = out / (ENGINE_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp, out / ENGINE_FILE)
    return meta


def category_scores(run_dir: Path, catalog: Catalog, split: str, cache_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Category probabilities of a run that classifies (Park et al.'s OC path) for one split's items with a
    known category: (scores (n, C), true class indices (n,), class names)."""
    model, info = load_run(run_dir)
    if not hasattr(model, "predict_category"):
        raise EngineError(f"model {info.model} does not classify categories")
    attr = model.config["category_attribute"]
    part = catalog.split(split).filter(lambda it: it.attributes.get(attr) in model.schema.values(attr))
    feats = catalogue_features(part, trunk_from_json(info.trunk), cache_dir, progress=False)
    scores = _embed(model.predict_category, feats.maps)
    labels = np.array([model.schema.index(attr, part[i].attributes[attr]) for i in feats.ids])
    return scores, labels, list(model.schema.values(attr))


@dataclass
class Hit:
    id: str
    score: float
    attributes: dict
    image: Path | None
    matches: dict = field(default_factory=dict)  # attribute -> does the item have the requested value


class Engine:
    def __init__(self, model: SearchModel, info, spaces: dict, catalog: Catalog, spec, cache_dir: Path,
                 meta: dict | None = None):
        self.model, self.info, self.spaces, self.catalog = model, info, spaces, catalog
        self.spec, self.cache_dir, self.meta = spec, Path(cache_dir), meta or {}
        self._encoder = None
        self._cache = None

    @classmethod
    def load(cls, run_dir: Path, index_dir: Path, catalog: Catalog | None = None, cache_dir: Path | None = None) -> "Engine":
        from vestis.index import load_index

        index_dir = Path(index_dir)
        if not (index_dir / ENGINE_FILE).is_file():
            raise EngineError(f"{index_dir} is not an index built by `vestis index` ({ENGINE_FILE} is missing)")
        try:
            meta = json.loads((index_dir / ENGINE_FILE).read_text())
        except ValueError as e:  # truncated or not JSON: rebuild
            raise EngineError(f"{index_dir / ENGINE_FILE} is corrupt ({e}); rebuild the index with `vestis index`") from None
        model, info = load_run(run_dir)
        if meta.get("run_id") != info.run_id:
            raise EngineError(f"index {index_dir} was built with run {meta.get('run_id')}, not with {info.run_id} "
                              f"({run_dir}); rebuild it with `vestis index --run {run_dir}`")
        spaces = {s: load_index(index_dir / s, expect_run_id=info.run_id, expect_schema_digest=model.schema.digest())
                  for s in meta["spaces"]}
        if catalog is None:
            path = meta["catalog"]["path"]
            if not path:
                raise EngineError(f"index {index_dir} does not record its catalogue; pass it explicitly")
            catalog = Catalog.load(Path(path), format=meta["catalog"].get("format"))
        return cls(model, info, spaces, catalog, trunk_from_json(info.trunk), cache_dir or default_cache_dir(), meta)

    # --- query features ------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Path | bytes]) -> dict[str, torch.Tensor]:
        """Trunk feature maps for image files or bytes (uploads), through the fastest verified backend."""
        from vestis.vision.extract import encode_images, make_backend

        if self._encoder is None:
            self._encoder = make_backend(self.spec, self.cache_dir).backend
        return encode_images(self._encoder, self.spec.resolution, images)

    def item_maps(self, item_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """Feature maps of catalogue items: from the cache, encoding any that are not cached."""
        from vestis.vision.cache import FeatureCache, content_hash

        if self._cache is None:
            self._cache = FeatureCache(self.cache_dir, self.spec)
        rows, todo = [], []
        for i, iid in enumerate(item_ids):
            item = self.catalog[iid]
            if item.image is None or not Path(item.image).is_file():
                raise EngineError(f"item {iid!r} has no image file ({item.image})")
            got = self._cache.get(content_hash(item.image))
            rows.append(got)
            if got is None:
                todo.append(i)
        if todo:
            enc = self.encode_images([self.catalog[item_ids[i]].image for i in todo])
            for j, i in enumerate(todo):
                rows[i] = {k: v[j].numpy() for k, v in enc.items()}
        return {lv: torch.from_numpy(np.stack([r[lv] for r in rows]).astype(np.float32)) for lv in ("s16", "s32")}

    # --- search --------------------------------------------------------------------------------
    def query_vectors(self, maps, manipulations: Sequence[Mapping[str, str]], mode: str) -> tuple[str, np.ndarray, dict]:
        """(space, query vectors, extra filters) for a mode."""
        with torch.inference_mode():
            if mode == "manipulate":
                return "main", self.model.embed_query(maps, manipulations).numpy(), {}
            if any(manipulations) and mode != "manipulate":
                raise EngineError(f"mode {mode!r} does not take manipulations; use mode 'manipulate'")
            if mode == "same_item":
                return "main", self.model.embed(maps).numpy(), {}
            if mode == "visual":
                space = "visual" if "visual" in self.spaces else "main"
                return space, visual_vectors(maps).numpy(), {}
            if mode.startswith("attribute:"):
                attr = mode.split(":", 1)[1]
                self.model.schema.check_attribute(attr)
                # candidates: items with a known value of the attribute (PROTOCOLS.md section 2)
                return "main", self.model.attribute_query(maps, attr).numpy(), {attr: list(self.model.schema.values(attr))}
        raise EngineError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")

    def search_maps(self, maps, manipulations: Sequence[Mapping[str, str]] | None = None, k: int = 30,
                    filters: Mapping | None = None, mode: str = "manipulate",
                    exclude: Sequence[str | None] | None = None) -> list[list[Hit]]:
        n = len(maps["s32"])
        manipulations = list(manipulations) if manipulations is not None else [{}] * n
        if k < 1:
            raise EngineError(f"k must be at least 1, got {k}")
        space, q, extra = self.query_vectors(maps, manipulations, mode)
        flt = {**(filters or {}), **extra}
        exclude = list(exclude) if exclude is not None else [None] * n
        res = self.spaces[space].search(q.astype(np.float32), k + (1 if any(exclude) else 0), filters=flt or None)
        out = []
        for (ids, scores), ex, m in zip(res, exclude, manipulations):
            hits = []
            for iid, s in zip(ids, scores):
                if iid == ex:
                    continue
                item = self.catalog.by_id.get(iid)
                attrs = dict(item.attributes) if item else {}
                hits.append(Hit(iid, float(s), attrs, item.image if item else None,
                                {a: attrs.get(a) == v for a, v in m.items()}))
            out.append(hits[:k])
        return out

    def modes(self) -> list[str]:
        """The search modes this run answers (`attribute:<name>` spelled out per attribute)."""
        out = ["manipulate"] if self.model.supports_manipulation else []
        out += ["same_item", "visual"] + [f"attribute:{a}" for a in self.model.schema.attributes]
        return out

    def query_maps(self, image: Path | bytes | None = None, item_id: str | None = None) -> dict[str, torch.Tensor]:
        """Feature maps of one query: a catalogue item (cached) or an image file / bytes (encoded now)."""
        if (image is None) == (item_id is None):
            raise EngineError("give exactly one of image or item_id")
        return self.item_maps([item_id]) if item_id is not None else self.encode_images([image])

    def predict_attributes(self, maps, top: int = 3) -> list[dict] | None:
        """Per query row, {attribute: {"value", "probability", "top": [{"value", "probability"}]}} for the
        attributes the run's model predicts ("value" None when "unspecified" is likelier than any value);
        None when the model has no attribute classifiers."""
        if not self.model.predicts_attributes:
            return None
        with torch.inference_mode():
            probs = self.model.attribute_probabilities(maps)
        schema, out = self.model.schema, []
        for i in range(len(maps["s32"])):
            row = {}
            for a, p in probs.items():
                names = [*schema.values(a), None]
                pi = p[i].float()
                order = torch.argsort(pi, descending=True)[:top].tolist()
                best = int(pi.argmax())
                row[a] = {"value": names[best], "probability": round(float(pi[best]), 4),
                          "top": [{"value": names[j], "probability": round(float(pi[j]), 4)} for j in order]}
            out.append(row)
        return out

    def search(self, image: Path | bytes | None = None, item_id: str | None = None,
               manipulations: Mapping[str, str] | None = None, k: int = 30, filters: Mapping | None = None,
               mode: str = "manipulate") -> list[Hit]:
        """Rank the index for one query image (path or bytes) or catalogue item, the query item itself excluded."""
        if (image is None) == (item_id is None):
            raise EngineError("give exactly one of image or item_id")
        if not 1 <= k <= MAX_K:
            raise EngineError(f"k must be between 1 and {MAX_K}, got {k}")
        for a, v in (manipulations or {}).items():
            self.model.schema.check_value(a, v)
        maps = self.item_maps([item_id]) if item_id is not None else self.encode_images([image])
        return self.search_maps(maps, [dict(manipulations or {})], k, filters, mode, exclude=[item_id])[0]


def triplet_scores(engine: Engine, queries: Sequence[Mapping]) -> list[dict]:
    """Rows {query_id, scores: [sim(x, x+ | a), sim(x, x- | a)]} for triplet queries (PROTOCOLS.md section 2):
    the attribute-specific query vector of x against the gallery vectors of x+ and x-."""
    rows = []
    for q in queries:
        maps = engine.item_maps([q["item_id"], q["positive_id"], q["negative_id"]])
        with torch.inference_mode():
            anchor = engine.model.attribute_query({k: v[:1] for k, v in maps.items()}, q["attribute"])
            others = engine.model.embed({k: v[1:] for k, v in maps.items()})
        if engine.model.metric == "l2":
            sims = -((others - anchor) ** 2).sum(-1)
        else:
            sims = others @ anchor[0]
        rows.append({"query_id": q["query_id"], "scores": [float(sims[0]), float(sims[1])]})
    return rows


def rank_queries(engine: Engine, queries: Sequence[Mapping], k: int = 50, batch: int = 256,
                 progress: bool = True) -> list[dict]:
    """Answer a query file (PROTOCOLS.md format) into rankings rows {query_id, ranked} (triplets: scores)."""
    from tqdm import tqdm

    triplets = [q for q in queries if q.get("protocol") == "triplet"]
    queries = [q for q in queries if q.get("protocol") != "triplet"]
    rows = triplet_scores(engine, triplets) if triplets else []
    bar = tqdm(total=len(queries), desc="search", unit="query", disable=not progress)
    for i in range(0, len(queries), batch):
        chunk = queries[i:i + batch]
        by_mode: dict[str, list[int]] = {}
        for j, q in enumerate(chunk):
            mode = f"attribute:{q['attribute']}" if q.get("protocol") == "attribute" else (
                "same_item" if q.get("protocol") == "same_item" else "manipulate")
            by_mode.setdefault(mode, []).append(j)
        ranked: dict[int, list[str]] = {}
        for mode, js in by_mode.items():
            sub = [chunk[j] for j in js]
            item_ids = [q.get("item_id") for q in sub]
            if all(item_ids):
                maps = engine.item_maps(item_ids)
            else:
                maps = engine.encode_images([q.get("item_id") and engine.catalog[q["item_id"]].image or q["image"] for q in sub])
            # protocol 2 ranks every candidate (MAP over the full list)
            kk = len(engine.spaces["main"]) if mode.startswith("attribute:") else k
            hits = engine.search_maps(maps, [q.get("manipulations") or {} for q in sub], k=kk, mode=mode, exclude=item_ids)
            for j, h in zip(js, hits):
                ranked[j] = [x.id for x in h]
        rows.extend({"query_id": chunk[j]["query_id"], "ranked": ranked[j]} for j in range(len(chunk)))
        bar.update(len(chunk))
    bar.close()
    return rows
