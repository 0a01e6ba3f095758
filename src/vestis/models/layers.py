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


def averages_as_maps(maps, levels) -> dict[str, torch.Tensor]:
    """Each level's global average as a (N, C, 1, 1) map: what `pool_maps(..., "avg")` reads from it is exactly the
    average of the whole map (the mean of one cell is the cell), so a model that reads only averages can be handed
    these instead (`SearchModel.query_summary`)."""
    return {lv: gap(maps[lv].float())[:, :, None, None] for lv in dict.fromkeys(levels)}


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
        known = (y >= 0) & (y < n)  # negative codes (a mixed-in catalogue's NO_LOSS) have no value
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


BOX_MODES = ("minmax", "paper")


def _largest_region_boxes(masks, values, connectivity: int):
    """Boxes (N, 4) as (x0, y0, x1, y1), x1 / y1 exclusive, of the largest connected region of each mask
    (N, H, W) (ties: the region holding the highest value of `values`; then the first in raster order).
    Every mask must have a set cell. One scipy.ndimage.label call labels the whole stack (a 3-D structure
    that never joins two maps), so a batch of maps costs one C pass, not one Python call per map.
    connectivity 2 = 8-neighbourhood, 1 = 4-neighbourhood."""
    import numpy as np
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, connectivity)
    labels, n = ndimage.label(masks, structure=structure)
    ids = np.arange(1, n + 1)
    objects = ndimage.find_objects(labels)  # per label: (map, rows, cols) slices of its bounding box
    owner = np.array([o[0].start for o in objects])
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=n + 1)[1:]
    # peaks only where a map's largest size is tied (rare on real maps; ndimage.maximum would sort every pixel)
    peaks = np.zeros(n)
    biggest = np.zeros(len(masks), dtype=np.int64)
    np.maximum.at(biggest, owner, sizes)
    tied = sizes == biggest[owner]
    tied &= np.bincount(owner[tied], minlength=len(masks))[owner] > 1
    if tied.any():
        pick = tied[np.maximum(flat - 1, 0)] & (flat > 0)
        peaks[tied] = -np.inf
        np.maximum.at(peaks, flat[pick] - 1, values.ravel()[pick])
    # per map the last of (size, peak, -label) ascending: the largest, then the highest, then the first
    order = np.lexsort((-ids, np.nan_to_num(peaks, nan=-np.inf), sizes, owner))
    last = order[np.r_[owner[order][1:] != owner[order][:-1], True]]
    boxes = np.empty((len(masks), 4), dtype=np.int64)
    for k in last:
        _, rows, cols = objects[k]
        boxes[owner[k]] = (cols.start, rows.start, cols.stop, rows.stop)
    return boxes


def upsample_map(activation: torch.Tensor, scale: int) -> torch.Tensor:
    """(..., H, W) -> (..., H*scale, W*scale), bilinear (align_corners=False: cell centres stay at cell centres,
    the border replicates), as CAM's localisation resizes a map to the image."""
    if scale == 1:
        return activation
    lead = activation.shape[:-2]
    x = activation.reshape(-1, 1, *activation.shape[-2:])
    up = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    return up.reshape(*lead, *up.shape[-2:])


def box_from_map(activation, threshold: float = 0.2, connectivity: int = 2, mode: str = "minmax",
                 scale: int = 1) -> tuple:
    """Fit a box to the largest connected region of an activation map (H, W) above `threshold` of its maximum.

    mode "minmax" (FashionSearchNet's default, what the README's figures were measured with): the map is
    min-max normalised (as CAM's reference code does, so a map with negative values is measured from its
    minimum: cells of zero evidence pass a 20 % threshold when the map has negative cells) and cells strictly
    above `threshold` are segmented on the feature grid; returns integer cells.
    mode "paper" (the papers' localisation): the map is clamped at 0 (negative evidence is no evidence),
    upsampled bilinearly by `scale` (the trunk stride: image resolution), and pixels strictly above
    `threshold` x its maximum are segmented there; returns the box in (fractional) cell units, pixel edges /
    `scale`. A map with no positive cell gives the whole map.
    Connected components (scipy.ndimage.label; connectivity 2 = 8-neighbourhood, 1 = 4-neighbourhood): the
    largest one (ties: the one holding the highest value) gives the box (x0, y0, x1, y1) in cell units, x1 / y1
    exclusive: cell (i, j) covers [j, j+1) x [i, i+1), the feature-map convention of `vestis.vision.preprocess`.
    A constant map gives the whole map.
    """
    import numpy as np

    m = torch.from_numpy(np.array(activation, dtype=np.float64))
    if m.ndim != 2:
        raise ValueError(f"an activation map must be 2-D, got shape {tuple(m.shape)}")
    box = _boxes(m[None], threshold, connectivity, mode, scale)[0]
    return tuple(float(v) for v in box) if mode == "paper" else tuple(int(v) for v in box)


def _boxes(maps: torch.Tensor, threshold: float, connectivity: int, mode: str, scale: int):
    """float64 maps (N, H, W) -> numpy boxes (N, 4) in cell units, as `box_from_map` describes."""
    import numpy as np

    if mode not in BOX_MODES:
        raise ValueError(f"box mode must be one of {BOX_MODES}, got {mode!r}")
    n, h, w = maps.shape
    if mode == "paper":
        values = upsample_map(maps.clamp_min(0.0), int(scale)).numpy()
        hi = values.reshape(n, -1).max(1)
        whole = ~np.isfinite(hi) | (hi <= 1e-12)  # no positive evidence: the whole map
        masks = values > (threshold * hi)[:, None, None]
    else:
        values = maps.numpy()
        flat = values.reshape(n, -1)
        lo, hi = flat.min(1), flat.max(1)
        with np.errstate(invalid="ignore", over="ignore"):
            span = hi - lo
            whole = ~np.isfinite(span) | (span <= 1e-12)  # constant (or non-finite) map: the whole map
            masks = (values - lo[:, None, None]) / np.where(whole, 1.0, span)[:, None, None] > threshold
    masks[whole] = True
    boxes = _largest_region_boxes(masks, values, connectivity)
    return boxes / float(scale) if mode == "paper" else boxes


def boxes_from_maps(activations: torch.Tensor, threshold: float = 0.2, connectivity: int = 2,
                    mode: str = "minmax", scale: int = 1) -> torch.Tensor:
    """`box_from_map` over maps of any leading shape (..., H, W) -> float32 boxes (..., 4) in cell units,
    segmented in one batched pass."""
    import numpy as np

    a = activations.detach().cpu().double()
    lead, (h, w) = a.shape[:-2], a.shape[-2:]
    if a.numel() == 0:
        if mode not in BOX_MODES:
            raise ValueError(f"box mode must be one of {BOX_MODES}, got {mode!r}")
        return torch.zeros(*lead, 4)
    boxes = _boxes(a.reshape(-1, h, w), threshold, connectivity, mode, scale)
    return torch.from_numpy(np.asarray(boxes, dtype=np.float32).reshape(*lead, 4))


def roi_features(features: torch.Tensor, boxes: torch.Tensor, output_size: int | tuple[int, int],
                 inset: bool = True) -> torch.Tensor:
    """ROI-align the cells inside each box to a fixed grid: features (N, K, H, W), boxes (N, 4) in cell units
    (x0, y0, x1, y1; x1 / y1 exclusive, as `box_from_map` returns) -> (N, K, oh, ow).

    torchvision's roi_align (aligned=True: feature index j sits at continuous coordinate j + 0.5) samples a grid
    spanning the box. `inset` (for integer cell boxes, box mode "minmax"): the grid spans the CENTRES of the
    box's first and last cells, so bilinear interpolation only ever reads cells inside the box (a one-cell box
    gives that cell everywhere). inset=False (fractional boxes, box mode "paper"): the grid spans the box's own
    continuous extent, roi_align's convention, reading neighbouring cells where the box edge cuts a cell.
    """
    from torchvision.ops import roi_align

    b = boxes.to(features.dtype).reshape(-1, 4)
    if inset:
        b = b + torch.tensor([0.5, 0.5, -0.5, -0.5], dtype=b.dtype, device=b.device)
    rois = torch.cat([torch.arange(len(b), dtype=b.dtype, device=b.device)[:, None], b], dim=1)
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    return roi_align(features, rois, size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


# --- texture encoding (Deep TEN; the part descriptor of `parts`) ------------------------------------------
class TextureEncoding(nn.Module):
    """Deep TEN's encoding layer (Zhang, Xue, Dana, CVPR 2017 "Deep TEN: texture encoding network"): K learnable
    codewords c_k (D,) and smoothing factors s_k > 0 turn a set of descriptors x_i (D,) into K aggregated residuals

        a_ik = softmax_k(-s_k ||x_i - c_k||^2)          (soft assignment)
        e_k  = sum_i a_ik (x_i - c_k)  ->  E = A^T X - (sum_i A)^T * C     (exact, no (N, K, D) residual tensor)

    x (B, N, D) -> E (B, K, D). The normalisation is the caller's (`texture_descriptor`). Pure PyTorch, differentiable in
    x, c and s (tests: float64 gradcheck, a naive loop). s_k is kept positive as softplus of a parameter, so the
    assignment always prefers near codewords (the reference code lets the sign float)."""

    def __init__(self, dim: int, codewords: int = 32):
        super().__init__()
        std = 1.0 / (codewords * dim) ** 0.5
        self.codewords = nn.Parameter(torch.empty(codewords, dim).uniform_(-std, std))
        # softplus(0.54) ~ 1: unit smoothing at the start
        self.raw_scale = nn.Parameter(torch.full((codewords,), 0.5413))

    @property
    def scale(self) -> torch.Tensor:
        return F.softplus(self.raw_scale)

    def assignment(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> A (B, N, K), rows summing to 1."""
        c = self.codewords.to(x.dtype)
        d2 = (x * x).sum(-1, keepdim=True) - 2 * x @ c.t() + (c * c).sum(-1)  # ||x_i - c_k||^2, (B, N, K)
        return torch.softmax(-self.scale.to(x.dtype) * d2.clamp_min(0), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.assignment(x)
        return a.transpose(1, 2) @ x - a.sum(1)[..., None] * self.codewords.to(x.dtype)


def texture_descriptor(e: torch.Tensor) -> torch.Tensor:
    """Deep TEN's normalisation of the encoding: E (B, K, D) flattened and L2-normalised -> (B, K * D)."""
    return l2n(e.flatten(1))
