"""`visual`: cosine similarity of pooled trunk features. Ignores manipulations - the floor every
attribute-aware method must beat."""

from __future__ import annotations

import torch

from vestis.models.base import Maps, SearchModel, register
from vestis.models.layers import gap, l2n


@register
class VisualModel(SearchModel):
    name = "visual"
    default_config = {"level": "s32"}

    def embed(self, maps: Maps) -> torch.Tensor:
        return l2n(gap(maps[self.config["level"]].float()))
