"""What the benchmarks take from a trained run, its index and the engine, in one place.

The benchmarks time the engine's parts one by one (the model's `embed` and `embed_query`, `Engine.search_maps`,
the index of the main space, the training pipeline's `catalogue_features`), below the engine's public
`search`. Every such call goes through `BenchRun`, so a change of the engine's API is met here alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


class BenchRun:
    """A trained run with its index and catalogue, as the benchmarks use it."""

    def __init__(self, engine, mode: str = "manipulate"):
        from vestis.models.base import attribute_space

        self.engine = engine
        self.model = engine.model
        self.run_id: str = engine.info.run_id
        self.catalog = engine.catalog
        self.cache_dir: Path = engine.cache_dir
        # the space the timed mode searches: "main" for manipulate and same_item (the plain item vector, Park et al.'s
        # same-product search), an attribute's own space for attribute:<name>
        # where the model has one (else "main", the whole-item vector)
        self.mode = mode
        self.space_name = "main"
        if mode.startswith("attribute:"):
            self.model.schema.check_attribute(mode.split(":", 1)[1])
            own = attribute_space(mode.split(":", 1)[1])
            self.space_name = own if own in engine.spaces else "main"
        elif mode not in ("manipulate", "same_item"):
            from vestis.errors import VestisError

            raise VestisError(f"the benchmark times manipulate, same_item or attribute:<name> queries, not {mode!r}")
        elif mode not in self.model.modes():
            from vestis.errors import VestisError

            raise VestisError(f"model {self.model.name} does not answer {mode!r}; it answers {', '.join(self.model.modes())}")
        self.space = engine.spaces[self.space_name]
        self.metric: str = engine.space_defs[self.space_name].metric
        self.index_name = f"{engine.meta.get('backend', '?')} {engine.meta.get('kind', '?')}"

    @classmethod
    def load(cls, run_dir: Path, index_dir: Path, cache_dir: Path | None = None,
             catalog_path: Path | None = None, mode: str = "manipulate") -> BenchRun:
        """The run and the index `vestis index` built from it; the catalogue is the index's unless given."""
        from vestis.catalog import Catalog
        from vestis.engine import Engine

        catalog = Catalog.load(catalog_path) if catalog_path is not None else None
        return cls(Engine.load(run_dir, index_dir, catalog=catalog, cache_dir=cache_dir), mode)

    def query_maps(self, item_ids: list[str]) -> list[dict]:
        """Each item's cached trunk maps as a batch of one ({level: (1, C, H, W) tensor}), in order."""
        maps = self.engine.item_maps(item_ids)
        return [{lv: v[i:i + 1] for lv, v in maps.items()} for i in range(len(item_ids))]

    def embed_query(self, maps, manipulation: Mapping[str, str]) -> np.ndarray:
        """The model's query vector (1, D) for one item's maps and its manipulation (no index); for an
        attribute:<name> mode, the vector the model's plan looks up (the manipulation is not used)."""
        if self.mode == "manipulate":
            return self.model.embed_query(maps, [manipulation]).numpy()
        from vestis.models import Request

        (probe,) = self.model.plan(maps, Request(self.mode, [{}]))
        return probe.vectors

    def search(self, maps, manipulation: Mapping[str, str], k: int, exclude: str | None, labels: bool = False):
        """One manipulation query through the engine, as a user's request: query vector + index search (labels
        off: vision only, as the protocol figures; on: catalogue-aware ranking)."""
        return self.engine.search_maps(maps, [manipulation], k=k, exclude=[exclude], labels=labels)

    def embed_maps(self, maps: Mapping[str, np.ndarray]) -> np.ndarray:
        """(N, D) float32 item vectors of float16 / float32 maps ({level: (N, C, H, W)}), in batches."""
        from vestis.models import run_batched

        return run_batched(lambda m: self.model.embed(m, self.space_name), maps)

    def catalogue_maps(self, catalog=None):
        """The cached trunk maps (a FeatureSet) of `catalog` (default: the run's), encoding what is missing."""
        from vestis.vision.extract import catalogue_features

        return catalogue_features(self.catalog if catalog is None else catalog, self.engine.spec, self.cache_dir,
                                  progress=False)

    def encode_image(self, path: Path):
        """Trunk maps of one image file (decode + letterbox + trunk), as a search by photo encodes it."""
        return self.engine.encode_images([path])
