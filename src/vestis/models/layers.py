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


POOLS = ("avg", "avgmax")


def pool_maps(maps, levels=("s32",), pool: str = "avg") -> torch.Tensor:
    """(N, D) float32 pooled trunk features: global average (and max, for "avgmax") pooling of each level in
    `levels`, concatenated. The one pooling every head and the "visual" space use."""
    parts = []
    for lv in levels:
        x = maps[lv].float()
        parts.append(gap(x))
        if pool == "avgmax":
            parts.append(x.amax(dim=(2, 3)))
    return torch.cat(parts, dim=-1)


def value_means(reps: torch.Tensor, labels, n_rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean representation per attribute value (the prototypes of FashionSearchNet and AMNet's memory
    initialisation): row offset(a) + v = mean of the items' representation with labels[:, a] == v, over
    v < n_rows[a] (codes at or above it, e.g. "unspecified" when n_rows counts known values only, get no row).
    reps: (N, D) one representation per item, or (N, A, D) one per attribute. Returns (means (sum n_rows, D),
    counts (sum n_rows,)); a value no item has gets a zero row."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    reps = reps.float()
    sums = torch.zeros(sum(n_rows), reps.shape[-1])
    counts = torch.zeros(sum(n_rows))
    off = 0
    for a, n in enumerate(n_rows):
        y = labels[:, a]
        known = y < n
        r = reps[:, a] if reps.ndim == 3 else reps
        sums.index_add_(0, off + y[known], r[known])
        counts.index_add_(0, off + y[known], torch.ones(int(known.sum())))
        off += n
    return sums / counts.clamp_min(1)[:, None], counts


class AttributeClassifiers(nn.Module):
    """One linear classifier per attribute over its known values plus "unspecified" (the last class),
    so a missing label is predicted and matched like any other state (PROTOCOLS.md section 1)."""

    def __init__(self, in_dim: int, n_classes: list[int]):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(in_dim, c) for c in n_classes)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [h(x) for h in self.heads]


# --- class / attribute activation maps, box fitting, ROI features (FashionSearchNet) -----------------
def class_activation_maps(features: torch.Tensor, weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al. 2016; FashionSearchNet's attribute activation map, eq. 2): M_c = sum_k w(k, c) f_k.

    features (N, K, H, W) feed a linear classifier on their global average pool whose weight is (C, K);
    classes (N,) picks the class per row. Returns (N, H, W). The bias is left out, as in the formula.
    """
    return torch.einsum("nk,nkhw->nhw", weight[classes], features)


def box_from_map(activation, threshold: float = 0.2, connectivity: int = 2) -> tuple[int, int, int, int]:
    """Fit a box to the largest connected region of cells above `threshold` of an activation map's maximum.

    The map (H, W) is min-max normalised first (as CAM's reference code does, so a map with negative values
    is measured from its minimum); cells strictly above `threshold` are segmented, connected components are
    labelled (connectivity 2 = 8-neighbourhood, 1 = 4-neighbourhood; scipy.ndimage.label) and the largest
    one (ties: the one holding the highest cell) gives the box (x0, y0, x1, y1) in cell units, x1 / y1
    exclusive: cell (i, j) covers [j, j+1) x [i, i+1), the feature-map convention of
    `vestis.vision.preprocess`. A constant map gives the whole map.
    """
    import numpy as np
    from scipy import ndimage

    m = np.asarray(activation, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"an activation map must be 2-D, got shape {m.shape}")
    h, w = m.shape
    lo, hi = float(m.min()), float(m.max())
    if not np.isfinite(hi - lo) or hi - lo <= 1e-12:
        return (0, 0, w, h)
    mask = (m - lo) / (hi - lo) > threshold
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, connectivity))
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        best = np.flatnonzero(sizes == sizes.max()) + 1
        if len(best) > 1:  # tie: the component holding the highest cell
            peaks = ndimage.maximum(m, labels, best)
            best = best[int(np.argmax(peaks))]
        else:
            best = best[0]
        mask = labels == best
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def boxes_from_maps(activations: torch.Tensor, threshold: float = 0.2, connectivity: int = 2) -> torch.Tensor:
    """`box_from_map` over maps of any leading shape (..., H, W) -> float32 boxes (..., 4) in cell units."""
    import numpy as np

    a = activations.detach().float().cpu().numpy()
    flat = a.reshape(-1, *a.shape[-2:])
    out = np.array([box_from_map(m, threshold, connectivity) for m in flat], dtype=np.float32).reshape(*a.shape[:-2], 4)
    return torch.from_numpy(out)


def roi_features(features: torch.Tensor, boxes: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """ROI-align the cells inside each box to a fixed grid: features (N, K, H, W), boxes (N, 4) in cell units
    (x0, y0, x1, y1; x1 / y1 exclusive, as `box_from_map` returns) -> (N, K, oh, ow).

    torchvision's roi_align (aligned=True: feature index j sits at continuous coordinate j + 0.5) samples a grid
    spanning the box; here the grid spans the CENTRES of the box's first and last cells, so bilinear
    interpolation only ever reads cells inside the box (a one-cell box gives that cell everywhere).
    """
    from torchvision.ops import roi_align

    b = boxes.to(features.dtype).reshape(-1, 4)
    inset = torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=b.dtype, device=b.device)
    rois = torch.cat([torch.arange(len(b), dtype=b.dtype, device=b.device)[:, None], b + inset], dim=1)
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    return roi_align(features, rois, size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
