"""The one small protocol every method implements, and the model registry.

Every method is a head on cached trunk feature maps (`maps`: {"s16": (N,C,H,W), "s32": ...}), so the
engine, evaluation and serving never special-case a method:
  levels                            the trunk levels it reads ("s8", "s16", "s32"); the cache extracts the union
  fit(data)                         train (and set prototypes / memory where the method has them)
  spaces() -> {name: Space}         the vector spaces it fills, each indexed on its own by the engine
  embed(maps, space)                the gallery vectors of one space: (N, D), or (N, K, D) for a per-part space
  embed_spaces(maps, names)         several spaces at once, {name: Embedding(vectors, part_labels)}: what
                                    `vestis index` calls, so a method whose spaces share a network runs it once
  plan(maps, request) -> [Probe]    the query side: which vectors to look up in which space, with which
                                    candidate filters, answered as which group of results
  modes()                           the search modes `plan` answers
  predict_attributes(maps)          per-attribute probabilities, where the method has attribute classifiers
  explain(maps) -> [Explanation]    activation / attention maps and boxes, where the method has them
`predicts_attributes` and `explains` let callers (the HTTP API) ask what a model can do without knowing which
method it is.

Every model has two spaces unless it says otherwise: "main" (its own embedding, what `same_item` and
`manipulate` search) and "visual" (cosine of pooled stride-32 trunk features: the floor, and "more like this").
The default `plan` answers the flat modes with one probe each, from the model's own `embed_query` (manipulations
applied) and `attribute_query`; a method with per-attribute or per-part spaces overrides `plan`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vestis.catalog.schema import AttributeSchema
from vestis.errors import VestisError
from vestis.models.explanation import Explanation
from vestis.models.layers import l2n, pool_maps
from vestis.models.loop import TrainData

Maps = Mapping[str, torch.Tensor]
Manipulation = Mapping[str, str]
MEMBERS = ("items", "known", "parts")
PART_LABEL = "part_label"  # the index attribute of a part row that holds its label (Space.labels)
EMBED_BATCH = 512


@dataclass(frozen=True)
class Space:
    """One vector space a model fills and the engine indexes on its own.

    members: "items" - one vector per catalogue item; "known" - only items with a known catalogue value of
    `attribute` (a per-attribute space, PROTOCOLS.md section 2's candidates); "parts" - `parts` vectors per item,
    indexed as `item#k` with a `part` attribute and collapsed back to the item (its best part) by the engine.
    `labels`: the names a per-part space's parts are labelled with (`SearchModel.part_labels`), indexed as the
    attribute `PART_LABEL` of each part row so that a probe can filter on them; () when its parts are unlabelled.
    `label_attribute`: the catalogue attribute whose values those labels are, if any: with labels on, the engine
    filters a part probe on the gallery item's catalogue label instead of the model's predicted one."""

    dim: int
    metric: str = "ip"  # "ip" (inner product) or "l2"
    members: str = "items"
    attribute: str | None = None
    parts: int = 1
    labels: tuple[str, ...] = ()
    label_attribute: str | None = None

    def __post_init__(self):
        if self.members not in MEMBERS:
            raise VestisError(f"space members must be one of {MEMBERS}, got {self.members!r}")
        if (self.members == "known") != (self.attribute is not None):
            raise VestisError("a space of members 'known' names its attribute, and only it does")


@dataclass
class Request:
    """What a batch of queries asks for: one mode, and one manipulation set per query row."""

    mode: str = "manipulate"
    manipulations: Sequence[Mapping[str, str]] = ()
    # the maps' `attribute_probabilities`, where the caller already has them: a model may read them instead of
    # running its classifiers again (the same numbers; the engine computes them once per query for its answer)
    probabilities: Mapping[str, torch.Tensor] | None = None


@dataclass
class Probe:
    """One look-up the engine runs: `vectors` (M, D) in `space`, each answering query row `rows[j]` (default:
    row j), among the candidates that pass `filters`; the hits form the group `group` of that query, with
    `boxes[j]` (x0, y0, x1, y1 in trunk-input pixels) the part of the query image it came from, if any."""

    space: str
    vectors: np.ndarray
    filters: dict | None = None
    group: str = ""
    rows: np.ndarray | None = None
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None  # (M,) how confident the model is in this group, if it knows


def attribute_space(attribute: str) -> str:
    """The name of an attribute's own vector space (members "known"), for models with one space per attribute;
    it names a folder and a Milvus collection suffix, so odd characters become "_"."""
    return "attr_" + re.sub(r"[^A-Za-z0-9_.-]", "_", attribute)


@dataclass
class Embedding:
    """One space's rows for a batch of maps: `vectors` as `embed` gives them, and for a per-part space with labels
    `part_labels` as `part_labels` gives them ((N, parts) codes into `Space.labels`), else None."""

    vectors: torch.Tensor
    part_labels: torch.Tensor | None = None


def run_batched(fn, maps: Mapping[str, np.ndarray], batch: int = EMBED_BATCH) -> np.ndarray:
    """fn over float16 numpy maps in float32 batches, under inference mode; float32 numpy, rows in order
    (any trailing shape: (N, D) or (N, K, D))."""
    n = len(next(iter(maps.values())))
    out = []
    with torch.inference_mode():
        for i in range(0, n, batch):
            out.append(np.asarray(fn({k: torch.from_numpy(v[i:i + batch]).float() for k, v in maps.items()})))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def embed_spaces_batched(model: SearchModel, names: Sequence[str], maps: Mapping[str, np.ndarray],
                         batch: int = EMBED_BATCH) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """`model.embed_spaces` over float16 numpy maps in float32 batches: {name: (float32 vectors, int64 part labels
    or None)}, rows in order. One call per batch for all `names` (one network pass where the model shares one)."""
    n = len(next(iter(maps.values())))
    parts: dict[str, tuple[list, list]] = {name: ([], []) for name in names}
    with torch.inference_mode():
        for i in range(0, n, batch):
            got = model.embed_spaces({k: torch.from_numpy(v[i:i + batch]).float() for k, v in maps.items()}, names)
            for name in names:
                parts[name][0].append(np.asarray(got[name].vectors, np.float32))
                if got[name].part_labels is not None:
                    parts[name][1].append(np.asarray(got[name].part_labels, np.int64))
    return {name: (np.concatenate(v) if v else np.zeros((0, 0), np.float32), np.concatenate(lab) if lab else None)
            for name, (v, lab) in parts.items()}


class SearchModel(nn.Module):
    name: str = ""
    levels: tuple[str, ...] = ("s32",)  # the trunk levels this method reads (the "visual" space reads s32)
    metric: str = "ip"  # how the index compares the "main" vectors: "ip" (inner product) or "l2"
    supports_manipulation: bool = False
    default_config: dict = {}
    # a configuration that trains in seconds on a tiny catalogue: the model protocol test runs every registered
    # method with it (tests/test_model_protocol.py), so a new method file is tested without a test of its own
    quick_config: dict = {}

    def __init__(self, schema: AttributeSchema, channels: Mapping[str, int], config: Mapping | None = None):
        super().__init__()
        self.schema = schema
        self.channels = dict(channels)
        unknown = set(config or {}) - set(self.default_config)
        if unknown:
            raise VestisError(f"model {self.name}: unknown config key(s) {sorted(unknown)}; "
                              f"valid: {sorted(self.default_config)}")
        self.config = {**self.default_config, **(config or {})}
        self.levels = tuple(self.levels_for(self.config))
        missing = [lv for lv in self.levels if lv not in self.channels]
        if missing:
            raise VestisError(f"model {self.name} reads trunk level(s) {missing}, which the features lack "
                              f"(they have {sorted(self.channels)}); re-extract with those levels")

    @classmethod
    def levels_for(cls, config: Mapping) -> tuple[str, ...]:
        """The trunk levels a model of this configuration reads (a subset of the class's `levels`, which the
        feature cache extracts for every method): a run on a cache of those levels alone is accepted."""
        return cls.levels

    # --- training -----------------------------------------------------------------------------
    def fit(self, data: TrainData, progress: bool = True) -> dict:
        """Train on `data`; return a small history dict (losses, seconds)."""
        return {}

    # --- the gallery side ------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Size of the "main" vectors."""
        raise NotImplementedError

    def spaces(self) -> dict[str, Space]:
        return {"main": Space(self.dim, self.metric), "visual": Space(self.channels["s32"], "ip")}

    def embed(self, maps: Maps, space: str = "main") -> torch.Tensor:
        """The vectors of `space` for these maps. Subclasses fill "main" and hand other spaces to this."""
        if space == "visual" and "visual" in self.spaces():
            return l2n(pool_maps(maps, ("s32",)))
        raise VestisError(f"model {self.name} has no vector space {space!r}; spaces: {', '.join(self.spaces())}")

    def part_labels(self, maps: Maps, space: str) -> torch.Tensor:
        """(N, parts) codes into `spaces()[space].labels`: each part's label, for a per-part space with labels."""
        raise VestisError(f"model {self.name} does not label the parts of space {space!r}")

    def embed_spaces(self, maps: Maps, names: Sequence[str]) -> dict[str, Embedding]:
        """Several spaces of the same maps at once: {name: Embedding(embed(maps, name), part_labels(maps, name) for
        a per-part space with labels)}. This default asks each space on its own; a method whose spaces share one
        network (parts, agmlan) overrides it to run that network once, and must return exactly the same rows
        (tests/test_embed_spaces.py)."""
        spaces = self.spaces()
        out = {}
        for name in names:
            space = spaces.get(name)
            labels = (self.part_labels(maps, name) if space is not None and space.members == "parts" and space.labels
                      else None)
            out[name] = Embedding(self.embed(maps, name), labels)
        return out

    # --- the query side --------------------------------------------------------------------------
    def modes(self) -> list[str]:
        """The search modes `plan` answers (`attribute:<name>` spelled out per attribute)."""
        out = ["manipulate"] if self.supports_manipulation else []
        return out + ["same_item", "visual"] + [f"attribute:{a}" for a in self.schema.attributes]

    def plan(self, maps: Maps, request: Request) -> list[Probe]:
        """The probes that answer `request` for these query maps; the engine runs them (Probe, Result)."""
        mode = request.mode
        with torch.inference_mode():
            if mode == "manipulate":
                return [Probe("main", self.embed_query(maps, request.manipulations).numpy())]
            if mode == "same_item":
                return [Probe("main", self.embed(maps, "main").numpy())]
            if mode == "visual":
                space = "visual" if "visual" in self.spaces() else "main"
                return [Probe(space, self.embed(maps, space).numpy())]
            if mode.startswith("attribute:"):
                attr = mode.split(":", 1)[1]
                self.schema.check_attribute(attr)
                # candidates: items with a known value of the attribute (PROTOCOLS.md section 2)
                return [Probe("main", self.attribute_query(maps, attr).numpy(), group=attr,
                              filters={attr: list(self.schema.values(attr))})]
        raise VestisError(f"unknown mode {mode!r}; model {self.name} answers: {', '.join(self.modes())}")

    def query_summary(self, maps: Maps) -> Maps | None:
        """Smaller maps that every query-side method of this model (`plan`, `embed`, `attribute_probabilities`)
        reads exactly as it reads `maps`, for the engine to keep per catalogue item instead of reading the item's
        feature maps per search (`Engine.keep_item_queries`). The engine calls it on blocks of
        `QUERY_BLOCK` rows, as a search runs the model. None (the default): this model needs the whole maps."""
        return None

    def embed_query(self, maps: Maps, manipulations: Sequence[Manipulation] | None = None) -> torch.Tensor:
        """"main" query vectors with the manipulations applied; a model that cannot manipulate has none."""
        raise VestisError(f"model {self.name} cannot apply manipulations; modes: {', '.join(self.modes())}")

    def attribute_query(self, maps: Maps, attribute: str) -> torch.Tensor:
        """Query vector for "similar with respect to `attribute`" against the "main" vectors. Without an
        attribute-specific model this is the plain embedding (the plan restricts candidates to items with a
        known value of the attribute)."""
        return self.embed(maps, "main")

    # --- attributes and explanations ------------------------------------------------------------
    def predict_attributes(self, maps: Maps) -> list[torch.Tensor]:
        """Per attribute of the schema (in order), (N, values + 1) probabilities; the last column is
        "unspecified". Only models with attribute classifiers have it."""
        raise VestisError(f"model {self.name} does not predict attributes")

    def attribute_probabilities(self, maps: Maps) -> dict[str, torch.Tensor]:
        """{attribute: (N, values + 1) probabilities} for the attributes this model predicts (all of the
        schema's for `predict_attributes`; a model that classifies only some attributes overrides this)."""
        return dict(zip(self.schema.attributes, self.predict_attributes(maps)))

    @property
    def predicts_attributes(self) -> bool:
        cls = type(self)
        return (cls.predict_attributes is not SearchModel.predict_attributes
                or cls.attribute_probabilities is not SearchModel.attribute_probabilities)

    def explain(self, maps: Maps) -> list[Explanation]:
        """One Explanation (regions: a heatmap and / or box per attribute, attention step or part) per row of
        `maps`, where the model has maps; `vestis.overlay.render_overlay` draws any of them."""
        raise VestisError(f"model {self.name} has no explanation maps")

    @property
    def explains(self) -> bool:
        return type(self).explain is not SearchModel.explain

    # --- helpers for subclasses ---------------------------------------------------------------
    def check_manipulations(self, manipulations: Sequence[Manipulation] | None, n: int) -> list[dict]:
        """Validate against the schema (clear errors listing valid choices); one dict per query."""
        if manipulations is None:
            return [{} for _ in range(n)]
        if isinstance(manipulations, Mapping):
            manipulations = [manipulations] * n
        if len(manipulations) != n:
            raise VestisError(f"{len(manipulations)} manipulation sets for {n} queries")
        out = []
        for m in manipulations:
            for a, v in m.items():
                self.schema.check_value(a, v)
            out.append(dict(m))
        return out


# --- registry -------------------------------------------------------------------------------------
MODELS: dict[str, type[SearchModel]] = {}


def register(cls: type[SearchModel]) -> type[SearchModel]:
    MODELS[cls.name] = cls
    return cls


def create_model(name: str, schema: AttributeSchema, channels: Mapping[str, int], config: Mapping | None = None) -> SearchModel:
    import vestis.models  # noqa: F401  (registers the built-in methods)

    if name not in MODELS:
        raise VestisError(f"unknown model {name!r}; models: {', '.join(sorted(MODELS))}")
    cls = MODELS[name]
    # the initial weights come from the config's seed, so one configuration trains to the same run twice
    # (fit_loop seeds the batches; before this, the heads' initialisation drew from wherever torch's RNG stood)
    torch.manual_seed(int({**getattr(cls, "default_config", {}), **(config or {})}.get("seed", 0)))
    return cls(schema, channels, config)


def declared_levels() -> tuple[str, ...]:
    """The union of the trunk levels the registered methods read: what the feature cache extracts, so every
    method trains and searches on one cache."""
    import vestis.models  # noqa: F401

    return tuple(sorted({lv for cls in MODELS.values() for lv in cls.levels}))
