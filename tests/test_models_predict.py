"""The model protocol's attribute predictions and explanation maps (what the HTTP API shows for a query)."""

import numpy as np
import pytest
import torch

from vestis.catalog import AttributeSchema
from vestis.errors import VestisError
from vestis.models import create_model
from vestis.models.layers import class_activation_maps, gap

SCHEMA = AttributeSchema({"category": ["shirt", "dress"], "colour": ["red", "blue", "green"], "sleeve": ["short", "long"]})
CH = {"s16": 8, "s32": 16}


def _maps(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"s16": torch.randn(n, 8, 10, 8, generator=g), "s32": torch.randn(n, 16, 5, 4, generator=g).abs()}


@pytest.mark.parametrize("name, config", [("attribute_baseline", {}), ("fashionsearchnet", {}), ("amnet", {})])
def test_classifier_models_predict_every_attribute(name, config):
    torch.manual_seed(0)
    m = create_model(name, SCHEMA, CH, config).eval()
    assert m.predicts_attributes
    probs = m.attribute_probabilities(_maps())
    assert list(probs) == SCHEMA.attributes
    for a, p in probs.items():
        assert p.shape == (4, len(SCHEMA.values(a)) + 1)  # + "unspecified"
        assert torch.allclose(p.sum(-1), torch.ones(4), atol=1e-5) and (p >= 0).all()


def test_global_embed_predicts_its_category_only():
    m = create_model("global_embed", SCHEMA, CH).eval()
    assert m.predicts_attributes
    probs = m.attribute_probabilities(_maps())
    assert list(probs) == ["category"]
    p = probs["category"]
    assert p.shape == (4, 3) and torch.allclose(p.sum(-1), torch.ones(4), atol=1e-5)
    assert (p[:, -1] == 0).all()  # the OC classifier has no "unspecified" class
    assert torch.allclose(p[:, :-1], torch.softmax(m(_maps())[1], -1))  # the OC path's softmax itself


def test_visual_predicts_nothing_and_explains_nothing():
    m = create_model("visual", SCHEMA, CH)
    assert not m.predicts_attributes and not m.explains
    with pytest.raises(VestisError, match="does not predict attributes"):
        m.attribute_probabilities(_maps())
    with pytest.raises(VestisError, match="no explanation maps"):
        m.explain(_maps())


def test_attribute_baseline_cam_is_exact_for_a_linear_head():
    """hidden 0: the classifier is linear on the pooled map, so the explanation must equal CAM (eq. 2 of
    FashionSearchNet / Zhou et al.) of the most confident known value, relu'd."""
    torch.manual_seed(1)
    m = create_model("attribute_baseline", SCHEMA, CH, {"hidden": 0}).eval()
    maps = _maps(3, seed=2)
    ex = m.explain(maps)
    assert len(ex) == 3 and all(e.method == "cam" and e.stride == 32 and e.map_size == (5, 4) for e in ex)
    logits = m.logits(maps)
    for j, (head, lg) in enumerate(zip(m.classifiers.heads, logits)):
        c = lg[:, :-1].argmax(-1)
        want = torch.relu(class_activation_maps(maps["s32"], head.weight.detach(), c))
        got = torch.from_numpy(np.stack([e.regions[j].heatmap for e in ex])).float()
        assert torch.allclose(got, want, atol=1e-4)
        assert [e.regions[j].map_label for e in ex] == [SCHEMA.values(SCHEMA.attributes[j])[int(x)] for x in c]
    assert all(r.heatmap_box is not None and r.pooled_box is None for e in ex for r in e.regions)


def test_attribute_baseline_grad_cam_with_hidden_layer():
    """With a hidden layer the map is Grad-CAM: relu(sum_k g_k f_k) with g = d logit / d pooled features."""
    torch.manual_seed(3)
    m = create_model("attribute_baseline", SCHEMA, CH, {"hidden": 16}).eval()
    maps = _maps(2, seed=4)
    ex = m.explain(maps)
    assert ex[0].method == "grad-cam" and m.explains
    pooled = gap(maps["s32"]).requires_grad_(True)
    lg = m.logits_from_pooled(pooled)[1]  # colour
    c = lg[:, :-1].argmax(-1)
    (g,) = torch.autograd.grad(lg.gather(1, c[:, None]).sum(), pooled)
    want = torch.relu(torch.einsum("nk,nkhw->nhw", g, maps["s32"]))
    assert torch.allclose(torch.from_numpy(np.stack([e.region("colour").heatmap for e in ex])).float(), want, atol=1e-5)
    assert not any(p.grad is not None for p in m.parameters())  # explaining leaves no gradients behind
    assert len(ex) == 2 and all(len(e.regions) == 3 and 0 < r.confidence <= 1 for e in ex for r in e.regions)


def test_fashionsearchnet_explains():
    m = create_model("fashionsearchnet", SCHEMA, CH).eval()
    assert m.explains
    ex = m.explain(_maps(2))
    assert len(ex) == 2 and all(e.names == SCHEMA.attributes and e.method == "aam" for e in ex)
    assert all(r.pooled_box is not None and r.heatmap.shape == ex[0].map_size for e in ex for r in e.regions)


@pytest.mark.parametrize("name", ["attribute_baseline", "fashionsearchnet"])
def test_an_attribute_that_is_most_likely_unspecified_has_no_label_and_no_box(name):
    """Push the "unspecified" logit of sleeve far up: its regions say unspecified (with that probability) and
    have no box; category, pushed to "dress", keeps its label and box."""
    torch.manual_seed(0)
    m = create_model(name, SCHEMA, CH).eval()
    with torch.no_grad():
        m.classifiers.heads[SCHEMA.attributes.index("sleeve")].bias[-1] += 100.0
        m.classifiers.heads[SCHEMA.attributes.index("category")].bias[1] += 100.0
    ex = m.explain(_maps(3))
    for e in ex:
        r = e.region("sleeve")
        assert r.label is None and r.box is None and r.confidence == pytest.approx(1.0) == r.unspecified
        assert r.map_label in SCHEMA.values("sleeve") and r.map_confidence < 1e-6 and r.heatmap_box is not None
        c = e.region("category")
        assert c.label == "dress" and c.box == c.heatmap_box is not None and c.unspecified < 1e-6
