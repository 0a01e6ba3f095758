"""The trunk's compute backends: eager PyTorch and ONNX Runtime, each a callable from a uint8 NHWC batch to the
trunk's levels. Shared by the single-process extractor (`vision/extract.py`) and the Ray actors
(`vision/extract_ray.py`), which is why they live apart from both."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vestis.machine import cpu_count
from vestis.vision.trunk import Trunk


class PreprocessedTrunk(nn.Module):
    """uint8 NHWC batch -> normalised float NCHW -> trunk -> the trunk's levels, a tuple in `trunk.levels` order."""

    def __init__(self, trunk: Trunk):
        super().__init__()
        self.trunk = trunk
        self.register_buffer("mean", torch.tensor(trunk.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(trunk.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = (images.permute(0, 3, 1, 2).to(torch.float32) - self.mean) / self.std
        return self.trunk(x)


class TorchBackend:
    """Eager PyTorch. channels_last=False is the plain reference path (NCHW contiguous)."""

    def __init__(self, trunk: Trunk, channels_last: bool = True):
        self.name = "torch" if channels_last else "torch-nchw"
        self.channels_last = channels_last
        if channels_last:  # on a copy: .to() converts parameters in place, and the trunk may be shared
            trunk = copy.deepcopy(trunk).to(memory_format=torch.channels_last)
        self.module = PreprocessedTrunk(trunk).eval()
        self.levels = trunk.levels

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch))
            if not self.channels_last:
                x = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # NCHW storage, same values
            return {lv: m.contiguous().numpy() for lv, m in zip(self.levels, self.module(x))}


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path | bytes, threads: int | None = None):
        """path: the exported .onnx file, or its bytes (a Ray actor gets them through the object store)."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or cpu_count()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads would spin and steal the cores the decode threads need.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = None if isinstance(path, bytes) else Path(path)
        model = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.levels = tuple(o.name for o in self.session.get_outputs())  # export_onnx names outputs by level

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.uint8)})
        return dict(zip(self.levels, out))
