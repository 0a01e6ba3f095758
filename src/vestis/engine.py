"""The search engine: a trained run + its index (one per vector space) + the catalogue behind it.

`Engine.search` answers "this image / item, with these manipulations" in any mode the run's model plans
(`model.modes()`): the model turns the query's feature maps into probes (`model.plan`), the engine runs each probe
in its space and answers `Result(groups=[Group(label, box, hits)])` - one group for the flat modes
(manipulate, same_item, visual, attribute:<name>), one per part for part-based ones. Every check of a request
(mode, manipulations, filters, k, one query) happens here, once; the HTTP API and the CLI call this.
Index directories are built by `vestis.indexing.build_index`.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vestis import catalogue_ranking
from vestis.catalog import Catalog
from vestis.errors import VestisError, echo
from vestis.indexing import ENGINE_FILE, check_spaces, parent_id, read_attribute_updates
from vestis.models import Probe, Request, SearchModel, Space
from vestis.models.base import PART_LABEL
from vestis.paths import default_cache_dir
from vestis.runs import load_run
from vestis.vision.trunk import TrunkSpec

MAX_K = 1000  # for interactive search; query files may rank whole candidate sets
# `search` and `search_batch` run the model's query side in blocks of exactly this many rows (padded with copies of
# the first): MKL multiplies 1-3 rows with other kernels than 4 or more (the last bit of a product differs,
# measured), so a fixed block is what makes a query's answer the same alone and batched with others. 4, the fewest
# rows that take the kernel of larger blocks (a row's values in a block of 4 are those in a block of 8 or 16,
# measured on this machine's MKL), so a lone query or a pair - what each of two server processes mostly sees - pads
# to 4 rows, not 8 (the classifiers' and the plan's cost per batch: 0.38 against 0.53 ms for one query)
QUERY_BLOCK = 4
# modes a run may lack, and why
MODE_NEEDS = {"manipulate": "it needs a model that applies manipulations (attribute_baseline, fashionsearchnet, amnet)",
              "diverse": "it needs a part-based model (parts)"}

class EngineError(VestisError):
    pass


@dataclass(slots=True)  # slots: tens of thousands are made per second while serving
class Hit:
    id: str
    score: float
    attributes: dict  # the catalogue item's own labels (shared with the catalogue: do not modify)
    image: Path | None
    matches: dict = field(default_factory=dict)  # attribute -> does the item have the requested value
    part: int | None = None  # which of the item's parts matched, in a per-part space


@dataclass
class Group:
    """One list of results: all of a flat mode's, or one part's (`label`, `box` in query-image trunk-input
    pixels (x0, y0, x1, y1), `score` how sure the model is that the part is there)."""

    label: str
    hits: list[Hit]
    box: tuple[float, float, float, float] | None = None
    score: float | None = None


@dataclass
class Result:
    """The answer to one query: its groups, in the model's order. Iterating a Result walks `hits`."""

    groups: list[Group]
    # the query's predicted attributes (`Engine.predict_attributes`), where known; read-only (a kept item's is shared)
    predicted: dict | None = None
    labels: str = "off"  # "on": ranked with the catalogue's labels (catalogue-aware); "off": vision only
    note: str | None = None  # e.g. that no gallery item has exactly the target labels ("closest first")
    crop: list | None = None  # an uploaded photo cut to its foreground: the box used, in the photo's pixels

    @property
    def hits(self) -> list[Hit]:
        """The groups read round-robin (first of each, then second, ...), each item once; a flat mode's one
        group as it is (PROTOCOLS.md section 4's merged list)."""
        if len(self.groups) == 1:
            return self.groups[0].hits
        out, seen = [], set()
        for rank in range(max((len(g.hits) for g in self.groups), default=0)):
            for g in self.groups:
                if rank < len(g.hits) and g.hits[rank].id not in seen:
                    seen.add(g.hits[rank].id)
                    out.append(g.hits[rank])
        return out

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i):
        return self.hits[i]


def dedupe_groups(groups: list[Group], k: int) -> list[Group]:
    """Several groups of one query: each item stays only in the group where it ranks best (ties: the earlier group),
    each group keeps its first k, and groups left empty are dropped (a part with nothing to suggest is not shown)."""
    best: dict[str, tuple[int, int]] = {}
    for gi, g in enumerate(groups):
        for rank, h in enumerate(g.hits):
            best[h.id] = min(best.get(h.id, (rank, gi)), (rank, gi))
    out = []
    for gi, g in enumerate(groups):
        hits = [h for rank, h in enumerate(g.hits) if best[h.id] == (rank, gi)][:k]
        if hits:
            out.append(Group(g.label, hits, g.box, g.score))
    return out


def _merge_filters(user: Mapping | None, plan: Mapping | None) -> dict:
    """Both must hold: an attribute in both keeps the values in both."""
    out = {a: [v] if isinstance(v, str) else list(v) for a, v in (user or {}).items()}
    for a, v in (plan or {}).items():
        vals = [v] if isinstance(v, str) else list(v)
        out[a] = [x for x in out[a] if x in vals] if a in out else vals
    return out


class Engine:
    def __init__(self, model: SearchModel, info, spaces: dict, catalog: Catalog, spec: TrunkSpec, cache_dir: Path,
                 meta: dict | None = None):
        self.model, self.info, self.spaces, self.catalog = model, info, spaces, catalog
        self.spec, self.cache_dir, self.meta = spec, Path(cache_dir), meta or {}
        self.space_defs = dict(model.spaces())
        if catalogue_ranking.SPACE in spaces:  # the engine's own space (catalogue-aware ranking), not the model's
            self.space_defs[catalogue_ranking.SPACE] = Space(spaces[catalogue_ranking.SPACE].dim, "ip")
        self._encoder = None
        self._cache = None
        self._hashes: dict = {}  # image path -> ((size, mtime), content hash), see item_maps
        # `keep_item_queries`: image content hash -> row of `_kept_probs` (per attribute) and `_kept_summary` (per
        # level: the model's `query_summary`), float32
        self._kept_rows: dict[str, int] = {}
        self._kept_probs: dict[str, np.ndarray] = {}
        self._kept_summary: dict[str, np.ndarray] = {}
        self._kept_described: dict[str, dict] = {}  # a kept item's `_describe` row, made on its first search
        self._present = None
        self.label_weight = catalogue_ranking.LABEL_WEIGHT
        # labels on, photo queries: prefer only what the run learnt from photos where it was trained on some
        mapping = ((getattr(info, "history", None) or {}).get("mix") or {}).get("mapping")
        self.photo_preferences = [mapping["target_attribute"]] if mapping else None
        # ... and score the mapped attribute's values by the probability of their mapped sets (the run learnt only
        # the sets from photos; `catalogue_ranking.set_hit_probabilities`); None: per-value predictions
        self.photo_sets = {mapping["target_attribute"]: list(mapping["map"].values())} if mapping else None
        self.index_dir: Path | None = None  # where `load` read the index (attribute updates write there)
        # the trunk levels a search reads: the model's, and s32 for the "visual" space every model has (None: all)
        levels = getattr(model, "levels", None)
        self.search_levels = frozenset((*levels, "s32")) if levels is not None else None

    @classmethod
    def load(cls, run_dir: Path, index_dir: Path, catalog: Catalog | None = None, cache_dir: Path | None = None) -> "Engine":
        index_dir = Path(index_dir)
        text = cls._read_engine_json(index_dir)
        meta = cls._parse_engine_json(index_dir, text)  # a broken index is said before the run is loaded
        model, info = load_run(run_dir)
        for attempt in range(3):
            try:
                spaces = cls._load_spaces(index_dir, meta, run_dir, model, info)
                break
            except VestisError:
                # a rebuild may have switched generations (and removed ours) while we read: read the new one
                now = cls._read_engine_json(index_dir)
                if attempt == 2 or now == text:
                    raise
                text, meta = now, cls._parse_engine_json(index_dir, now)
        if catalog is None:
            path = meta["catalog"]["path"]
            if not path:
                raise EngineError(f"index {index_dir} does not record its catalogue; pass it explicitly")
            catalog = Catalog.load(Path(path), format=meta["catalog"].get("format"))
        changes = read_attribute_updates(index_dir, meta)
        if changes:  # `vestis index --update-attributes`: the catalogue as the index was last updated
            try:
                catalog.set_attributes({i: c for i, c in changes.items() if i in catalog})
            except VestisError as e:
                raise EngineError(f"{index_dir}: its attribute updates no longer fit the catalogue ({e}); rebuild the "
                                  f"index with `vestis index`") from None
        engine = cls(model, info, spaces, catalog, TrunkSpec.from_json(info.trunk), cache_dir or default_cache_dir(), meta)
        engine.index_dir = index_dir
        return engine

    def set_search_threads(self, n: int) -> None:
        """Every index searches several queries (a batch) on at most `n` threads (a server process: 1)."""
        for index in self.spaces.values():
            index.set_search_threads(n)

    @staticmethod
    def _read_engine_json(index_dir: Path) -> str:
        try:
            return (index_dir / ENGINE_FILE).read_text()
        except FileNotFoundError:
            raise EngineError(f"{index_dir} is not an index built by `vestis index` ({ENGINE_FILE} is missing)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise EngineError(f"cannot read {index_dir / ENGINE_FILE}: {e}") from None

    @staticmethod
    def _parse_engine_json(index_dir: Path, text: str) -> dict:
        try:
            meta = json.loads(text)
            if not isinstance(meta["spaces"], dict):
                raise TypeError("'spaces' is not an object")
        except (ValueError, KeyError, TypeError) as e:
            raise EngineError(f"{index_dir / ENGINE_FILE} is corrupt ({e}); rebuild the index with `vestis index`") from None
        return meta

    @staticmethod
    def _load_spaces(index_dir: Path, meta: dict, run_dir, model, info) -> dict:
        """Every space engine.json names, checked to come from that one build."""
        from vestis.index import load_index

        if meta.get("run_id") != info.run_id:
            raise EngineError(f"index {index_dir} was built with run {meta.get('run_id')}, not with {info.run_id} "
                              f"({run_dir}); rebuild it with `vestis index --run {run_dir}`")
        missing = set(model.spaces()) - set(meta["spaces"])
        if missing:
            raise EngineError(f"index {index_dir} lacks the space(s) {sorted(missing)} that model {model.name} "
                              f"searches; rebuild it with `vestis index --run {run_dir}`")
        try:  # every space from the one build engine.json describes, before any is opened
            dirs = check_spaces(index_dir, meta)
        except VestisError as e:
            raise EngineError(str(e)) from None
        spaces = {}
        try:
            for s, d in dirs.items():
                spaces[s] = load_index(d, expect_run_id=info.run_id, expect_schema_digest=model.schema.digest())
        except BaseException:
            for idx in spaces.values():
                idx.close()
            raise
        return spaces

    # --- query features ------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Path | bytes], crop: bool = False,
                      boxes: list | None = None, studio: list | None = None) -> dict[str, torch.Tensor]:
        """Trunk feature maps for image files or bytes (uploads), through the fastest verified backend; crop:
        each photo cut to its foreground first (`vision.crop`), the boxes appended to `boxes`; `studio` receives
        whether each photo is a packshot on studio white."""
        from vestis.vision.extract import encode_images, make_backend

        if self._encoder is None:
            self._encoder = make_backend(self.spec, self.cache_dir).backend
        return encode_images(self._encoder, self.spec.resolution, images, crop=crop, boxes=boxes, studio=studio)

    def _item_hash(self, iid: str) -> str:
        """The content hash of a catalogue item's image (the feature cache's key), read again only when the file's
        size or modification time changed."""
        from vestis.vision.cache import content_hash

        item = self.catalog.by_id.get(iid)
        if item is None:
            raise EngineError(f"unknown item id {echo(iid)}")
        try:
            st = os.stat(item.image) if item.image is not None else None
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise EngineError(f"item {iid!r} has no image file ({item.image})")
        key = (st.st_size, st.st_mtime_ns)
        kept = self._hashes.get(item.image)
        if kept is None or kept[0] != key:
            kept = self._hashes[item.image] = (key, content_hash(item.image))
        return kept[1]

    def item_maps(self, item_ids: Sequence[str], encode_missing: bool = True,
                  levels: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """Feature maps of catalogue items: from the cache, encoding any that are not cached (with
        encode_missing=False, those are an error instead); `levels`: only these trunk levels (a search reads only
        `search_levels`: no float32 copy of the others)."""
        from vestis.vision.s32_stages import open_cache

        if self._cache is None:
            self._cache = open_cache(self.cache_dir, self.spec)
        rows, todo = [], []
        for i, iid in enumerate(item_ids):
            got = self._cache.get(self._item_hash(iid), copy=False)  # converted to float32 below
            rows.append(got)
            if got is None:
                todo.append(i)
        if todo and not encode_missing:
            missing = [item_ids[i] for i in todo]
            raise EngineError(f"{len(missing)} item(s) have no cached features ({', '.join(map(repr, missing[:5]))}"
                              f"{', ...' if len(missing) > 5 else ''}) in {self.cache_dir}; run `vestis extract` "
                              f"with the same --cache first")
        if todo:
            enc = self.encode_images([self.catalog[item_ids[i]].image for i in todo])
            for j, i in enumerate(todo):
                rows[i] = {k: v[j].numpy() for k, v in enc.items()}
        keep = [lv for lv in rows[0] if levels is None or lv in levels]
        if len(rows) == 1:  # one query: one conversion, no stacking copy (the same values)
            return {lv: torch.from_numpy(rows[0][lv][None].astype(np.float32)) for lv in keep}
        return {lv: torch.from_numpy(np.stack([r[lv] for r in rows]).astype(np.float32)) for lv in keep}

    def query_maps(self, image: Path | bytes | None = None, item_id: str | None = None, crop: bool = False,
                   boxes: list | None = None, studio: list | None = None) -> dict[str, torch.Tensor]:
        """Feature maps of one query: a catalogue item (cached) or an image file / bytes (encoded now; crop: cut
        to its foreground first, the box appended to `boxes`; `studio`: whether it is a packshot)."""
        if (image is None) == (item_id is None):
            raise EngineError("give exactly one query: an item id or an image")
        if item_id is not None:
            return self.item_maps([item_id], levels=self.search_levels)
        return self.encode_images([image], crop, boxes, studio)

    # --- requests ------------------------------------------------------------------------------
    def modes(self) -> list[str]:
        """The search modes this run answers (`attribute:<name>` spelled out per attribute)."""
        return self.model.modes()

    def unavailable_modes(self) -> dict[str, str]:
        """Modes other runs answer that this one does not, and why."""
        return {m: why for m, why in MODE_NEEDS.items() if m not in self.modes()}

    def check_request(self, mode: str, manipulations: Sequence[Mapping[str, str]], filters: Mapping | None) -> dict:
        """Refuse what the run cannot answer, with what it can; returns the filters as {attribute: [values]}."""
        modes = self.modes()
        if mode not in modes:
            run = f"this run (model {self.model.name})"
            if mode == "manipulate":
                raise EngineError(f"{run} cannot apply manipulations; it answers: {', '.join(modes)}")
            if mode in MODE_NEEDS:
                raise EngineError(f"mode {echo(mode)} is not available: {MODE_NEEDS[mode]}; {run} answers: {', '.join(modes)}")
            raise EngineError(f"unknown mode {echo(mode)}; {run} answers: {', '.join(modes)}")
        for m in manipulations:
            if m and mode != "manipulate":
                raise EngineError(f"mode {echo(mode)} does not take manipulations; use mode 'manipulate'")
            for a, v in m.items():
                self.model.schema.check_value(a, v)
        out = {}
        cat_schema = self.catalog.schema
        for a, v in (filters or {}).items():
            cat_schema.check_attribute(a)
            vals = [v] if isinstance(v, str) else list(v)
            if not vals:
                raise EngineError(f"filter {echo(a)} has an empty list of values, which no item matches; give one or "
                                  f"more of: {', '.join(cat_schema.values(a))}, or leave it out")
            for x in vals:
                cat_schema.check_value(a, x)
            out[a] = vals
        return out

    # --- search --------------------------------------------------------------------------------
    def search_maps(self, maps, manipulations: Sequence[Mapping[str, str]] | None = None, k: int = 30,
                    filters: Mapping | None = None, mode: str = "manipulate",
                    exclude: Sequence[str | None] | None = None, labels: bool = True,
                    query_labels: Sequence[Mapping[str, str] | None] | None = None,
                    probabilities: Mapping[str, torch.Tensor] | None = None,
                    shopper: Sequence[bool] | None = None, block: int | None = None) -> list[Result]:
        """One Result per query row of `maps` (a batch): the model's plan, run probe by probe.

        labels=True (the product default) ranks `manipulate` queries with the catalogue's labels where the index
        has the label space (`vestis.catalogue_ranking`); `query_labels[i]` are query i's own catalogue labels
        (a catalogue item), used as its preferences. labels=False reads no label at all (the papers' protocol).
        `probabilities`: the model's attribute probabilities of these maps, where the caller already has them.
        `shopper[i]`: query i is a shopper's photo, whose preferences are limited to `photo_preferences` (default:
        every query without catalogue labels). `block`: run the model's query side in blocks of exactly this many
        rows (padded), so that each row's answer is the same whatever other rows it came with (`QUERY_BLOCK`)."""
        n = len(next(iter(maps.values())))
        manipulations = [dict(m) for m in manipulations] if manipulations is not None else [{}] * n
        if len(manipulations) != n:
            raise EngineError(f"{len(manipulations)} manipulation sets for {n} queries")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise EngineError(f"k must be a whole number of at least 1, got {k!r}")
        filters = self.check_request(mode, manipulations, filters)
        exclude = list(exclude) if exclude is not None else [None] * n
        if block and n > block:  # one block of rows at a time (each row's answer is its own either way)
            out = []
            for s in range(0, n, block):
                part = slice(s, s + block)
                out += self.search_maps(
                    {lv: m[part] for lv, m in maps.items()}, manipulations[part], k, filters, mode, exclude[part],
                    labels, query_labels[part] if query_labels is not None else None,
                    {a: p[part] for a, p in probabilities.items()} if probabilities is not None else None,
                    shopper[part] if shopper is not None else None, block=block)
            return out
        groups: list[list[Group]] = [[] for _ in range(n)]
        if block and n < block:  # the model plans a full block; the padding rows' probes are dropped
            probes = [t for t in (self._trim(p, n) for p in self.model.plan(
                _pad(maps, block), Request(mode, manipulations + [{}] * (block - n),
                                           _pad(probabilities, block) if probabilities is not None else None)))
                      if t is not None]
        else:
            probes = self.model.plan(maps, Request(mode, manipulations, probabilities))
        on = labels and mode == "manipulate" and catalogue_ranking.SPACE in self.spaces
        notes: list[str | None] = [None] * n
        if on:
            probes, notes = self._label_probes(maps, probes, manipulations, query_labels, probabilities, shopper,
                                               block)
        elif labels and any(self._catalogue_part_filter(p) for p in probes):
            on = True  # a part's group among the gallery items whose catalogue label is the part's, not predicted
            probes = [self._catalogue_part_filter(p) or p for p in probes]
        answers = np.bincount(np.concatenate([self._probe_rows(p) for p in probes]), minlength=n) if probes else np.zeros(n, int)
        fetch = 2 * k if (answers > 1).any() else k  # several groups per query: spare hits for de-duplication
        for probe in probes:
            got = dict(self._run_probe(probe, fetch, filters, exclude, manipulations))
            short = [j for j, q in enumerate(self._probe_rows(probe)) if len(got[q].hits) < k]
            if on and mode == "manipulate" and short:  # fewer than k items meet the requested values: the closest others follow them
                relaxed = Probe(probe.space, probe.vectors[short], rows=self._probe_rows(probe)[short])
                for q, more in self._run_probe(relaxed, 2 * k, filters, exclude, manipulations):
                    seen = {h.id for h in got[q].hits}
                    n_met = len(got[q].hits)
                    got[q].hits += [h for h in more.hits if h.id not in seen][:k - n_met]
                    wanted = ", ".join(f"{a} {v}" for a, v in manipulations[q].items())
                    notes[q] = (f"only {n_met} item{'s' if n_met != 1 else ''} ha{'ve' if n_met != 1 else 's'} "
                                f"{wanted}; the closest others follow") if n_met else f"no item has {wanted}; closest first"
            for q, group in got.items():
                groups[q].append(group)
        groups = [dedupe_groups(g, k) if len(g) > 1 else [Group(x.label, x.hits[:k], x.box, x.score) for x in g]
                  for g in groups]
        return [Result(g, labels="on" if on else "off", note=note) for g, note in zip(groups, notes)]

    def _label_probes(self, maps, probes: list[Probe], manipulations: list[dict], query_labels, probabilities=None,
                      shopper=None, block=None):
        """The model's "main" probe turned into label-space probes, one per distinct set of requested values (their
        constraints are filters inside the index), and per row a note when no gallery item has the exact target."""
        (main,) = [p for p in probes if p.space == "main"]
        schema = self.model.schema
        probs = {a: p.numpy() for a, p in (probabilities or self._probabilities(maps, block)).items()}
        rows = catalogue_ranking.targets(schema, probs, manipulations, query_labels, self.photo_preferences, shopper,
                                         self.photo_sets)
        scale = self.meta["spaces"][catalogue_ranking.SPACE]["labels"]
        q = catalogue_ranking.query_vectors(schema, rows, main.vectors, scale["main_metric"], scale, self.label_weight)
        by_request: dict[tuple, list[int]] = {}
        for i, m in enumerate(manipulations):
            by_request.setdefault(tuple(sorted(m.items())), []).append(i)
        out = [Probe(catalogue_ranking.SPACE, q[idx], filters=catalogue_ranking.constraints(dict(key)), rows=np.array(idx))
               for key, idx in by_request.items()]
        present = self._label_vectors()
        notes = []
        for t in rows:
            want = catalogue_ranking.target_vector(schema, t)
            notes.append(None if want in present else "no item has exactly " + ", ".join(
                f"{a} {v}" for a, v in zip(schema.attributes, want) if v != "unspecified") + "; closest first")
        return out, notes

    def _label_vectors(self) -> set[tuple[str, ...]]:
        """The exact label vectors (over the run's attributes) of the indexed gallery, for "no exact match" notes."""
        if self._present is None:
            schema = self.model.schema
            self._present = set()
            for iid in self.spaces[catalogue_ranking.SPACE].ids():
                it = self.catalog.by_id.get(iid)
                attrs = it.attributes if it else {}
                self._present.add(tuple(attrs.get(a) if attrs.get(a) in schema.values(a) else "unspecified"
                                        for a in schema.attributes))
        return self._present

    def _catalogue_part_filter(self, probe: Probe) -> Probe | None:
        """Labels on: a probe filtering a labelled per-part space on the model's part label, filtering instead on
        the catalogue attribute those labels are values of (every part of an item carries the item's labels); None
        for any other probe."""
        space = self.space_defs.get(probe.space)
        flt = probe.filters or {}
        if space is None or space.members != "parts" or not space.label_attribute or PART_LABEL not in flt:
            return None
        flt = {**{a: v for a, v in flt.items() if a != PART_LABEL}, space.label_attribute: flt[PART_LABEL]}
        return Probe(probe.space, probe.vectors, flt, probe.group, probe.rows, probe.boxes, probe.scores)

    @classmethod
    def _trim(cls, probe: Probe, n: int) -> Probe | None:
        """The probe without its rows for query rows n and after (a block's padding); None if nothing is left."""
        rows = cls._probe_rows(probe)
        keep = rows < n
        if keep.all():
            return probe
        if not keep.any():
            return None
        return Probe(probe.space, probe.vectors[keep], probe.filters, probe.group, rows[keep],
                     probe.boxes[keep] if probe.boxes is not None else None,
                     probe.scores[keep] if probe.scores is not None else None)

    @staticmethod
    def _probe_rows(probe: Probe) -> np.ndarray:
        return np.arange(len(probe.vectors)) if probe.rows is None else np.asarray(probe.rows)

    def _run_probe(self, probe: Probe, k: int, filters: dict, exclude: list, manipulations: list):
        space, index = self.space_defs[probe.space], self.spaces[probe.space]
        rows = self._probe_rows(probe)
        extra = 1 if any(exclude[q] for q in rows) else 0
        fetch = (k + extra) * (space.parts if space.members == "parts" else 1)
        flt = _merge_filters(filters, probe.filters)
        res = index.search(np.ascontiguousarray(probe.vectors, dtype=np.float32), min(fetch, max(len(index), 1)),
                           filters=flt or None)
        by_id, per_part = self.catalog.by_id, space.members == "parts"
        for j, (q, (ids, scores)) in enumerate(zip(rows.tolist(), res)):
            hits, seen = [], set()
            wanted, skip = manipulations[q].items(), exclude[q]
            for vid, s in zip(ids, np.asarray(scores).tolist()):  # the scores as Python floats, exactly
                iid, part = (parent_id(vid), int(vid.rsplit("#", 1)[1])) if per_part else (vid, None)
                if iid == skip or iid in seen:  # a per-part space: the item's best part only
                    continue
                seen.add(iid)
                item = by_id.get(iid)
                attrs = item.attributes if item else {}  # shared, read-only: a protocol-2 ranking holds every item
                hits.append(Hit(iid, s, attrs, item.image if item else None,
                                {a: attrs.get(a) == v for a, v in wanted} if wanted else {}, part))
                if len(hits) == k:
                    break
            box = tuple(float(v) for v in probe.boxes[j]) if probe.boxes is not None else None
            score = float(probe.scores[j]) if probe.scores is not None else None
            yield q, Group(probe.group, hits, box, score)

    def predict_attributes(self, maps, top: int = 3) -> list[dict] | None:
        """Per query row, {attribute: {"value", "probability", "top": [{"value", "probability"}]}} for the
        attributes the run's model predicts ("value" None when "unspecified" is likelier than any value);
        None when the model has no attribute classifiers."""
        if not self.model.predicts_attributes:
            return None
        return self._describe(self._probabilities(maps, QUERY_BLOCK), top)  # as `search` describes a query

    def _probabilities(self, maps, block: int | None = None) -> dict[str, torch.Tensor]:
        """The model's attribute probabilities; `block`: computed in blocks of exactly that many rows (padded)."""
        with torch.inference_mode():
            if not block:
                return self.model.attribute_probabilities(maps)
            n = len(next(iter(maps.values())))
            parts = [self.model.attribute_probabilities(_pad({lv: m[s:s + block] for lv, m in maps.items()}, block))
                     for s in range(0, n, block)]
            return {a: torch.cat([p[a] for p in parts])[:n] for a in parts[0]}

    def keep_item_queries(self, limit: int | None = None, chunk: int = 256) -> int:
        """Compute once and keep the query side of the catalogue items whose feature maps are cached (the first
        `limit` of them in catalogue order; None: all): the model's attribute probabilities, and its
        `query_summary` of the maps where it has one. An item-id search then reads them instead of running the
        classifiers, and instead of reading the item's feature maps (README, "HTTP API under load"). They are the
        values a search computes (blocks of `QUERY_BLOCK` rows, a row's values independent of the other rows), so
        no answer changes; they are kept by image content, so an item whose image file changes is computed per
        query again. Items without cached maps are skipped (a search encodes them). Returns how many are kept."""
        if limit is not None and limit <= 0:
            return len(self._kept_rows)
        from vestis.vision.s32_stages import open_cache

        if self._cache is None:
            self._cache = open_cache(self.cache_dir, self.spec)
        rows: dict[str, int] = dict(self._kept_rows)
        parts = [(self._kept_summary, self._kept_probs)] if self._kept_rows else []
        todo = [it.id for it in self.catalog.items if it.image is not None]
        if limit is not None:
            todo = todo[:limit]
        for s in range(0, len(todo), chunk):
            hashes, got = [], []
            for iid in todo[s:s + chunk]:
                try:
                    h = self._item_hash(iid)
                except EngineError:
                    continue
                m = self._cache.get(h, copy=False) if h not in rows and h not in hashes else None
                if m is not None:
                    hashes.append(h)
                    got.append(m)
            if not hashes:
                continue
            levels = [lv for lv in got[0] if self.search_levels is None or lv in self.search_levels]
            maps = {lv: torch.from_numpy(np.stack([m[lv] for m in got]).astype(np.float32)) for lv in levels}
            summary = self._summaries(maps) or {}
            probs = self._probabilities(summary or maps, QUERY_BLOCK) if self.model.predicts_attributes else {}
            if not summary and not probs:
                return 0  # nothing this model's queries could read
            parts.append(({lv: t.numpy() for lv, t in summary.items()}, {a: p.numpy() for a, p in probs.items()}))
            for h in hashes:
                rows[h] = len(rows)
        if parts and len(rows) > len(self._kept_rows):
            def joined(tables):
                return {k: np.ascontiguousarray(np.concatenate([t[k] for t in tables]), dtype=np.float32)
                        for k in tables[0]}
            # the tables first: a reader never sees a row past them
            self._kept_summary, self._kept_probs = joined([p[0] for p in parts]), joined([p[1] for p in parts])
            self._kept_rows = rows
        return len(self._kept_rows)

    def kept_bytes(self) -> int:
        """Memory of the query sides `keep_item_queries` kept (their tables)."""
        return sum(t.nbytes for t in (*self._kept_probs.values(), *self._kept_summary.values()))

    def _summaries(self, maps) -> dict[str, torch.Tensor] | None:
        """`model.query_summary` of these rows in padded blocks of `QUERY_BLOCK` rows, as a search runs the model;
        None for a model without summaries."""
        n = len(next(iter(maps.values())))
        parts = []
        with torch.inference_mode():
            for s in range(0, n, QUERY_BLOCK):
                out = self.model.query_summary(_pad({lv: m[s:s + QUERY_BLOCK] for lv, m in maps.items()}, QUERY_BLOCK))
                if out is None:
                    return None
                parts.append({lv: t[:min(QUERY_BLOCK, n - s)] for lv, t in out.items()})
        return {lv: torch.cat([p[lv] for p in parts]) for lv in parts[0]}

    def _query_item(self, item_id: str) -> tuple[dict[str, torch.Tensor] | None, str]:
        """(its cached maps at `search_levels`, or None where its kept summary stands in for them; its image
        content hash) for an item-id search."""
        h = self._item_hash(item_id)
        if self._kept_summary and h in self._kept_rows:
            return None, h
        return self.item_maps([item_id], levels=self.search_levels), h

    def _stack_query_maps(self, maps_of: list, hashes: list[str]) -> dict[str, torch.Tensor]:
        """One batch's maps for the model (`_query_item` per query): the cached maps stacked, or, where the model
        has summaries, every query's summary - a kept item's row, or the summary of its maps (the same values)."""
        if not self._kept_summary:
            return {lv: torch.cat([m[lv] for m in maps_of]) for lv in maps_of[0]}
        rows = self._kept_rows
        out = {lv: t[[rows.get(h, 0) for h in hashes]] for lv, t in self._kept_summary.items()}  # copies
        todo = [i for i, m in enumerate(maps_of) if m is not None]
        if todo:
            fresh = self._summaries({lv: torch.cat([maps_of[i][lv] for i in todo]) for lv in maps_of[todo[0]]})
            for lv, t in fresh.items():
                out[lv][todo] = t.numpy()
        return {lv: torch.from_numpy(t) for lv, t in out.items()}

    def _query_probabilities(self, maps, hashes: Sequence[str]) -> dict[str, torch.Tensor]:
        """`_probabilities(maps, QUERY_BLOCK)` of catalogue items (`hashes`: their image content hashes), the rows
        of items `keep_item_queries` kept read instead of computed."""
        table, kept = self._kept_probs, self._kept_rows
        rows = [kept.get(h) for h in hashes] if kept else [None] * len(hashes)
        missing = [i for i, r in enumerate(rows) if r is None]
        if len(missing) == len(rows):
            return self._probabilities(maps, QUERY_BLOCK)
        have = [i for i, r in enumerate(rows) if r is not None]
        idx = np.array([rows[i] for i in have], np.int64)
        if not missing:
            return {a: torch.from_numpy(t[idx]) for a, t in table.items()}
        fresh = self._probabilities({lv: m[missing] for lv, m in maps.items()}, QUERY_BLOCK)
        out = {}
        for a, t in table.items():
            x = np.empty((len(rows), t.shape[1]), np.float32)
            x[have] = t[idx]
            x[missing] = fresh[a].numpy()
            out[a] = torch.from_numpy(x)
        return out

    def _query_description(self, probs: Mapping[str, torch.Tensor], hashes: Sequence[str]) -> list[dict]:
        """`_describe(probs)` of catalogue items (`hashes`: their image content hashes); a kept item's description
        is made once and then shared by its answers (read-only, as every `Result.predicted`)."""
        memo, kept = self._kept_described, self._kept_rows
        out = [memo.get(h) for h in hashes]
        todo = [i for i, d in enumerate(out) if d is None]
        if todo:
            pick = todo if len(todo) < len(out) else slice(None)
            for i, d in zip(todo, self._describe({a: p[pick] for a, p in probs.items()})):
                out[i] = d
                if hashes[i] in kept:
                    memo[hashes[i]] = d
        return out

    def _describe(self, probs: Mapping[str, torch.Tensor], top: int = 3) -> list[dict]:
        schema, out = self.model.schema, []
        # numpy views of the float32 values: a few C calls per row instead of a dozen tensor ops
        rows = {a: p.float().numpy() for a, p in probs.items()}
        names = {a: [*schema.values(a), None] for a in probs}
        for i in range(len(next(iter(probs.values())))):
            row = {}
            for a, ps in rows.items():
                pi, nm = ps[i], names[a]
                # the `top` likeliest and the best; where values tie among them (or with the next one) the order is
                # torch's own (its argsort orders ties differently for different lengths), so answers never change
                order = np.argsort(-pi, kind="stable")[:max(top, 1) + 1].tolist()
                if len(set(pi[order].tolist())) < len(order):
                    t = probs[a][i].float()
                    order, best = torch.argsort(t, descending=True)[:top].tolist(), int(t.argmax())
                else:
                    best = order[0]
                pi = pi.tolist()
                row[a] = {"value": nm[best], "probability": round(pi[best], 4),
                          "top": [{"value": nm[j], "probability": round(pi[j], 4)} for j in order[:top]]}
            out.append(row)
        return out

    def search(self, image: Path | bytes | None = None, item_id: str | None = None,
               manipulations: Mapping[str, str] | None = None, k: int = 30, filters: Mapping | None = None,
               mode: str = "manipulate", labels: bool = True, crop: bool = False) -> Result:
        """Rank the index for one query image (path or bytes) or catalogue item, the query item itself excluded;
        labels=True ranks with the catalogue's labels (a catalogue item's own labels are its preferences); crop: an
        image query is cut to its foreground first (`vision.crop`), and `Result.crop` is the box used (None: the
        whole photo)."""
        if (image is None) == (item_id is None):
            raise EngineError("give exactly one query: an item id or an image")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise EngineError(f"k must be a whole number between 1 and {MAX_K}, got {k!r}")
        manipulations = dict(manipulations or {})
        self.check_request(mode, [manipulations], filters)  # before any image is decoded
        boxes: list = []
        studio: list | None = [] if image is not None and self.photo_preferences is not None else None
        hashes: list[str] = []
        if item_id is not None:
            full, h = self._query_item(item_id)
            maps, hashes = self._stack_query_maps([full], [h]), [h]
        else:
            maps = self.query_maps(image=image, crop=crop, boxes=boxes, studio=studio)
        known = [self.catalog[item_id].attributes] if item_id is not None and labels else None
        # An item query runs the model in a padded block, as `search_batch` would with other concurrent item queries,
        # so that its answer is the same either way; an uploaded photo is never batched, so it runs as its one row
        # (the padding cost about a millisecond of the photo query time, README "Photo query time").
        block = QUERY_BLOCK if item_id is not None else None
        probs = None  # once: ranking and answer
        if self.model.predicts_attributes:
            probs = self._query_probabilities(maps, hashes) if item_id is not None else self._probabilities(maps)
        result = self.search_maps(maps, [manipulations], k, filters, mode, exclude=[item_id], labels=labels,
                                  query_labels=known, probabilities=probs,
                                  shopper=[not studio[0]] if studio else None, block=block)[0]
        if probs is not None:
            described = self._query_description(probs, hashes) if item_id is not None else self._describe(probs)
            result.predicted = described[0]
        result.crop = boxes[0] if boxes else None
        return result

    def search_batch(self, queries: Sequence[Mapping]) -> list[Result | VestisError]:
        """Several catalogue-item queries at once, as a server's concurrent requests arrive: one stack of feature
        maps, the model's classifiers and plan once per block of `QUERY_BLOCK` rows, one index search per probe
        (queries asking the same share it). Each query is a mapping of `search`'s arguments (`item_id`, and
        optionally `manipulations`, `k`, `filters`, `mode`, `labels`); each answer is exactly `search`'s for that
        query alone (the model runs in fixed blocks, and FAISS searches each query row on its own), or the
        VestisError `search` raises for it."""
        out: list = [None] * len(queries)
        ready = []  # (position, item id, manipulations, k, filters, mode, labels)
        maps_of, hashes = [], []
        for i, q in enumerate(queries):
            try:
                item_id = q.get("item_id")
                if not isinstance(item_id, str):
                    raise EngineError("search_batch answers catalogue items: give each query an item_id")
                k, mode, labels = q.get("k", 30), q.get("mode", "manipulate"), q.get("labels", True)
                manipulations = dict(q.get("manipulations") or {})
                if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
                    raise EngineError(f"k must be a whole number between 1 and {MAX_K}, got {k!r}")
                filters = self.check_request(mode, [manipulations], q.get("filters"))
                full, h = self._query_item(item_id)
                maps_of.append(full)
                hashes.append(h)
            except VestisError as e:
                out[i] = e
                continue
            ready.append((i, item_id, manipulations, k, filters, mode, bool(labels)))
        if not ready:
            return out
        maps = self._stack_query_maps(maps_of, hashes)
        probs = self._query_probabilities(maps, hashes) if self.model.predicts_attributes else None
        described = self._query_description(probs, hashes) if probs is not None else None
        together: dict[tuple, list[int]] = {}  # one search_maps call per (mode, k, filters, labels)
        for j, (_, _, _, k, filters, mode, labels) in enumerate(ready):
            key = (mode, k, labels, tuple(sorted((a, tuple(v)) for a, v in filters.items())))
            together.setdefault(key, []).append(j)
        for (mode, k, labels, _), rows in together.items():
            filters = ready[rows[0]][4]
            try:
                results = self._search_rows(maps, probs, [ready[j] for j in rows], rows, k, filters, mode, labels)
            except VestisError:  # one query at a time, so that one failing query fails alone
                results = []
                for j in rows:
                    try:
                        results += self._search_rows(maps, probs, [ready[j]], [j], k, filters, mode, labels)
                    except VestisError as e:
                        results.append(e)
            for j, result in zip(rows, results):
                if isinstance(result, Result):
                    result.predicted = described[j] if described is not None else None
                out[ready[j][0]] = result
        return out

    def _search_rows(self, maps, probs, queries: list, rows: list[int], k, filters, mode, labels) -> list[Result]:
        """`search_maps` for rows `rows` of a batch's maps (`search_batch`)."""
        n = len(next(iter(maps.values())))
        if rows == list(range(n)):  # every row (the usual case): no copy of the maps
            pick = slice(None)
        else:
            pick = torch.as_tensor(rows)
        return self.search_maps(
            {lv: m[pick] for lv, m in maps.items()}, [q[2] for q in queries], k, filters or None, mode,
            exclude=[q[1] for q in queries], labels=labels,
            query_labels=[self.catalog[q[1]].attributes for q in queries] if labels else None,
            probabilities={a: p[pick] for a, p in probs.items()} if probs is not None else None, block=QUERY_BLOCK)


def _pad(rows: Mapping[str, torch.Tensor], block: int) -> dict[str, torch.Tensor]:
    """Each tensor's rows padded to a multiple of `block` with copies of its first row (real data: no model meets
    an input it never saw)."""
    out = {}
    for name, t in rows.items():
        extra = -len(t) % block
        out[name] = torch.cat([t, t[:1].expand(extra, *t.shape[1:])]) if extra else t
    return out
