"""Numeric gradient checks (float64, torch.autograd.gradcheck) of the custom layers: FashionSearchNet's CAM and
ROI pooling path, AMNet's memory addressing and manipulator."""

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

from vestis.catalog import AttributeSchema
from vestis.models import create_model
from vestis.models.layers import class_activation_maps, roi_features

SCHEMA = AttributeSchema({"colour": ["red", "blue", "green"], "sleeve": ["short", "long"]})
CH = {"s16": 8, "s32": 16}


def _g(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def test_cam_gradcheck_wrt_features_and_weights():
    feats, weight = _g(2, 3, 4, 5), _g(4, 3, seed=1)
    classes = torch.tensor([2, 0])
    assert gradcheck(lambda f, w: class_activation_maps(f, w, classes), (feats, weight))


@pytest.mark.parametrize("inset", [True, False])
def test_roi_features_gradcheck_wrt_features(inset):
    feats = _g(2, 3, 6, 5)
    # integer cell boxes (box mode "minmax") and fractional ones (box mode "paper")
    boxes = torch.tensor([[1.0, 2.0, 4.0, 5.0], [0.3125, 0.6875, 3.1875, 2.5]], dtype=torch.float64)
    assert gradcheck(lambda f: roi_features(f, boxes, 2, inset=inset), (feats,))


class _Manipulate(nn.Module):
    """AMNet.manipulate as a forward, so functional_call can substitute the memory."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, r, h):
        return self.model.manipulate(r, h)


@pytest.mark.parametrize("config", [{}, {"indicator": "binary"}, {"indicator_norm": "none"},
                                    {"current": "probabilities"}])
def test_amnet_memory_addressing_gradcheck_wrt_memory_and_r(config):
    m = create_model("amnet", SCHEMA, CH, {"hidden": 8, "dim": 4, **config}).double()
    r = _g(3, 4, seed=2)
    memory = _g(5, 4, seed=3)
    new = torch.tensor([[1, -1], [2, 0], [-1, 1]])
    if config.get("current") == "probabilities":
        current = torch.tensor([[0.5, 0.3, 0.2, 0.9, 0.1], [0.2, 0.2, 0.6, 0.4, 0.6], [0.1, 0.1, 0.8, 0.3, 0.7]],
                               dtype=torch.float64)
    else:
        current = torch.tensor([[0, 0], [1, 1], [2, 0]])
    h = m.indicator(current, new).double()
    wrapper = _Manipulate(m)
    assert gradcheck(lambda mem, rr: functional_call(wrapper, {"model.memory.memory": mem}, (rr, h)), (memory, r))
    assert gradcheck(lambda mem: functional_call(m.memory, {"memory": mem}, (h,)), (memory,))
