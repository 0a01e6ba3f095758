"""`visual`: cosine similarity of pooled trunk features. Ignores manipulations - the floor every
attribute-aware method must beat. Its one space is "main"; the visual mode searches it too."""

from __future__ import annotations

import torch

from vestis.errors import VestisError
from vestis.models.base import Maps, SearchModel, Space, register
from vestis.models.layers import averages_as_maps, l2n, pool_maps


@register
class VisualModel(SearchModel):
    name = "visual"
    levels = ("s16", "s32")  # the level is a config choice
    default_config = {"level": "s32"}

    def __init__(self, schema, channels, config=None):
        super().__init__(schema, channels, config)
        if self.config["level"] not in self.channels:
            raise VestisError(f"model visual: level must be one of {sorted(self.channels)}, got {self.config['level']!r}")

    @property
    def dim(self) -> int:
        return self.channels[self.config["level"]]

    def spaces(self) -> dict[str, Space]:
        return {"main": Space(self.dim, "ip")}

    def embed(self, maps: Maps, space: str = "main") -> torch.Tensor:
        if space != "main":
            return super().embed(maps, space)
        return l2n(pool_maps(maps, (self.config["level"],)))

    def query_summary(self, maps: Maps) -> Maps:
        """The one read is the level's global average, so that average as a 1 x 1 map reads exactly the same."""
        return averages_as_maps(maps, (self.config["level"],))
