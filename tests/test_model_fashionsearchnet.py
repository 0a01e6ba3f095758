import numpy as np
import pytest
import torch
from PIL import Image

from vestis.catalog import AttributeSchema
from vestis.errors import UnknownAttributeError, UnknownValueError, VestisError
from vestis.models import TrainData, create_model
from vestis.runs import load_run, save_run
from vestis.models.fashionsearchnet import FashionSearchNet
from vestis.overlay import render_overlay
from vestis.models.layers import box_from_map, boxes_from_maps, class_activation_maps, roi_features

SCHEMA = AttributeSchema({"colour": ["red", "blue", "green"], "sleeve": ["short", "long"]})
CH = {"s16": 8, "s32": 16}
SMALL = {"width": 16, "reduce": 8, "dim": 8, "roi": 2, "batch_size": 64, "epochs_cls": 1, "epochs": 2,
         "global_epochs": 1, "global_steps": 10, "global_batch": 64}


def _data(n=400, seed=0, size=4):
    """Maps whose cells encode the labels where the 'garment part' is: colour in channels 0-2 of the top
    rows of the size x size stride-16 map (and of the size/2 stride-32 map), sleeve in channels 3-5 of their
    bottom rows (sleeve code 2 = unspecified, with its own channel 5)."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, 3, n), rng.integers(0, 3, n)], 1)
    s16 = rng.normal(0, 0.3, (n, 8, size, size)).astype(np.float32)
    s16[np.arange(n), labels[:, 0], :size // 2, :] += 2.0
    s16[np.arange(n), 3 + labels[:, 1], size // 2:, :] += 2.0
    h = size // 2
    s32 = rng.normal(0, 0.3, (n, 16, h, h)).astype(np.float32)
    s32[np.arange(n), labels[:, 0], :h // 2, :] += 2.0
    s32[np.arange(n), 3 + labels[:, 1], h // 2:, :] += 2.0
    maps = {"s16": s16.astype(np.float16), "s32": s32.astype(np.float16)}
    return TrainData([str(i) for i in range(n)], maps, labels, -np.ones(n, np.int64), SCHEMA)


def _t(data, idx=slice(None)):
    return {k: torch.from_numpy(v[idx].astype(np.float32)) for k, v in data.maps.items()}


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: one thread is faster, and robust on a busy machine
    try:
        torch.manual_seed(0)
        d = _data(300)
        m = create_model("fashionsearchnet", SCHEMA, CH, {**SMALL, "epochs_cls": 2, "epochs": 4, "global_epochs": 2})
        hist = m.fit(d, progress=False)
    finally:
        torch.set_num_threads(threads)
    m.eval()
    return m, d, hist


def _random_global(m, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.log_lambda.copy_(torch.randn(m.log_lambda.shape, generator=g) * 0.5)
        m.global_delta.copy_(torch.randn(m.global_delta.shape, generator=g) * 0.2)


# --- shared layers -----------------------------------------------------------------------------------
def test_cam_formula_on_a_known_case():
    f = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]], [[0.0, 3.0], [1.0, 0.0]]]])  # (1, K=2, 2, 2)
    w = torch.tensor([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0]])  # 3 classes x 2 channels
    got = class_activation_maps(f, w, torch.tensor([1]))
    assert torch.allclose(got[0], 0.5 * f[0, 0] - 1.0 * f[0, 1])
    # the model's AAM is the CAM of the most confident KNOWN value with the GAP classifier's weights
    m = create_model("fashionsearchnet", SCHEMA, CH, SMALL)
    feats = torch.rand(3, 16, 4, 4)
    logits = m.logits(feats)
    logits[0] = torch.tensor([[0.0, 5.0, 1.0, 9.0]] * 3)  # "unspecified" (last) is the most confident: skipped
    aam, classes = m.aams(feats, logits)
    assert classes[0, 0] == 1 and aam.shape == (3, 2, 4, 4)
    for i in range(3):
        for a, head in enumerate(m.classifiers.heads):
            c = int(classes[i, a])
            assert c == int(logits[a][i, :-1].argmax())
            manual = (head.weight[c][:, None, None] * feats[i]).sum(0)
            assert torch.allclose(aam[i, a], manual, atol=1e-5)


def test_box_from_map_threshold_and_largest_component():
    m = np.zeros((6, 5))
    m[0:2, 0:2] = 10.0  # 4 cells, holds the maximum
    m[3:6, 2:5] = 3.0  # 9 cells above 20 % of the max: the largest region
    assert box_from_map(m, 0.2) == (2, 3, 5, 6)
    assert box_from_map(m, 0.35) == (0, 0, 2, 2)  # the 9-cell region (0.3 of max) is no longer segmented
    m[4, 0:2] = 1.5  # 0.15 of the max: joins the big region only at a lower threshold
    assert box_from_map(m, 0.2) == (2, 3, 5, 6)
    assert box_from_map(m, 0.1) == (0, 3, 5, 6)
    # diagonal neighbours: one region with 8-connectivity, two with 4-connectivity
    d = np.zeros((4, 4))
    d[0, 0] = d[1, 1] = d[2, 2] = 1.0
    d[3, 0] = 0.9
    assert box_from_map(d, 0.2, connectivity=2) == (0, 0, 3, 3)
    assert box_from_map(d, 0.2, connectivity=1) == (0, 0, 1, 1)  # 1-cell tie: the one with the highest cell
    # min-max normalised (negative maps), constant maps -> whole map; batched version agrees
    assert box_from_map(m - 100.0, 0.2) == box_from_map(m, 0.2)
    assert box_from_map(np.full((3, 4), 7.0)) == (0, 0, 4, 3)
    maps = torch.from_numpy(np.stack([m, d[:3, :3].repeat(2, 0).repeat(2, 1)[:6, :5]])).float()
    assert boxes_from_maps(maps[None], 0.2).shape == (1, 2, 4)
    assert tuple(boxes_from_maps(maps, 0.2)[0].tolist()) == box_from_map(m, 0.2)


def _naive_box(m, threshold, connectivity, mode, scale):
    """One map at a time, the plain way: the reference the batched segmentation must equal."""
    from scipy import ndimage

    m = np.asarray(m, dtype=np.float64)
    h, w = m.shape
    if mode == "paper":
        m = torch.nn.functional.interpolate(torch.from_numpy(np.maximum(m, 0))[None, None], scale_factor=scale,
                                            mode="bilinear", align_corners=False)[0, 0].numpy()
        if not m.max() > 1e-12:
            return (0.0, 0.0, float(w), float(h))
        mask = m > threshold * m.max()
    else:
        if not m.max() - m.min() > 1e-12:
            return (0, 0, w, h)
        mask = (m - m.min()) / (m.max() - m.min()) > threshold
    labels, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(2, connectivity))
    best, key = None, None
    for lab in range(1, n + 1):
        region = labels == lab
        k = (int(region.sum()), float(m[region].max()))
        if key is None or k > key:  # strictly greater: the first in raster order wins a full tie
            best, key = region, k
    rows, cols = np.flatnonzero(best.any(1)), np.flatnonzero(best.any(0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return tuple(v / scale for v in box) if mode == "paper" else box


def test_batched_boxes_equal_one_map_at_a_time_with_ties():
    rng = np.random.default_rng(0)
    # coarse values make equal-size regions and equal peaks (ties) common; a few constant and all-negative maps
    maps = rng.integers(-2, 4, size=(60, 7, 6)).astype(np.float64)
    maps[5] = 3.0
    maps[6] = -1.0
    maps[7, 0, 0] = np.nan
    for mode, scale in (("minmax", 1), ("paper", 4), ("paper", 1)):
        for conn in (1, 2):
            got = boxes_from_maps(torch.from_numpy(maps).reshape(6, 10, 7, 6), 0.2, conn, mode=mode, scale=scale)
            for i, m in enumerate(maps):
                if i == 7:  # a non-finite map: the whole map
                    assert tuple(got.reshape(-1, 4)[i].tolist()) == (0, 0, 6, 7)
                    continue
                want = _naive_box(m, 0.2, conn, mode, scale)
                assert tuple(got.reshape(-1, 4)[i].tolist()) == pytest.approx(want), (mode, conn, i)
                assert box_from_map(m, 0.2, conn, mode=mode, scale=scale) == pytest.approx(want)


def test_paper_boxes_known_answers_on_hand_made_maps():
    """box_mode "paper": clamp at 0, upsample bilinearly x stride, threshold at 0.2 x max, box in cells."""
    # a map whose positive evidence is one cell (1, 2) of a 4 x 4 grid. Upsampled x16 (align_corners=False),
    # pixel p sits at x = (p + 0.5) / 16 - 0.5 and reads max(0, 1 - |x - 2|) along x (likewise along y); the
    # maximum, at the pixels nearest the cell centre, is 0.96875^2; along the peak's row the pixels above 0.2 x
    # that are those with 1 - |x - 2| > 0.2 x 0.96875, i.e. p = 27 ... 52 -> [27, 53) / 16 = [1.6875, 3.3125)
    one = np.zeros((4, 4))
    one[1, 2] = 1.0
    assert box_from_map(one, 0.2, mode="paper", scale=16) == (1.6875, 0.6875, 3.3125, 2.3125)
    assert box_from_map(one, 0.2) == (2, 1, 3, 2)  # min-max on the grid: the cell itself
    assert box_from_map(one - 5.0, 0.2, mode="paper", scale=16) == (0.0, 0.0, 4.0, 4.0)  # no positive cell
    neg = np.full((4, 4), -1.0)
    neg[1, 2] = 1.0  # negative cells are clamped: the same box as on zeros
    assert box_from_map(neg, 0.2, mode="paper", scale=16) == (1.6875, 0.6875, 3.3125, 2.3125)
    # a map with negative cells: min-max lifts the zero-evidence cells (0 -> 0.8 of the range) above 20 %
    m = np.zeros((4, 5))
    m[0, 0] = 1.0
    m[2:, :] = -4.0
    assert box_from_map(m, 0.2) == (0, 0, 5, 2)  # the whole top half, though only one cell has evidence
    # paper: the corner cell alone; the border replicates (pixels 0-7 read 1), then 1 - x > 0.2 up to p = 20
    assert box_from_map(m, 0.2, mode="paper", scale=16) == (0.0, 0.0, 1.3125, 1.3125)
    assert box_from_map(m, 0.2, mode="paper", scale=1) == (0.0, 0.0, 1.0, 1.0)  # no upsampling: cells
    # two separate positive regions: the larger one, fitted at image resolution
    two = np.zeros((4, 6))
    two[0, 0] = 1.0
    two[2:4, 3:6] = 0.5
    assert box_from_map(two, 0.2, mode="paper", scale=2) == (3.0, 2.0, 6.0, 4.0)
    # batched: one upsampling for all maps, the same boxes
    maps = torch.from_numpy(np.stack([one, neg, np.pad(m, ((0, 0), (0, 0)))[:, :4]])).float()
    got = boxes_from_maps(maps[None], 0.2, mode="paper", scale=16)
    assert got.shape == (1, 3, 4)
    for i in range(3):
        assert tuple(got[0, i].tolist()) == box_from_map(maps[i].numpy(), 0.2, mode="paper", scale=16)
    with pytest.raises(ValueError, match="box mode"):
        box_from_map(one, mode="max")


def test_roi_features_on_fractional_boxes_span_the_box():
    """inset=False (box mode "paper"): roi_align's own convention, the bins tile the box's continuous extent."""
    f = torch.arange(16.0).reshape(1, 1, 4, 4)  # value 4 i + j at cell (i, j), linear: bilinear reads it exactly
    out = roi_features(f, torch.tensor([[1.0, 0.5, 3.0, 2.5]]), 2, inset=False)
    # bin centres at x = 1.5, 2.5 and y = 1.0, 2.0 (continuous); cell index = coordinate - 0.5
    expected = torch.tensor([[4 * 0.5 + 1.0, 4 * 0.5 + 2.0], [4 * 1.5 + 1.0, 4 * 1.5 + 2.0]])
    assert torch.allclose(out[0, 0], expected, atol=1e-5)
    assert torch.equal(roi_features(f, torch.tensor([[1.0, 0.0, 3.0, 2.0]]), 2),
                       roi_features(f, torch.tensor([[1.5, 0.5, 2.5, 1.5]]), 2, inset=False))  # inset = shifted box


def test_roi_features_read_only_inside_the_box():
    f = torch.full((1, 2, 10, 8), -100.0)
    inside = torch.arange(18.0).reshape(2, 3, 3) + 1
    f[0, :, 2:5, 3:6] = inside  # rows 2-4, cols 3-5 = box (3, 2, 6, 5)
    out = roi_features(f, torch.tensor([[3.0, 2.0, 6.0, 5.0]]), 3)
    assert out.shape == (1, 2, 3, 3)
    assert out.min() >= 1 and out.max() <= 18  # never a value from outside the box
    assert torch.allclose(roi_features(f, torch.tensor([[3.0, 2.0, 6.0, 5.0]]), 2)[0, 0],
                          torch.tensor([[3.0, 4.0], [6.0, 7.0]]))  # 2x2 bins: means over the quadrants
    one = roi_features(f, torch.tensor([[4.0, 3.0, 5.0, 4.0]]), 2)
    assert torch.allclose(one, inside[:, 1, 1][None, :, None, None].expand(1, 2, 2, 2))
    g = f.clone()
    g[0, :, 0, 0] = 1e6
    assert torch.equal(roi_features(g, torch.tensor([[3.0, 2.0, 6.0, 5.0]]), 3), out)


# --- the model ---------------------------------------------------------------------------------------
def test_shapes_and_unit_blocks():
    m = create_model("fashionsearchnet", SCHEMA, CH, SMALL).eval()
    x = _t(_data(5))
    g = m.embed(x)
    assert g.shape == (5, 2 * 8) and m.metric == "ip" and m.supports_manipulation
    assert torch.allclose(g.view(5, 2, 8).norm(dim=-1), torch.ones(5, 2), atol=1e-5)
    assert m.embed_query(x, [{"colour": "blue"}] * 5).shape == (5, 16)
    assert m.attribute_embed(x, "sleeve").shape == (5, 8)
    ex = m.explain(x)
    assert len(ex) == 5 and all(e.names == ["colour", "sleeve"] for e in ex)
    e = ex[0]
    assert e.stride == 16 and e.map_size == (4, 4) and e.method == "aam" and e.threshold == SMALL.get("threshold", 0.2)
    r = e.region("colour")
    assert r.heatmap.shape == (4, 4) and r.map_label in SCHEMA.values("colour") and 0 < r.confidence <= 1
    assert r.label in (None, r.map_label) and (r.box is None) == (r.label is None)
    assert e.box_in_input_pixels(r.heatmap_box) == tuple(v * 16 for v in r.heatmap_box)
    tight = m.explain(x, threshold=0.9)
    assert tight[0].threshold == 0.9
    assert all(np.array_equal(t.heatmap, r.heatmap) for te, ee in zip(tight, ex) for t, r in zip(te.regions, ee.regions))
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    assert (sum(area(r.heatmap_box) for te in tight for r in te.regions)
            <= sum(area(r.heatmap_box) for ee in ex for r in ee.regions))
    with pytest.raises(VestisError, match="level"):
        create_model("fashionsearchnet", SCHEMA, CH, {"level": "s8"})
    for level, hw in (("s16", (4, 4)), ("s32", (2, 2)), ("s32up", (4, 4))):
        mm = create_model("fashionsearchnet", SCHEMA, CH, {**SMALL, "level": level}).eval()
        assert mm.embed(x).shape == (5, 16) and mm.explain(x)[0].regions[0].heatmap.shape == hw


def test_a_single_level_configuration_needs_only_that_level():
    # a cache extracted with s32 alone (e.g. `vestis extract --levels s32` at a larger input) serves level "s32"
    d = _data(80)
    only32 = TrainData(d.ids, {"s32": d.maps["s32"]}, d.labels, d.instances, SCHEMA)
    m = create_model("fashionsearchnet", SCHEMA, {"s32": CH["s32"]}, {**SMALL, "level": "s32", "epochs": 1})
    assert m.levels == ("s32",)
    m.fit(only32, progress=False)
    assert m.eval().embed(_t(only32, slice(0, 3))).shape == (3, 16)
    assert create_model("fashionsearchnet", SCHEMA, {"s16": 8}, {**SMALL, "level": "s16"}).levels == ("s16",)
    with pytest.raises(VestisError, match=r"reads trunk level\(s\) \['s16'\]"):  # the default fuses both
        create_model("fashionsearchnet", SCHEMA, {"s32": CH["s32"]}, SMALL)


def test_gradients_reach_every_parameter():
    m = create_model("fashionsearchnet", SCHEMA, CH, SMALL)
    m.train()
    d = _data(32)
    y = torch.from_numpy(d.labels)
    feats = m.features(_t(d))
    logits = m.logits(feats)
    reps = m.raw_representations(feats, m.boxes(feats, logits))
    loss = sum(lg.logsumexp(-1).mean() for lg in logits)
    loss = loss + sum(h(r).sum() for h, r in zip(m.rep_classifiers, reps))
    loss = loss + m._triplet_loss(reps, y, torch.Generator().manual_seed(0))
    q = torch.stack(reps, 1).flatten(1)
    loss = loss + m.global_query(q, torch.tensor([0, 1, 2] * 10 + [0, 1])).pow(2).mean()
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_prototypes_are_per_value_means(trained):
    m, d, _ = trained
    reps = m._train_representations(d)
    for a, attr in enumerate(SCHEMA.attributes):
        for v in SCHEMA.values(attr):
            code = SCHEMA.index(attr, v)
            mean = reps[d.labels[:, a] == code, a].mean(0)
            assert torch.allclose(m.prototype(attr, v), mean, atol=1e-5)
    r = torch.randn(6, 2, 8)
    lab = np.array([[0, 2], [0, 1], [1, 1], [2, 0], [2, 0], [2, 1]])
    m2 = create_model("fashionsearchnet", SCHEMA, CH, SMALL)
    m2.set_prototypes(r, lab)
    assert torch.allclose(m2.prototype("colour", "green"), r[3:6, 0].mean(0))
    assert torch.allclose(m2.prototype("sleeve", "long"), r[[1, 2, 5], 1].mean(0))
    assert torch.equal(m2.prototype("colour", "blue"), r[2, 0])


def test_manipulation_replaces_exactly_the_manipulated_blocks(trained):
    m, d, _ = trained
    x = _t(d, slice(0, 4))
    g = m.embed(x).view(4, 2, 8)
    man = [{"colour": "blue"}, {"sleeve": "long"}, {"colour": "green", "sleeve": "short"}, {}]
    q = m.manipulate(g, man)
    p = lambda a, v: torch.nn.functional.normalize(m.prototype(a, v), dim=0)  # noqa: E731
    assert torch.equal(q[0, 0], p("colour", "blue")) and torch.equal(q[0, 1], g[0, 1])
    assert torch.equal(q[1, 0], g[1, 0]) and torch.equal(q[1, 1], p("sleeve", "long"))
    assert torch.equal(q[2, 0], p("colour", "green")) and torch.equal(q[2, 1], p("sleeve", "short"))
    assert torch.equal(q[3], g[3])
    # with eq. 6 at its identity (lambda = 1, W = I) the query vector IS the manipulated concatenation
    m2 = create_model("fashionsearchnet", SCHEMA, CH, SMALL).eval()
    m2.load_state_dict(m.state_dict())
    with torch.no_grad():
        m2.log_lambda.zero_()
        m2.global_delta.zero_()
    assert torch.allclose(m2.embed_query(x, man), q.flatten(1), atol=1e-6)


def test_eq6_weighting_realised_by_the_index_equals_the_direct_formula(trained):
    m0, d, _ = trained
    m = create_model("fashionsearchnet", SCHEMA, CH, SMALL).eval()
    m.load_state_dict(m0.state_dict())
    _random_global(m)
    xq, xg = _t(d, slice(0, 3)), _t(d, slice(10, 30))
    g = m.embed(xg)
    lam, W = m.global_weights()

    def y(slot, r):  # eq. 6: y_{a*}(r) = W_{a*} (Lambda_{a*} r)
        return (r * lam[slot].repeat_interleave(8)) @ W[slot].T

    man = [{"colour": "red"}, {"colour": "blue", "sleeve": "long"}, {}]
    q = m.embed_query(xq, man)
    qt = m.manipulate(m.embed(xq).view(3, 2, 8), man).flatten(1)
    direct0 = y(0, qt[0:1]) @ y(0, g).T
    direct1 = (y(0, qt[1:2]) @ y(0, g).T + y(1, qt[1:2]) @ y(1, g).T) / 2
    direct2 = y(2, qt[2:3]) @ y(2, g).T  # slot A = no manipulation
    assert torch.allclose(q @ g.T, torch.cat([direct0, direct1, direct2]), atol=1e-4)
    assert not torch.allclose(direct0, qt[0:1] @ g.T, atol=1e-2)  # the weights do matter


def test_with_identity_projection_the_index_ranks_by_euclidean_distance_of_eq6(trained):
    """W = I: <q, g> ranks the gallery exactly as ||y(q~) - y(g)||^2 = sum_a lambda_a^2 ||q~_a - g_a||^2."""
    m0, d, _ = trained
    m = create_model("fashionsearchnet", SCHEMA, CH, SMALL).eval()
    m.load_state_dict(m0.state_dict())
    with torch.no_grad():
        m.log_lambda.copy_(torch.tensor([[0.7, -0.4], [0.1, 0.9], [0.0, 0.3]]))
        m.global_delta.zero_()  # W = I
    g = m.embed(_t(d, slice(10, 40))).view(30, 2, 8)
    q = m.embed_query(_t(d, slice(0, 1)), [{"sleeve": "short"}])
    qt = m.manipulate(m.embed(_t(d, slice(0, 1))).view(1, 2, 8), [{"sleeve": "short"}])
    lam = m.log_lambda.exp()[1].detach()
    dist = (lam[:, None] * (qt - g)).flatten(1).pow(2).sum(-1)
    assert torch.equal(torch.argsort(q[0] @ g.flatten(1).T, descending=True), torch.argsort(dist))
    assert torch.allclose(q[0] @ g.flatten(1).T, (lam.pow(2).sum() - dist / 2), atol=1e-5)


def test_noloc_switch_disables_localisation():
    nl = create_model("fashionsearchnet_noloc", SCHEMA, CH, SMALL).eval()
    assert isinstance(nl, FashionSearchNet) and nl.config["localize"] is False
    loc = create_model("fashionsearchnet", SCHEMA, CH, SMALL).eval()
    assert loc.config["localize"] is True
    x = _t(_data(6))
    f = nl.features(x)
    assert torch.equal(nl.boxes(f, nl.logits(f)), torch.tensor([0.0, 0.0, 4.0, 4.0]).expand(6, 2, 4))
    ex = nl.explain(x, threshold=0.9)  # still explains with AAM boxes, but pools the whole map
    assert all(r.pooled_box == (0.0, 0.0, 4.0, 4.0) for e in ex for r in e.regions)
    assert any(r.heatmap_box != (0.0, 0.0, 4.0, 4.0) for e in ex for r in e.regions)
    # with identical weights, the ablation's representations equal the localised model's on whole-map boxes
    loc.load_state_dict(nl.state_dict())
    whole = torch.stack(loc.raw_representations(f, torch.tensor([0.0, 0.0, 4.0, 4.0]).expand(6, 2, 4)), 1)
    assert torch.allclose(nl.embed(x), torch.nn.functional.normalize(whole, dim=-1).flatten(1), atol=1e-6)


def test_training_makes_manipulated_queries_find_the_target(trained):
    m, _, hist = trained
    assert hist["cls_loss"][-1] < hist["cls_loss"][0] and hist["triplet"][-1] < hist["triplet"][0]
    test = _data(300, seed=1)
    g = m.embed(_t(test))
    rng = np.random.default_rng(0)
    qi, manip, targets = [], [], []
    for i in rng.choice(len(test.labels), 40, replace=False):
        for new in SCHEMA.values("colour"):
            if SCHEMA.index("colour", new) != test.labels[i, 0]:
                qi.append(int(i))
                manip.append({"colour": new})
                targets.append([SCHEMA.index("colour", new), test.labels[i, 1]])
    x, targets = _t(test, np.array(qi)), np.array(targets)

    def precision_at_10(q):
        s = q @ g.T
        s[torch.arange(len(qi)), torch.tensor(qi)] = -1e9  # never the query itself
        top = torch.topk(s, 10, dim=1).indices.numpy()
        return (test.labels[top] == targets[:, None, :]).all(-1).mean()

    manipulated, plain = precision_at_10(m.embed_query(x, manip)), precision_at_10(m.embed_query(x, None))
    assert manipulated > 0.8 and manipulated > plain + 0.5


def test_unknown_attribute_or_value_raises_the_schema_error(trained):
    m, d, _ = trained
    x = _t(d, slice(0, 1))
    with pytest.raises(UnknownValueError, match="valid values: red, blue, green"):
        m.embed_query(x, [{"colour": "navy"}])
    with pytest.raises(UnknownAttributeError, match="size"):
        m.embed_query(x, [{"size": "XL"}])
    with pytest.raises(UnknownValueError):
        m.embed_query(x, [{"sleeve": "unspecified"}])  # never manipulated to "unspecified"
    with pytest.raises(UnknownAttributeError):
        m.attribute_query(x, "size")


def test_save_load_round_trip_gives_identical_vectors(trained, tmp_path):
    m, d, hist = trained
    save_run(m, tmp_path / "run", trunk={"name": "t"}, history=hist)
    m2, info = load_run(tmp_path / "run")
    assert info.model == "fashionsearchnet" and type(m2) is FashionSearchNet
    x = _t(d, slice(0, 8))
    man = [{"colour": "green"}, {"sleeve": "long", "colour": "red"}] * 4
    assert torch.equal(m.embed(x), m2.embed(x))
    assert torch.equal(m.embed_query(x, man), m2.embed_query(x, man))
    assert torch.equal(m.attribute_query(x, "colour"), m2.attribute_query(x, "colour"))
    nl = create_model("fashionsearchnet_noloc", SCHEMA, CH, SMALL).eval()
    save_run(nl, tmp_path / "nl", trunk={"name": "t"})
    nl2, _ = load_run(tmp_path / "nl")
    assert nl2.name == "fashionsearchnet_noloc" and nl2.config["localize"] is False
    assert torch.equal(nl.embed(x), nl2.embed(x))


def test_render_explanation_writes_a_png(trained, tmp_path):
    m, d, _ = trained
    img = Image.new("RGB", (60, 80), "white")
    img.paste((200, 30, 30), (10, 10, 50, 40))
    img.save(tmp_path / "x.jpg")
    ex = m.explain(_t(d, slice(0, 2)))
    out = tmp_path / "ex.png"
    out.write_bytes(render_overlay(tmp_path / "x.jpg", ex[1], resolution=(64, 64)))
    assert out.is_file() and Image.open(out).size[0] > 100


def test_trained_model_says_unspecified_with_no_box_where_the_label_is_unspecified(trained):
    """The data's sleeve code 2 is "unspecified": a trained model's sleeve region has no label and no box there,
    and a known label with its box elsewhere; the heatmap and its box are kept either way."""
    m, _, _ = trained
    test = _data(200, seed=2)
    ex = m.explain(_t(test))
    sleeves = [e.region("sleeve") for e in ex]
    unspec = test.labels[:, 1] == 2
    said = np.array([r.label is None for r in sleeves])
    assert (said == unspec).mean() > 0.9 and said[unspec].mean() > 0.9
    for r in sleeves:
        assert r.heatmap is not None and r.heatmap_box is not None and r.map_label in SCHEMA.values("sleeve")
        if r.label is None:
            assert r.box is None and r.confidence == r.unspecified > r.map_confidence
        else:
            assert r.box == r.heatmap_box and r.label == r.map_label and r.confidence == r.map_confidence >= r.unspecified


def test_cached_query_matrices_follow_parameter_changes(trained):
    """Search (no grad) uses precomputed Lambda W^T W Lambda matrices; they must match the direct formula,
    also after lambda / W change (the cache is keyed on the tensors' version counters)."""
    m, d, _ = trained
    g = torch.Generator().manual_seed(3)
    q = torch.randn(5, m.log_lambda.shape[1] * m.config["dim"], generator=g)
    slots = torch.tensor([0, 1, 1, len(m.attributes), 2])
    saved = (m.log_lambda.detach().clone(), m.global_delta.detach().clone())
    try:
        for step in range(2):
            with torch.no_grad():
                cached = m.global_query(q, slots)
            with torch.enable_grad():
                direct = m.global_query(q, slots).detach()
            assert torch.allclose(cached, direct, atol=1e-4), step
            _random_global(m, seed=10 + step)  # in-place parameter change: the cache must notice
    finally:
        with torch.no_grad():
            m.log_lambda.copy_(saved[0])
            m.global_delta.copy_(saved[1])


def test_global_holdout_keeps_its_items_out_of_stages_1_and_2(monkeypatch):
    """`global_holdout` > 0: stages 1-2 (L_C, L_C + triplet) never draw a held-out item, and L_G (stage 3) is
    fitted on the held-out items' representations only (the default, 0, fits L_G on the training items)."""
    import vestis.models.fashionsearchnet as fsn

    d = _data(300)
    held = fsn.holdout_mask(d.ids, 0.3)
    assert 0.2 < held.mean() < 0.4 and np.array_equal(held, fsn.holdout_mask(d.ids, 0.3))  # stable
    drawn: dict[str, set] = {}
    real_fit_loop = fsn.fit_loop

    def recording_fit_loop(params, data, step, cfg, batches=None, desc="train", **kw):
        def recorded(rng):
            for b in batches(rng):
                if "L_G" not in desc:  # L_G draws slots, not items
                    drawn.setdefault(desc, set()).update(np.asarray(b).tolist())
                yield b
        return real_fit_loop(params, data, step, cfg, batches=recorded, desc=desc, **kw)

    monkeypatch.setattr(fsn, "fit_loop", recording_fit_loop)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny layers: one thread is faster on a busy machine
    try:
        for finetune in (True, False):
            drawn.clear()
            m = create_model("fashionsearchnet", SCHEMA, CH, {**SMALL, "global_holdout": 0.3, "finetune": finetune})
            seen = {}
            real_fit_global = m.fit_global

            def fit_global(reps, labels, progress=True):
                seen["reps"], seen["labels"] = reps, labels
                return real_fit_global(reps, labels, progress=progress)

            m.fit_global = fit_global
            m.fit(d, progress=False)
            assert len(drawn) == 2, drawn.keys()  # the two stages
            for desc, items in drawn.items():
                assert not items & set(np.flatnonzero(held).tolist()), desc
                assert len(items) > 0.8 * (~held).sum(), desc  # they did see the others
            assert np.array_equal(seen["labels"], d.labels[held])
            m.eval()
            assert torch.allclose(seen["reps"], m.representations(_t(d, held)), atol=1e-5)
    finally:
        torch.set_num_threads(threads)


LOC_SIZE = 16  # two 3 x 3 convs see 2 cells each way: 6 of the 8 rows of each half never see the other half
# L_C alone, to convergence: the AAMs' training (stage 2 moves the boxes again, see the test)
LOC_CONFIG = {**SMALL, "epochs_cls": 50, "lr": 1e-2, "epochs": 0, "global_epochs": 0}


def _localisation_model(seed=0):
    """FashionSearchNet's AAM stage (L_C) trained to convergence on the 16 x 16 fixture."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        m = create_model("fashionsearchnet", SCHEMA, CH, {**LOC_CONFIG, "seed": seed})
        m.fit(_data(300, seed=seed, size=LOC_SIZE), progress=False)
    finally:
        torch.set_num_threads(threads)
    return m.eval()


def _localisation_shares(trained, mode):
    """(share of unseen items whose colour box is centred in the top half, share of the items with a known
    sleeve whose sleeve box is centred in the bottom half) under box mode `mode`."""
    m = create_model("fashionsearchnet", SCHEMA, CH, {**LOC_CONFIG, "box_mode": mode}).eval()
    m.load_state_dict(trained.state_dict())
    test = _data(200, seed=2, size=LOC_SIZE)
    with torch.no_grad():
        f = m.features(_t(test))
        b = m.boxes(f, m.logits(f))
    centre_y = (b[..., 1] + b[..., 3]) / 2
    known = torch.from_numpy(test.labels[:, 1] < 2)  # sleeve code 2 = "unspecified": no known value to localise
    return (float((centre_y[:, 0] < LOC_SIZE / 2).float().mean()),
            float((centre_y[known, 1] > LOC_SIZE / 2).float().mean()))


def test_trained_boxes_find_the_parts_of_the_fixture():
    """Issue 14: the colour box lands in the top half and the sleeve box in the bottom half (colour: of all unseen
    items; sleeve: of those with a known sleeve) for > 90 % of items with the default boxes ("minmax"); the
    "paper" boxes on the raw AAM get a floor. Measured with this exact code over seeds 0-9 (README, issue 14):
    minmax colour 0.995-1.00, sleeve 0.984-1.00; paper colour 0.755-1.00 (< 0.9 for seeds 2, 8, 9), sleeve 1.00.

    Why not the 4 x 4 `_data` (`benchmarks/fsn_fixture_localisation.py`): two 3 x 3 convs give every cell of a
    4 x 4 map a view of both halves, and L_C spreads the colour evidence into every cell: trained to convergence
    (50 L_C epochs) the GAP classifier on the bottom half's features alone predicts colour for 100 % of unseen
    items, and the colour box is centred in the top half for 0-2 % of them (boxes 0.98-1.00 of the map), with
    raw, class-centred or runner-up-contrast CAM weights, in both box modes. On 16 x 16, 6 of the 8 rows of a
    half never see the other half.
    Why L_C alone, to convergence: the `trained` schedule (30 steps) leaves the classifier weights within 0.02
    of their random initialisation (|w| 0.12-0.16): 0.14-0.28 on 16 x 16. Stage 2 (5 epochs of L_C + triplet
    on the boxes) moves the colour boxes again (minmax 0.82-1.00, seeds 0-4).
    Why items with a known sleeve: the AAM maps the most confident KNOWN value, so for an item whose sleeve is
    "unspecified" (a third of them) it maps a value with no evidence anywhere; over all items the share stays
    at or below the 0.63 of items with a known sleeve in every setting measured.
    Why a floor for "paper" (0.7): in the failing trainings the misses are whole (colour, sleeve) pairs of one
    colour (0-30 % of their items in the top half, one pair 68 %; every other pair 100 %). Likely because the
    colour weights' part common to the three known values is held by L_C only against "unspecified", which no
    training item has, so its response to the bottom half's features is free: with that part removed (CAM
    weights centred over the known values) paper colour is 0.92-1.00 over the same ten seeds, with the
    runner-up contrast 0.98-1.00. Not in the model: it is not the paper's eq. 2, and unmeasured on photos."""
    trained = _localisation_model()
    for mode, bar in (("minmax", (0.9, 0.9)), ("paper", (0.7, 0.9))):
        colour, sleeve = _localisation_shares(trained, mode)
        assert colour > bar[0], (mode, colour)  # colour: top half
        assert sleeve > bar[1], (mode, sleeve)  # sleeve: bottom half
