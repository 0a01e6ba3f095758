"""Layers shared by several methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gap(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling (N, C, H, W) -> (N, C)."""
    return x.mean(dim=(2, 3))


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


class AttributeClassifiers(nn.Module):
    """One linear classifier per attribute over its known values plus "unspecified" (the last class),
    so a missing label is predicted and matched like any other state (PROTOCOLS.md section 1)."""

    def __init__(self, in_dim: int, n_classes: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(in_dim, c) for c in n_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [h(x) for h in self.heads]
