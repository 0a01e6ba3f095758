"""A catalogue-scale benchmark gallery made of a trained run's own embeddings (for `vestis bench search`).

Real catalogues of 200,000 items are not at hand, and tiling the real vectors with Gaussian noise makes
a poor stand-in: the copies are near-duplicates whose exact top-k is decided by the noise alone, which
no approximate index can reproduce and no real catalogue looks like. So the gallery is built the way a
real one differs from item to item, in the trunk's feature-map space, and every vector is produced by
the run's own `embed`:

1. **Real items**: every catalogue item with cached feature maps (all splits; 35,469 items of
   fashion-product-images-small), embedded as they are.
2. **New items**, up to `n`: each starts from a real item chosen uniformly at random (its cached maps,
   every level) and gets, independently drawn:
   - a random crop in map space, resampled back to the map's size (`torchvision.ops.roi_align`,
     bilinear): 60-100 % of the map's area, aspect ratio 3/4-4/3, anywhere inside the map - another
     framing of the product;
   - a horizontal flip with probability 1/2;
   - with probability 1/2, a mix with a *similar* real item (one of its 10 nearest neighbours by
     pooled stride-32 features, cosine on their top 64 principal components; its own random crop):
     maps = (1 - w) * this + w * neighbour, w uniform in [0.1, 0.5] - a product between two real ones.
   The augmented maps go through `embed` like any item's, so the new vectors follow the model's real
   distribution (its classifiers' confidences, its norms, its attribute clusters) without being
   copies of real vectors. Flips leave globally pooled features unchanged, so for a pooled-feature
   model (e.g. `attribute_baseline`) the crops and mixes carry the variation.

Seeded (numpy `default_rng(seed)`), so a (run, catalogue, n, seed) always gives the same gallery; the
vectors are cached as `.npy` beside the feature cache (``<cache>/bench-gallery/``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

GALLERY_VERSION = 1
CROP_AREA = (0.6, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)
P_FLIP = 0.5
P_MIX = 0.5
MIX_WEIGHT = (0.1, 0.5)
NEIGHBOURS = 10


def _crop_boxes(rng: np.random.Generator, m: int) -> np.ndarray:
    """(m, 4) crop boxes (x0, y0, x1, y1) as fractions of the map's width and height."""
    area = rng.uniform(*CROP_AREA, m)
    aspect = np.exp(rng.uniform(np.log(CROP_ASPECT[0]), np.log(CROP_ASPECT[1]), m))
    bw = np.minimum(np.sqrt(area * aspect), 1.0)
    bh = np.minimum(np.sqrt(area / aspect), 1.0)
    x0 = rng.uniform(0, 1, m) * (1 - bw)
    y0 = rng.uniform(0, 1, m) * (1 - bh)
    return np.stack([x0, y0, x0 + bw, y0 + bh], axis=1)


def _augment(x: torch.Tensor, boxes: np.ndarray, flip: np.ndarray) -> torch.Tensor:
    """Crop each map (N, C, H, W) to its box, resample to (H, W), flip where asked."""
    from torchvision.ops import roi_align

    n, _, h, w = x.shape
    b = torch.from_numpy(boxes).to(x.dtype) * torch.tensor([w, h, w, h], dtype=x.dtype)
    rois = torch.cat([torch.arange(n, dtype=x.dtype)[:, None], b], dim=1)
    out = roi_align(x, rois, (h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    f = torch.from_numpy(flip)
    if f.any():
        out[f] = torch.flip(out[f], dims=[3])
    return out


def similar_items(maps: Mapping[str, np.ndarray], k: int = NEIGHBOURS, level: str = "s32", seed: int = 0) -> np.ndarray:
    """(N, k) row numbers of each item's k nearest other items by pooled `level` features (cosine on the
    top 64 principal components)."""
    import faiss

    x = maps[level]
    pooled = np.concatenate([x[i:i + 4096].astype(np.float32).mean(axis=(2, 3)) for i in range(0, len(x), 4096)])
    mean = pooled.mean(0)
    rng = np.random.default_rng(seed)
    sample = pooled[rng.permutation(len(pooled))[:8000]] - mean
    _, _, vt = np.linalg.svd(sample, full_matrices=False)
    z = np.ascontiguousarray((pooled - mean) @ vt[:64].T, dtype=np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    index = faiss.IndexFlatIP(z.shape[1])
    index.add(z)
    _, nn = index.search(z, k + 1)
    out = np.empty((len(z), k), dtype=np.int64)
    for i, row in enumerate(nn):  # drop the item itself (wherever a duplicate image put it)
        row = row[(row != i) & (row >= 0)]
        out[i] = row[:k] if len(row) >= k else np.resize(row, k)
    return out


def augmented_gallery(embed_maps, maps: Mapping[str, np.ndarray], n: int, seed: int = 0, batch: int = 512,
                      log=None, levels: tuple[str, ...] | None = None) -> np.ndarray:
    """(n, D) float32: the embeddings of every real item (`maps`, float16 (N, C, H, W) per level), then
    n - N embeddings of augmented maps (module docstring). `embed_maps` maps {level: numpy maps} -> (N, D) float32
    (`BenchRun.embed_maps`: the run's `embed`). levels: the levels `embed` reads (default: all of `maps`); only
    those are augmented (the stride-8 map took 80 % of the time for a model that never reads it), which leaves
    the vectors unchanged: the random draws do not depend on the levels."""
    every_level = maps
    if levels is not None:
        maps = {lv: maps[lv] for lv in levels}
    real = embed_maps(maps)
    n_real = len(real)
    if n <= n_real:
        return real[:n]
    m = n - n_real
    rng = np.random.default_rng(seed)
    nbrs = similar_items(every_level, seed=seed)
    base = rng.integers(0, n_real, m)  # gallery_sources repeats this draw
    mixed = rng.random(m) < P_MIX
    partner = nbrs[base, rng.integers(0, nbrs.shape[1], m)]
    weight = np.where(mixed, rng.uniform(*MIX_WEIGHT, m), 0.0).astype(np.float32)
    boxes_a, boxes_b = _crop_boxes(rng, m), _crop_boxes(rng, m)
    flip_a, flip_b = rng.random(m) < P_FLIP, rng.random(m) < P_FLIP
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    out[:n_real] = real
    with torch.inference_mode():
        for s in range(0, m, batch):
            sl = slice(s, min(s + batch, m))
            w = torch.from_numpy(weight[sl])[:, None, None, None]
            aug = {}
            for lv, x in maps.items():
                a = _augment(torch.from_numpy(x[base[sl]]).float(), boxes_a[sl], flip_a[sl])
                b = torch.zeros_like(a)  # the partner's maps only where they are mixed in (weight 0 elsewhere)
                mix = np.flatnonzero(mixed[sl])
                if len(mix):
                    part = partner[sl][mix]
                    b[mix] = _augment(torch.from_numpy(x[part]).float(), boxes_b[sl][mix], flip_b[sl][mix])
                aug[lv] = ((1 - w) * a + w * b).numpy()
            out[n_real + s: n_real + sl.stop] = embed_maps(aug)
            if log and (s // batch) % 50 == 0:
                log(f"[gallery] {n_real + sl.stop}/{n} vectors")
    return out


def gallery_sources(n_real: int, n: int, seed: int = 0) -> np.ndarray:
    """(n,) for every vector of `augmented_gallery(.., n, seed)`, the row of the real item it was made from (the
    real items themselves, then each new item's base item: its first random draw), so a new item can inherit that
    item's catalogue attributes (the filtered-search benchmark)."""
    if n <= n_real:
        return np.arange(n)
    return np.concatenate([np.arange(n_real), np.random.default_rng(seed).integers(0, n_real, n - n_real)])


def cached_gallery(cache_dir: Path, key: str, build) -> np.ndarray:
    """`build()` once, then the saved copy: ``<cache_dir>/bench-gallery/<key>-v<version>.npy``."""
    path = Path(cache_dir) / "bench-gallery" / f"{key}-v{GALLERY_VERSION}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    x = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, x)
    tmp.replace(path)
    return x
