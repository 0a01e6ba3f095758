"""AG-MLAN (models/agmlan.py) and its CSN / ASEN-style variants: triplet sampling, the batch-all loss, the
attention block (gradcheck), masks, variants and ablation flags, and training against the untrained model on maps
where each attribute sits on its own half of the grid (so attention has something to find)."""

import itertools

import numpy as np
import pytest
import torch

from vestis.catalog import AttributeSchema
from vestis.errors import VestisError
from vestis.eval.metrics import average_precision
from vestis.models import TrainData, create_model
from vestis.models.agmlan import TripletSampler, batch_all_triplet
from vestis.models.base import Request, attribute_space

SCHEMA = AttributeSchema({"colour": ["red", "blue", "green"], "sleeve": ["short", "long"]})
CH = {"s8": 4, "s16": 8, "s32": 8}
SMALL = {"low": 8, "high": 8, "attention": 8, "attr_embed": 8, "aca_hidden": 8, "dim": 8, "epochs": 25,
         "triplets_per_batch": 24, "lr": 5e-3}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def _data(n=480, seed=0):
    """Maps where colour lives in the TOP half of the s16 grid (channels 0-2) and sleeve in the BOTTOM half
    (channels 3-4); the other half carries a random decoy value in the same channels, and every cell a strong
    random nuisance in channels 5-7. Average pooling mixes the true value with the decoy; attention on the right
    half reads it clean. sleeve code 2 = unspecified for a tenth of the items."""
    rng = np.random.default_rng(seed)
    colour, sleeve = rng.integers(0, 3, n), rng.integers(0, 2, n)
    decoy_c, decoy_s = rng.integers(0, 3, n), rng.integers(0, 2, n)
    s16 = rng.normal(0, 0.3, (n, 8, 4, 4)).astype(np.float32)
    s16[:, 5:] += rng.normal(0, 2.0, (n, 3, 1, 1))  # nuisance: constant over the grid, different per item
    idx = np.arange(n)
    s16[idx, colour, :2, :] += 1.5
    s16[idx, decoy_c, 2:, :] += 1.5
    s16[idx, 3 + sleeve, 2:, :] += 1.5
    s16[idx, 3 + decoy_s, :2, :] += 1.5
    labels = np.stack([colour, np.where(rng.random(n) < 0.1, 2, sleeve)], 1)
    maps = {"s8": rng.normal(0, 0.3, (n, 4, 8, 8)).astype(np.float16), "s16": s16.astype(np.float16),
            "s32": rng.normal(0, 0.3, (n, 8, 2, 2)).astype(np.float16)}
    return TrainData([str(i) for i in range(n)], maps, labels, -np.ones(n, np.int64), SCHEMA)


def _t(data, idx=slice(None)):
    return {k: torch.from_numpy(v[idx].astype(np.float32)) for k, v in data.maps.items()}


def _map(model, data, attr: str) -> float:
    """Protocol-2 MAP of `attr` inside `data` (every item a query against all others), from the model's own
    per-attribute space: known values only, as the engine's candidates."""
    a = SCHEMA.attributes.index(attr)
    y = data.labels[:, a]
    known = y < len(SCHEMA.values(attr))
    with torch.no_grad():
        v = model.embed(_t(data), attribute_space(attr)).numpy()[known]
    y = y[known]
    aps = []
    for i in range(len(v)):
        s = v @ v[i]
        s[i] = -np.inf
        order = np.argsort(-s)[:-1]
        aps.append(average_precision(list(y[order] == y[i])))
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    m = create_model("agmlan", SCHEMA, CH, SMALL)
    hist = m.fit(_data(), progress=False)
    m.eval()
    return m, hist


# --- triplets and the loss --------------------------------------------------------------------------
def test_sampler_draws_valid_triplets_uniformly_over_attributes():
    labels = _data(300).labels
    s = TripletSampler(labels, [3, 2])
    rng = np.random.default_rng(0)
    counts = np.zeros(2)
    for _ in range(200):
        rows = s.draw(10, rng).reshape(-1, 3)
        for (x, p, n), a in zip(rows, s.last_attributes):
            assert x != p
            assert labels[x, a] == labels[p, a] != labels[n, a]
            assert labels[n, a] < [3, 2][a]  # never "unspecified" (code 2 of sleeve)
            counts[a] += 1
    assert abs(counts[0] / counts.sum() - 0.5) < 0.03  # the attribute is drawn uniformly


def test_sampler_skips_attributes_without_two_values():
    labels = np.array([[0, 0], [0, 1], [1, 1], [1, 1]])
    assert TripletSampler(labels, [2, 1]).attributes == [0]  # sleeve has one known value: no triplet


def _naive_batch_all(emb, labels, n_known, margin, reduce, anchors=None):
    losses = []
    for a in range(emb.shape[1]):
        for i, j, k in itertools.product(range(len(emb)), repeat=3):
            y = labels[:, a]
            if (anchors is not None and i not in anchors) or i == j or max(y[i], y[j], y[k]) >= n_known[a] or y[i] != y[j] or y[i] == y[k]:
                continue
            losses.append(max(0.0, margin - float(emb[i, a] @ emb[j, a]) + float(emb[i, a] @ emb[k, a])))
    kept = [x for x in losses if x > 0] if reduce == "nonzero" else losses
    return sum(kept) / max(len(kept), 1)


@pytest.mark.parametrize("reduce", ["nonzero", "all"])
@pytest.mark.parametrize("anchors", [None, [0, 3, 5]])
def test_batch_all_triplet_matches_a_naive_loop(reduce, anchors):
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(7, 2, 3, generator=g), dim=-1)
    labels = torch.tensor([[0, 0], [0, 1], [1, 1], [1, 2], [2, 0], [0, 2], [1, 1]])  # sleeve code 2: unspecified
    got = batch_all_triplet(emb, labels, [3, 2], 0.2, reduce, None if anchors is None else torch.tensor(anchors))
    want = _naive_batch_all(emb, labels, [3, 2], 0.2, reduce, anchors)
    assert want > 0 and got.item() == pytest.approx(want, abs=1e-6)


def test_batch_all_triplet_known_answer():
    # one attribute, anchor 0 and positive 1 share a value, 2 differs: s(0,1) = 0, s(0,2) = 1 -> 0.2 + 1 = 1.2;
    # anchor 1 / positive 0: s(1,0) = 0, s(1,2) = 0 -> 0.2; a mean of 0.7 over the two
    emb = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]])
    labels = torch.tensor([[0], [0], [1]])
    assert batch_all_triplet(emb, labels, [2], 0.2, "all").item() == pytest.approx(0.7)


# --- the network ---------------------------------------------------------------------------------------
def test_attention_block_gradcheck():
    m = create_model("agmlan", SCHEMA, CH, SMALL).double().eval()  # eval: BN with running statistics
    feats = torch.randn(2, m.backbone.out_channels, 3, 2, dtype=torch.float64, requires_grad=True)
    attrs = torch.tensor([0, 1])
    assert torch.autograd.gradcheck(lambda f: m.attend(f, attrs)[0], (feats,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda f: m.embed_attributes(f, attrs)[0], (feats,), eps=1e-6, atol=1e-5)


def test_hierarchical_features_gradcheck():
    m = create_model("agmlan", SCHEMA, CH, SMALL).double().eval()
    maps = {lv: torch.randn(2, c, *hw, dtype=torch.float64, requires_grad=True)
            for (lv, c), hw in zip(CH.items(), [(8, 8), (4, 4), (2, 2)])}
    assert torch.autograd.gradcheck(lambda a, b, c: m.features({"s8": a, "s16": b, "s32": c}),
                                    tuple(maps.values()), eps=1e-6, atol=1e-5)
    assert m.features(maps).shape == (2, m.backbone.out_channels, 4, 4)  # the s16 grid


def test_keys_are_self_gated_and_attention_sums_to_one():
    m = create_model("agmlan", SCHEMA, CH, SMALL).eval()
    w = m.attr_proj(m.attr_embedding(torch.arange(2)))
    assert torch.allclose(m.attribute_keys(torch.arange(2)), torch.sigmoid(w) * w)
    heat = m.attention_maps(_t(_data(5)))
    assert heat.shape == (5, 2, 4, 4) and torch.allclose(heat.sum(dim=(2, 3)), torch.ones(5, 2), atol=1e-5)


def test_masks():
    learned = create_model("agmlan", SCHEMA, CH, SMALL)
    with torch.no_grad():
        learned.mask_beta[0, 0] = -3.0
    assert (learned.masks(torch.arange(2)) >= 0).all() and learned.masks(torch.arange(2))[0, 0] == 0  # ReLU(beta)
    disjoint = create_model("agmlan", SCHEMA, CH, {**SMALL, "mask": "disjoint"})
    d = disjoint.masks(torch.arange(2))
    assert torch.equal(d.sum(0), torch.ones(8)) and (d.sum(1) == 4).all()  # blocks of the embedding, no overlap
    assert create_model("agmlan", SCHEMA, CH, {**SMALL, "mask": "none"}).masks(torch.arange(2)) is None


def test_variants_and_ablations_are_flags():
    asen = create_model("asen", SCHEMA, {"s32": 8}, {k: v for k, v in SMALL.items()})
    csn = create_model("csn", SCHEMA, {"s32": 8}, dict(SMALL))
    assert (asen.config["asa"], asen.config["aca"], asen.config["sa"], asen.config["mask"]) == (True, True, False, "none")
    assert (csn.config["asa"], csn.config["aca"], csn.config["csn_reg"], csn.config["mask"]) == (False, False, True, "learned")
    assert asen.levels == csn.levels == ("s32",)
    x = _t(_data(4))
    for flags in ({"asa": False}, {"sa": False}, {"aca": False}, {"mask": "none"}, {"branch1": "off"},
                  {"branch1": "type"}, {"features": "last"}):
        m = create_model("agmlan", SCHEMA, CH, {**SMALL, **flags}).eval()
        assert m.embed(x, attribute_space("colour")).shape == (4, 8)
    uniform = create_model("agmlan", SCHEMA, CH, {**SMALL, "asa": False, "sa": False}).eval()
    assert torch.allclose(uniform.attention_maps(x), torch.full((4, 2, 4, 4), 1 / 16))
    with pytest.raises(VestisError, match="mask must be one of"):
        create_model("agmlan", SCHEMA, CH, {"mask": "sometimes"})
    with pytest.raises(VestisError, match="hierarchical features read s8"):
        create_model("csn", SCHEMA, {"s32": 8}, {"features": "hierarchical"})


def test_spaces_and_attribute_plan():
    m = create_model("agmlan", SCHEMA, CH, SMALL).eval()
    spaces = m.spaces()
    assert spaces["attr_colour"].members == "known" and spaces["attr_colour"].attribute == "colour"
    assert spaces["main"].dim == 16 and "visual" in spaces
    x = _t(_data(3))
    (probe,) = m.plan(x, Request("attribute:sleeve"))
    assert probe.space == "attr_sleeve" and probe.group == "sleeve" and not probe.filters
    assert np.allclose(probe.vectors, m.embed(x, "attr_sleeve").numpy())
    main = m.embed(x, "main")  # the mean of the per-attribute cosines
    per = [m.embed(x, f"attr_{a}") for a in SCHEMA.attributes]
    assert torch.allclose(main @ main.T, sum(p @ p.T for p in per) / 2, atol=1e-5)


# --- training ------------------------------------------------------------------------------------------
def test_training_beats_the_untrained_model(trained):
    m, hist = trained
    test = _data(300, seed=1)
    fresh = create_model("agmlan", SCHEMA, CH, SMALL).eval()
    for attr in ("colour", "sleeve"):
        before, after = _map(fresh, test, attr), _map(m, test, attr)
        assert after > before + 0.2 and after > 0.9, (attr, before, after)
    assert hist["triplet"][-1] < hist["triplet"][0]


def test_attention_finds_the_half_that_carries_each_attribute(trained):
    m, _ = trained
    heat = m.attention_maps(_t(_data(200, seed=2)))
    top, bottom = heat[..., :2, :].sum(dim=(2, 3)), heat[..., 2:, :].sum(dim=(2, 3))
    # pointing game on the two halves: the peak cell in the attribute's half
    peak_row = heat.flatten(2).argmax(-1) // 4
    assert (peak_row[:, 0] < 2).float().mean() > 0.9 and (peak_row[:, 1] >= 2).float().mean() > 0.9
    assert top[:, 0].mean() > 0.7 and bottom[:, 1].mean() > 0.7


def test_uncertainty_weights_are_optimised(trained):
    m, hist = trained
    assert any(abs(s) > 1e-3 for s in hist["uncertainty_s"])  # s moved from 0: it is in the optimiser


def test_branch1_off_still_predicts_attributes():
    m = create_model("agmlan", SCHEMA, CH, {**SMALL, "branch1": "off", "epochs": 10})
    m.fit(_data(), progress=False)
    m.eval()
    test = _data(200, seed=3)
    fresh = create_model("agmlan", SCHEMA, CH, {**SMALL, "branch1": "off"}).eval()
    acc = [(x.predict_attributes(_t(test))[0].argmax(-1).numpy() == test.labels[:, 0]).mean() for x in (fresh, m)]
    # colour, 3 values: pooled features hold the true colour and the decoy equally, so about 1/2 is the ceiling
    assert acc[1] > 0.45 and acc[1] > acc[0] + 0.1, acc


def test_attribute_baseline_ranks_by_the_probability_of_sharing_the_value():
    m = create_model("attribute_baseline", SCHEMA, {"s32": 8}, {"hidden": 8}).eval()
    x = {"s32": torch.randn(5, 8, 2, 2)}
    with torch.no_grad():
        p = m.predict_attributes(x)[0][:, :3]
    p = p / p.sum(-1, keepdim=True)
    (probe,) = m.plan({k: v[:1] for k, v in x.items()}, Request("attribute:colour"))
    assert probe.space == "attr_colour" and m.spaces()["attr_colour"].dim == 3
    scores = m.embed(x, "attr_colour").numpy() @ probe.vectors[0]
    assert np.allclose(scores, (p @ p[0]).numpy(), atol=1e-6)  # sum_v p_q(v) p_c(v)


def test_branch1_auto_uses_the_papers_target_where_each_image_has_one_label(trained):
    _, hist = trained
    assert hist["branch1"] == "values"  # every image has a colour and (mostly) a sleeve
    data = _data(240, seed=4)
    one = data.labels.copy()
    half = np.arange(len(one)) % 2 == 0
    one[half, 1] = 2  # sleeve unspecified on even rows ...
    one[~half, 0] = 3  # ... colour unspecified on odd rows: one labelled attribute per image (FashionAI)
    m = create_model("agmlan", SCHEMA, CH, {**SMALL, "epochs": 1})
    before = m.type_classifier.weight.detach().clone()
    hist = m.fit(TrainData(data.ids, data.maps, one, data.instances, SCHEMA), progress=False)
    assert hist["branch1"] == "type" and not torch.equal(before, m.type_classifier.weight)


def test_rows_without_a_label_are_never_in_a_triplet():
    """A mixed run's second catalogue has no label for most attributes (code -1, no loss): never x, x+ or x-."""
    emb = torch.nn.functional.normalize(torch.randn(5, 1, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    labels = torch.tensor([[0], [0], [1], [-1], [-1]])
    with_unlabelled = batch_all_triplet(emb, labels, [2], 0.2, "all")
    without = batch_all_triplet(emb[:3], labels[:3], [2], 0.2, "all")
    assert with_unlabelled.item() == pytest.approx(without.item())
