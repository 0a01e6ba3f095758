"""vestis.models.explanation: the typed result of a model's explain(maps), and the "unspecified" rule."""

import numpy as np
import pytest
import torch

from vestis.errors import VestisError
from vestis.models.explanation import Explanation, Region, attribute_explanations
from vestis.vision.preprocess import letterbox_geometry


def test_explanation_fields_are_checked_and_boxes_map_to_pixels():
    e = Explanation([Region("a", heatmap=np.zeros((10, 8)), box=(1, 2, 3, 4), label="x", confidence=0.5)], 16, (10, 8))
    assert e.region("a").box == (1.0, 2.0, 3.0, 4.0) and e.whole_map == (0.0, 0.0, 8.0, 10.0)
    assert e.box_in_input_pixels((1, 2, 3, 4)) == (16.0, 32.0, 48.0, 64.0)
    # 100 x 200 photo at 160 x 128: scale 0.8, 24 px padding left and right; the whole map is clipped to the photo
    assert e.box_in_photo(e.whole_map, letterbox_geometry(100, 200, (160, 128))) == (0.0, 0.0, 100.0, 200.0)
    assert e.box_in_photo((4, 2, 5, 3), letterbox_geometry(100, 200, (160, 128))) == pytest.approx((50, 40, 70, 60))
    with pytest.raises(VestisError, match="no region 'b'.*regions: a"):
        e.region("b")
    with pytest.raises(VestisError, match="heatmap of shape"):
        Explanation([Region("a", heatmap=np.zeros((5, 4)))], 16, (10, 8))
    with pytest.raises(VestisError, match="must be 2-D"):
        Region("a", heatmap=np.zeros(3))
    with pytest.raises(VestisError, match="4 finite numbers"):
        Region("a", box=(0, 1, 2))
    with pytest.raises(VestisError, match="unique"):
        Explanation([Region("a"), Region("a")], 16, (10, 8))


def test_attribute_explanations_apply_the_unspecified_rule_per_item_and_attribute():
    """Item 0: colour blue (0.6) beats unspecified (0.3): labelled, boxed. Item 1: unspecified 0.7 > red 0.2:
    label None, no box, confidence 0.7, the map and its box kept. A tie keeps the known value."""
    heat = torch.rand(2, 1, 3, 4)
    probs = [torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.1, 0.7]])]
    boxes = torch.tensor([[[0.0, 1.0, 2.0, 3.0]], [[1.0, 0.0, 4.0, 2.0]]])
    ex = attribute_explanations(["colour"], [["red", "blue"]], heat, torch.tensor([[1], [0]]), probs, boxes,
                                stride=32, model="m", method="cam", threshold=0.2, pooled_boxes=boxes + 1)
    a, b = ex[0].region("colour"), ex[1].region("colour")
    assert (a.label, a.box, a.map_label) == ("blue", (0.0, 1.0, 2.0, 3.0), "blue")
    assert a.confidence == pytest.approx(0.6) and a.unspecified == pytest.approx(0.3) and a.pooled_box == (1.0, 2.0, 3.0, 4.0)
    assert b.label is None and b.box is None and b.map_label == "red" and b.heatmap_box == (1.0, 0.0, 4.0, 2.0)
    assert b.confidence == pytest.approx(0.7) and b.map_confidence == pytest.approx(0.2)
    assert np.allclose(b.heatmap, heat[1, 0].numpy()) and ex[1].map_size == (3, 4) and ex[1].method == "cam"
    tie = attribute_explanations(["colour"], [["red", "blue"]], heat[:1], torch.tensor([[0]]),
                                 [torch.tensor([[0.4, 0.2, 0.4]])], boxes[:1], stride=32, model="m", method="cam",
                                 threshold=0.2)
    assert tie[0].region("colour").label == "red" and tie[0].region("colour").pooled_box is None
    with pytest.raises(VestisError, match="2 attributes"):
        attribute_explanations(["colour", "x"], [["red", "blue"]], heat, torch.tensor([[1], [0]]), probs, boxes,
                               stride=32, model="m", method="cam", threshold=0.2)
