"""What a model's `explain(maps)` returns: one `Explanation` per image, a list of `Region`s.

A region is one thing the model can point at: an attribute (its activation map, the box fitted to it and the
predicted value), an attention map, or a part box. Every field is optional but the name and the confidence,
so one renderer (`vestis.overlay.render_overlay`) draws any of them: a heatmap where there is one, a box where
there is one, and "name: label (confidence)" above it.

Coordinates: heatmaps lie on the feature grid (H, W) = `Explanation.map_size`; boxes are (x0, y0, x1, y1) in
feature-map cells, x1 / y1 exclusive (as `layers.box_from_map` returns); `Explanation.stride` trunk-input
pixels per cell. "Unspecified" (the attribute is not labelled / not visible) is a state, not a visual class:
when it is likelier than the best known value the region's label is None and it has no box
(`attribute_explanations`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vestis.errors import VestisError

Box = tuple[float, float, float, float]


def _box(b, what: str) -> Box | None:
    if b is None:
        return None
    a = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != (4,) or not np.isfinite(a).all():
        raise VestisError(f"{what} must be 4 finite numbers (x0, y0, x1, y1), got {b!r}")
    return tuple(float(v) for v in a)


@dataclass(frozen=True, eq=False)
class Region:
    """One attribute (or attention map, or part) of one image.

    `label` is the predicted value, None meaning "unspecified"; `confidence` the probability of `label` (of
    "unspecified" when label is None). `map_label` / `map_confidence`: the value whose activation map `heatmap`
    is and its probability - the label itself unless that is unspecified, which has no map of its own.
    `heatmap_box` is the box fitted to the heatmap (at `Explanation.threshold`) whatever the label, what
    `vestis localisation` scores; `box` is what is drawn (None when the label is unspecified). `pooled_box` is
    the box the model actually pooled for its representation (FashionSearchNet: the AAM box at its training
    threshold, or the whole map without localisation); None where the model pools no box."""

    name: str
    heatmap: np.ndarray | None = None
    box: Box | None = None
    label: str | None = None
    confidence: float = 1.0
    map_label: str | None = None
    map_confidence: float | None = None
    unspecified: float | None = None  # P("unspecified"), where the model has that state
    heatmap_box: Box | None = None
    pooled_box: Box | None = None

    def __post_init__(self):
        if self.heatmap is not None:
            m = np.asarray(self.heatmap, dtype=np.float64)
            if m.ndim != 2:
                raise VestisError(f"region {self.name!r}: a heatmap must be 2-D (H, W), got shape {m.shape}")
            object.__setattr__(self, "heatmap", m)
        for f in ("box", "heatmap_box", "pooled_box"):
            object.__setattr__(self, f, _box(getattr(self, f), f"region {self.name!r}: {f}"))
        object.__setattr__(self, "confidence", float(self.confidence))


@dataclass(frozen=True, eq=False)
class Explanation:
    """The regions of one image; `model` and `method` ("aam", "cam", "grad-cam", ...) say where they come from,
    `threshold` the share of a map's maximum its boxes were fitted at (None where boxes are not fitted)."""

    regions: list[Region]
    stride: int
    map_size: tuple[int, int]  # (H, W) of the feature grid
    model: str = ""
    method: str = ""
    threshold: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "regions", list(self.regions))
        object.__setattr__(self, "stride", int(self.stride))
        object.__setattr__(self, "map_size", (int(self.map_size[0]), int(self.map_size[1])))
        names = [r.name for r in self.regions]
        if len(set(names)) != len(names):
            raise VestisError(f"an explanation's region names must be unique, got {names}")
        for r in self.regions:
            if r.heatmap is not None and r.heatmap.shape != self.map_size:
                raise VestisError(f"region {r.name!r}: heatmap of shape {r.heatmap.shape} on a {self.map_size} grid")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.regions]

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise VestisError(f"no region {name!r} in this explanation; regions: {', '.join(self.names)}")

    @property
    def whole_map(self) -> Box:
        """The whole feature grid as a box, in cells."""
        h, w = self.map_size
        return (0.0, 0.0, float(w), float(h))

    def box_in_input_pixels(self, box: Box) -> Box:
        """A box in cells -> trunk-input pixels (the letterboxed input)."""
        return tuple(float(v) * self.stride for v in _box(box, "box"))

    def box_in_photo(self, box: Box, geometry) -> Box:
        """A box in cells -> pixels of the original photo through its letterbox `geometry`
        (`vision.preprocess.Letterbox`), clipped to the photo."""
        x0, y0, x1, y1 = geometry.feature_to_image(_box(box, "box"), self.stride)
        return (max(x0, 0.0), max(y0, 0.0), min(x1, float(geometry.src_w)), min(y1, float(geometry.src_h)))


def attribute_explanations(attributes: Sequence[str], values: Sequence[Sequence[str]], heatmaps,
                           classes, probabilities: Sequence, boxes, *, stride: int, model: str, method: str,
                           threshold: float | None, pooled_boxes=None) -> list[Explanation]:
    """One Explanation per image from per-attribute maps of a classifier with an "unspecified" state.

    attributes (A names) with their known `values`; heatmaps (N, A, H, W), the map of each attribute's most
    confident known value `classes` (N, A); probabilities: per attribute (N, values + 1), the last column
    "unspecified"; boxes (N, A, 4) fitted to the heatmaps; pooled_boxes (N, A, 4) or None. Arrays or tensors.
    Where P("unspecified") exceeds the best known value's probability the region's label is None and it has
    no box (the heatmap and `heatmap_box` stay, for what the model looked at)."""
    heat = _numpy(heatmaps)
    cls = _numpy(classes).astype(np.int64)
    probs = [_numpy(p) for p in probabilities]
    bx = _numpy(boxes)
    pooled = None if pooled_boxes is None else _numpy(pooled_boxes)
    n, a_count, h, w = heat.shape
    if len(attributes) != a_count or len(probs) != a_count or len(values) != a_count:
        raise VestisError(f"{len(attributes)} attributes, {len(values)} value lists and {len(probs)} probability "
                          f"tables for {a_count} maps")
    out = []
    for i in range(n):
        regions = []
        for j, name in enumerate(attributes):
            c = int(cls[i, j])
            p_value, p_unspec = float(probs[j][i, c]), float(probs[j][i, -1])
            unspecified = p_unspec > p_value
            regions.append(Region(
                name=name, heatmap=heat[i, j], box=None if unspecified else bx[i, j],
                label=None if unspecified else values[j][c], confidence=p_unspec if unspecified else p_value,
                map_label=values[j][c], map_confidence=p_value, unspecified=p_unspec, heatmap_box=bx[i, j],
                pooled_box=None if pooled is None else pooled[i, j]))
        out.append(Explanation(regions=regions, stride=stride, map_size=(h, w), model=model, method=method,
                               threshold=threshold))
    return out


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


__all__ = ["Box", "Explanation", "Region", "attribute_explanations"]
