"""`SearchModel.embed_spaces`: the several spaces of one batch in one pass. `tests/test_model_protocol.py` checks for
every registered (trained) method that it returns exactly the per-space rows; here, that the methods whose spaces
share a network (parts, agmlan) run it once per batch instead of once per space, and that `vestis index` asks it
once per batch for every space."""

import numpy as np
import pytest
import torch

from vestis.catalog.schema import AttributeSchema
from vestis.models import MODELS, create_model, embed_spaces_batched

pytestmark = pytest.mark.usefixtures("one_thread")
CHANNELS = {"s8": 40, "s16": 112, "s32": 320}


def _schema():
    return AttributeSchema({"category": ["shirt", "trousers", "shoes"], "colour": ["red", "blue"],
                            "sleeve": ["short", "long"]})


def _maps(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = {"s8": (20, 16), "s16": (10, 8), "s32": (5, 4)}
    return {k: torch.rand(n, c, *sizes[k], generator=g) for k, c in CHANNELS.items()}


def _counting(module):
    calls = []
    module.register_forward_hook(lambda *a: calls.append(1))
    return calls


@pytest.mark.parametrize("name", ["parts", "agmlan", "asen"])
def test_embed_spaces_runs_the_shared_network_once(name):
    model = create_model(name, _schema(), CHANNELS, dict(MODELS[name].quick_config)).eval()
    net = model if name == "parts" else model.backbone  # parts: the whole forward; agmlan: the hierarchical features
    calls = _counting(net)
    maps = _maps()
    names = list(model.spaces())
    with torch.inference_mode():
        per_space = {s: model.embed(maps, s) for s in names}
        if name == "parts":
            per_space_labels = model.part_labels(maps, "parts")
    before = len(calls)
    # the per-space path: parts runs its network for "main", "parts" and the parts' labels; agmlan for "main" and
    # each attribute's space (1 + A)
    assert before == (3 if name == "parts" else 1 + len(model.schema.attributes))
    with torch.inference_mode():
        got = model.embed_spaces(maps, names)
    assert len(calls) - before == 1
    for s in names:
        assert torch.equal(got[s].vectors, per_space[s]), s
    if name == "parts":
        assert torch.equal(got["parts"].part_labels, per_space_labels)
    # a subset without "main": still one pass, still the same rows
    subset = [s for s in names if s not in ("main", "visual")][:2]
    with torch.inference_mode():
        got = model.embed_spaces(maps, subset)
    assert len(calls) - before == 2 and sorted(got) == sorted(subset)
    for s in subset:
        assert torch.equal(got[s].vectors, per_space[s]), s


def test_batched_embed_spaces_asks_once_per_batch_and_keeps_row_order():
    model = create_model("parts", _schema(), CHANNELS, dict(MODELS["parts"].quick_config)).eval()
    asked = []
    real = model.embed_spaces
    model.embed_spaces = lambda m, names: (asked.append(list(names)), real(m, names))[1]
    maps = {k: v.numpy().astype(np.float16) for k, v in _maps(n=7).items()}
    out = embed_spaces_batched(model, ["main", "parts", "visual"], maps, batch=3)
    assert len(asked) == 3 and all(a == ["main", "parts", "visual"] for a in asked)  # ceil(7 / 3) batches
    with torch.inference_mode():
        full = {k: torch.from_numpy(v).float() for k, v in maps.items()}
        ref = real(full, ["main", "parts", "visual"])
    for s in ("main", "parts", "visual"):
        vecs, labels = out[s]
        assert vecs.shape[0] == 7
        np.testing.assert_allclose(vecs, ref[s].vectors.numpy(), atol=1e-5)
        assert (labels is None) == (s != "parts")
    assert np.array_equal(out["parts"][1], ref["parts"].part_labels.numpy())
