"""Feature maps of a trunk whose stride-32 stages were fine-tuned (`TrunkSpec.s32_stages`, made by
`vestis train --finetune-s32`), built from the frozen trunk's cached maps instead of the images.

The s16 map is exactly the input of the stride-32 stages (`trunk.S32Stages`), and those stages are all that
changed, so every level below s32 is the frozen trunk's, and the s32 map is the fine-tuned stages run on the
cached s16 map:
  * the frozen trunk's levels (the spec's levels plus s16) come from its usual cache entry (`base_spec`),
    extracted from the images where missing;
  * the re-encoded s32 maps live in a cache of their own, holding only s32, under the spec's key with levels
    ("s32",) (`s32_spec`): that key carries the sha256 of the fine-tuned stages, so they never mix with the
    frozen trunk's maps or another fine-tuning's; what is missing there is encoded from the cached s16 maps;
  * a photo that is not in the catalogue (an upload) goes through `build_trunk(spec)`: the frozen trunk up to
    s16, then the fine-tuned stages (the same function; the catalogue's s16 maps are float16 in the cache, so the
    two agree to float16 precision, as for the frozen trunk).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from vestis.vision.cache import FeatureCache, FeatureSet, chunked_map, content_hash
from vestis.vision.trunk import S32Stages, TrunkSpec, build_trunk, sort_levels

log = logging.getLogger(__name__)

BATCH = 256


def base_spec(spec: TrunkSpec) -> TrunkSpec:
    """The frozen trunk's spec whose cache holds the levels `spec` needs below s32 and the s16 input."""
    return dataclasses.replace(spec, s32_stages=None, levels=sort_levels(set(spec.levels) | {"s16"}))


def s32_spec(spec: TrunkSpec) -> TrunkSpec:
    """The cache identity of the re-encoded s32 maps: the fine-tuned spec with level s32 only."""
    return dataclasses.replace(spec, levels=("s32",))


def stages_of(spec: TrunkSpec) -> S32Stages:
    """The fine-tuned stride-32 stages of `spec` (eval mode, frozen batch-norm, no gradients)."""
    return S32Stages(build_trunk(dataclasses.replace(spec, levels=("s32",))).model).eval()


def encode_s32(stages: S32Stages, s16: np.ndarray, batch: int = BATCH) -> np.ndarray:
    """float16 s32 maps of float16 s16 maps (N x C x H x W), in batches."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(s16), batch):
            out.append(stages(torch.from_numpy(np.asarray(s16[i:i + batch], np.float32))).numpy().astype(np.float16))
    return np.concatenate(out) if out else np.empty((0,), np.float16)


def staged_features(catalog, spec: TrunkSpec, cache_dir, feats: FeatureSet, progress: bool = True) -> FeatureSet:
    """The catalogue's maps at `spec`'s levels, s32 from the fine-tuned stages (see the module docstring), from
    `feats`, the frozen trunk's maps at `base_spec(spec)` (`vision.extract.catalogue_features` reads them first);
    the s32 maps not cached yet are encoded from the cached s16 maps and stored."""
    from tqdm import tqdm

    feats.maps.pop("s32", None)  # the frozen trunk's: replaced below
    by_id = {it.id: it for it in catalog}
    items = [by_id[i] for i in feats.ids]
    s32: np.ndarray | None = None
    with FeatureCache(cache_dir, s32_spec(spec)) as cache:
        cached = cache.load(items)
        have = {iid: r for r, iid in enumerate(cached.ids)}
        todo = [r for r, iid in enumerate(feats.ids) if iid not in have]
        if todo:
            t0 = time.perf_counter()
            stages = stages_of(spec)
            hashes = chunked_map(lambda r: content_hash(items[r].image), todo)
            bar = tqdm(total=len(todo), unit="img", desc="fine-tuned s32 from cached s16", disable=not progress)
            encoded = []
            for i in range(0, len(todo), BATCH):
                rows = todo[i:i + BATCH]
                maps = encode_s32(stages, feats.maps["s16"][rows])
                for j, r in enumerate(rows):
                    cache.put(hashes[i + j], {"s32": maps[j]})
                encoded.append(maps)
                bar.update(len(rows))
            bar.close()
            new = np.concatenate(encoded)
            if progress:
                print(f"encoded the fine-tuned s32 maps of {len(todo)} images from their cached s16 maps in "
                      f"{time.perf_counter() - t0:.1f} s ({cache.path})")
        if len(feats.ids):
            shape = cached.maps["s32"].shape[1:] if len(cached.ids) else new.shape[1:]
            s32 = np.empty((len(feats.ids), *shape), np.float16)
            if len(cached.ids):
                s32[[feats.row(i) for i in cached.ids]] = cached.maps["s32"]
            if todo:
                s32[todo] = new
    maps = {lv: m for lv, m in feats.maps.items() if lv in spec.levels}
    if "s32" in spec.levels:
        maps["s32"] = s32 if s32 is not None else np.empty((0, 0, 0, 0), np.float16)
    feats.maps = {lv: maps[lv] for lv in spec.levels}
    return feats


class StagedCache:
    """`FeatureCache.get` for a spec with fine-tuned stride-32 stages: the frozen trunk's cached levels and the
    re-encoded s32 map (encoded from the cached s16 map when it is not cached, without storing it)."""

    def __init__(self, cache_dir, spec: TrunkSpec):
        self.spec = spec
        self.base = FeatureCache(cache_dir, base_spec(spec))
        self.s32 = FeatureCache(cache_dir, s32_spec(spec))
        self._stages: S32Stages | None = None

    def get(self, h: str, copy: bool = True) -> dict[str, np.ndarray] | None:
        """`FeatureCache.get` for the staged spec (`copy` as there)."""
        got = self.base.get(h, copy=copy)
        if got is None:
            return None
        out = {lv: got[lv] for lv in self.spec.levels if lv != "s32"}
        if "s32" in self.spec.levels:
            tuned = self.s32.get(h, copy=copy)
            if tuned is None:
                if self._stages is None:
                    self._stages = stages_of(self.spec)
                tuned = {"s32": encode_s32(self._stages, got["s16"][None])[0]}
            out["s32"] = tuned["s32"]
        return out


def open_cache(cache_dir, spec: TrunkSpec):
    """What reads one image's cached maps for `spec` (`.get(content hash)`): a FeatureCache, or a StagedCache for
    a spec with fine-tuned stride-32 stages."""
    return StagedCache(cache_dir, spec) if spec.s32_stages is not None else FeatureCache(cache_dir, spec)
