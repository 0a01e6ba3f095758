"""`parts` (Verma et al.'s diverse part-based suggestions): its losses on known answers, gradients from each loss to
the LSTM and the transformer head, the identity start, step 0 left out of the prediction, training against no
training on maps with known garments, and the diverse plan."""

import numpy as np
import pytest
import torch

from vestis.catalog import AttributeSchema
from vestis.models import Request, create_model
from vestis.models.loop import TrainData
from vestis.models.parts import (SPACE, classification_loss, divergence_loss, localisation_loss, sampling_masks,
                                 transform_matrices)

SCHEMA = AttributeSchema({"category": ["top", "trousers", "shoes"], "colour": ["red", "blue"]})
CHANNELS = {"s8": 6, "s16": 4, "s32": 4}
SMALL = {"width": 16, "hidden": 16, "codewords": 4, "dim": 16, "glimpse": 4, "steps": 3, "batch_size": 32}
# where garment l sits on the 20 x 16 stride-8 grid (rows, cols): top above, trousers below, shoes at the bottom
PLACES = [(slice(1, 8), slice(2, 14)), (slice(8, 15), slice(3, 13)), (slice(16, 20), slice(2, 14))]


def _model(**config):
    torch.manual_seed(0)
    return create_model("parts", SCHEMA, CHANNELS, {**SMALL, **config})


def _data(n: int, seed: int):
    """Images of 1-3 garments: garment l is channel l of the stride-8 map switched on in its place (plus noise),
    the stride-16 map its average; multi-hot targets through TrainData.garments."""
    rng = np.random.default_rng(seed)
    s8 = rng.normal(0, 0.3, (n, 6, 20, 16)).astype(np.float32)
    garments = []
    for i in range(n):
        present = sorted(rng.choice(3, size=int(rng.integers(1, 4)), replace=False))
        for lab in present:
            rows, cols = PLACES[lab]
            s8[i, lab, rows, cols] += 2.0
            s8[i, 3 + lab, rows, cols] += rng.normal(0, 1)  # a garment's "texture": varies between images
        garments.append(np.array([[lab, 2] for lab in present], np.int64))
    s16 = s8.reshape(n, 6, 10, 2, 8, 2).mean((3, 5))[:, :4]
    maps = {"s8": s8.astype(np.float16), "s16": s16.astype(np.float16),
            "s32": np.zeros((n, 4, 5, 4), np.float16)}
    labels = np.array([g[0] for g in garments])
    return TrainData([str(i) for i in range(n)], maps, labels, -np.ones(n, np.int64), SCHEMA, garments)


def _t(maps):
    return {k: torch.from_numpy(v.astype(np.float32)) for k, v in maps.items()}


def test_classification_loss_known_answer():
    scores = torch.tensor([[0.0, 0.0, 0.0], [5.0, 1.0, 0.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # the second image has no known label
    p = torch.full((3,), 1 / 3)
    want = 0.5 * ((p - torch.tensor([0.5, 0.5, 0.0])) ** 2).sum()
    assert torch.allclose(classification_loss(scores, targets), want)


def test_localisation_loss_known_answer():
    params = torch.tensor([[[0.7, 0.4, 0.5, 0.0], [0.5, 0.5, -0.5, 0.5]]])  # one image, two steps
    anchors = torch.tensor([[0.5, 0.5], [-0.5, 0.5]])
    # step 1: scale 0.7 is 0.2 over the limit; its translation is 0.5 from the anchor in y; step 2: nothing
    want = 0.2 ** 2 + 0.1 * 0.5 * 0.5 ** 2
    assert localisation_loss(params, anchors, 0.1).item() == pytest.approx(want)


def test_divergence_loss_is_the_overlap_of_consecutive_masks():
    same = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]]])
    apart = torch.tensor([[[0.4, 0.4, -0.5, -0.5], [0.4, 0.4, 0.5, 0.5]]])
    half = torch.tensor([[[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.5, 0.0]]])  # shifted by half its width
    assert divergence_loss(same, (40, 40)).item() == pytest.approx(1.0, abs=1e-3)
    assert divergence_loss(apart, (40, 40)).item() < 0.01
    assert divergence_loss(half, (40, 40)).item() == pytest.approx(1 / 3, abs=0.03)  # IoU of two boxes half over
    m = sampling_masks(torch.tensor([[0.5, 0.5, 0.0, 0.0]]), (40, 40))[0]
    assert m[20, 20] > 0.99 and m[0, 0] < 0.01 and m.sum().item() == pytest.approx(400, rel=0.05)


def test_transforms_have_no_rotation_or_shear():
    m = transform_matrices(torch.tensor([[0.3, 0.6, 0.1, -0.2]]))
    assert torch.equal(m, torch.tensor([[[0.3, 0.0, 0.1], [0.0, 0.6, -0.2]]]))


def test_the_transformer_starts_at_the_identity_and_step_zero_sees_the_whole_map():
    model = _model()
    out = model(_t(_data(4, 0).maps))
    assert out["params"].shape == (4, 4, 4)
    assert torch.allclose(out["params"], torch.tensor([1.0, 1.0, 0.0, 0.0]).expand(4, 4, 4), atol=1e-6)
    boxes = model.boxes(out, 8)
    assert torch.allclose(boxes, torch.tensor([0.0, 0.0, 128.0, 160.0]).expand(4, 4, 4), atol=1e-4)


def test_step_zero_score_is_discarded():
    model = _model()
    out = model(_t(_data(2, 0).maps))
    out["scores"] = out["scores"].detach().clone()
    before = model.pooled_scores(out).clone()
    out["scores"][:, 0] = 100.0  # step 0 "sure" of every label
    assert torch.equal(model.pooled_scores(out), before)
    assert torch.equal(before, out["scores"][:, 1:].amax(1))


@pytest.mark.parametrize("which", ["cls", "loc", "div"])
def test_each_loss_reaches_the_lstm_and_the_transformer(which):
    model = _model()
    data = _data(8, 1)
    # away from the identity start, where the scale penalty's and the masks' gradients are generic
    with torch.no_grad():
        model.where.weight.normal_(0, 0.3)
    _, logs = model.loss(model(_t(data.maps)), model.targets(data))
    logs[which].backward()
    for name in ("lstm.weight_hh", "lstm.weight_ih", "where.weight", "where.bias"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, (which, name)


def _multilabel_ap(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over labels of average precision (a plain reading, for the training test)."""
    aps = []
    for lab in range(targets.shape[1]):
        order = np.argsort(-probs[:, lab])
        hits = targets[order, lab]
        if hits.sum():
            aps.append(float((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits > 0].mean()))
    return float(np.mean(aps))


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is several times faster on a busy machine
    try:
        model = _model(epochs=30, lr=1e-2)
        model.fit(_data(128, 2), progress=False)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_training_learns_the_garments_of_an_image(trained):
    test = _data(96, 3)
    y = trained.targets(test).numpy()
    untrained = _model().eval()
    with torch.no_grad():
        before = _multilabel_ap(untrained.label_probabilities(untrained(_t(test.maps))).numpy(), y)
        after = _multilabel_ap(trained.label_probabilities(trained(_t(test.maps))).numpy(), y)
        steps = trained(_t(test.maps))["params"][:, 1:]
    assert after > 0.9 and after > before + 0.1, (before, after)
    # the steps left the identity: scales under the localisation loss's limit and apart from each other
    assert (steps[..., :2] < 0.6).all()
    assert (steps[..., 2:].std(1) > 0.1).any(-1).all()


def test_diverse_plan_makes_a_group_per_predicted_label(trained):
    model = trained
    data = _data(40, 5)
    probes = model.plan(_t(data.maps), Request("diverse", [{}] * 40))
    with torch.no_grad():
        out = model(_t(data.maps))
        probs = model.label_probabilities(out)
    # each group's vector and box come from the step whose own softmax is surest of its label
    boxes = model.boxes(out, model.stride)[:, 1:]
    sure = torch.softmax(out["scores"][:, 1:], -1).argmax(1)
    for p in probes:
        q, j = int(p.rows[0]), model.labels.index(p.group)
        t = int(sure[q, j])
        assert np.allclose(p.boxes[0], boxes[q, t].numpy()) and np.allclose(p.vectors[0, :16], out["descriptors"][q, t + 1])
    by_row: dict[int, list] = {}
    for p in probes:
        assert p.space == SPACE and p.vectors.shape == (1, 17) and len(p.rows) == 1
        assert p.filters == {"part_label": p.group} and p.group in SCHEMA.values("category")
        x0, y0, x1, y1 = p.boxes[0]
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 160
        by_row.setdefault(int(p.rows[0]), []).append(p)
    assert set(by_row) == set(range(40))
    for q, ps in by_row.items():
        labels = [p.group for p in ps]
        want = [SCHEMA.values("category")[j] for j in np.flatnonzero(model.predicted_labels(probs)[q].numpy())]
        assert sorted(labels) == sorted(want) and len(set(labels)) == len(labels)
        scores = [float(p.scores[0]) for p in ps]
        assert scores == sorted(scores, reverse=True)
    # mostly right: at label ratio 0.3 the predicted labels are exactly the image's garments; at the default 0.1
    # (a group for a garment the model is unsure of) every garment has its group more often still
    truth = [sorted(SCHEMA.values("category")[g] for g in data.garments[q][:, 0]) for q in range(40)]
    found = np.mean([set(truth[q]) <= {p.group for p in by_row[q]} for q in range(40)])
    model.config["label_ratio"] = 0.3
    try:
        strict = {int(p.rows[0]): [] for p in probes}
        for p in model.plan(_t(data.maps), Request("diverse", [{}] * 40)):
            strict[int(p.rows[0])].append(p.group)
    finally:
        model.config["label_ratio"] = 0.1
    right = np.mean([sorted(strict[q]) == truth[q] for q in range(40)])
    assert right >= 0.6  # exactly the image's garments (the untrained model: 0.325 here)
    assert found >= right
    # gallery_label_ratio 1.0: a gallery item's parts all carry its likeliest label
    model.config["gallery_label_ratio"] = 1.0
    try:
        codes = model.part_labels(_t(data.maps), SPACE)
    finally:
        model.config["gallery_label_ratio"] = None  # the query's ratio, as in the plan
    assert codes.shape == (40, 3)
    assert torch.equal(codes, probs.argmax(-1, keepdim=True).expand(-1, 3))
    # at the query's ratio, each part row's label is one of its item's predicted labels, the one its step scores
    # highest: several labels per multi-garment image
    codes = model.part_labels(_t(data.maps), SPACE)
    allowed = model.predicted_labels(probs)
    assert all(bool(allowed[i, c]) for i in range(40) for c in codes[i].tolist())
    assert (torch.tensor([len(set(c.tolist())) for c in codes]) > 1).any()
    best = out["scores"][:, 1:].masked_fill(~allowed[:, None, :], float("-inf")).argmax(-1)
    assert torch.equal(codes, best)


def test_confidence_weight_adds_the_items_label_probability_to_the_part_score():
    model = _model(confidence_weight=0.5).eval()
    data = _data(6, 7)
    maps = _t(data.maps)
    assert model.spaces()[SPACE].dim == 17  # the descriptor (16) + the confidence
    with torch.no_grad():
        out = model(maps)
        probs = model.label_probabilities(out)
        rows = model.embed(maps, SPACE)
        codes = model.part_labels(maps, SPACE)
    assert torch.allclose(rows[..., :16], out["descriptors"][:, 1:])
    assert torch.allclose(rows[..., 16], 0.5 * probs.gather(1, codes))
    probes = model.plan(maps, Request("diverse", [{}] * 6))
    p = probes[0]
    assert p.vectors.shape == (1, 17) and p.vectors[0, 16] == 1.0
    # the score of a part row: the descriptors' cosine + 0.5 x the item's probability of the row's label
    q = torch.from_numpy(p.vectors[0])
    want = out["descriptors"][2, 1:] @ q[:16] + 0.5 * probs[2, codes[2]]
    assert torch.allclose(rows[2] @ q, want, atol=1e-6)
    # confidence_weight 0: the plain descriptor
    assert _model(confidence_weight=0.0).spaces()[SPACE].dim == 16


def test_step_garments_pick_the_garment_each_step_scores_highest():
    from vestis.models.parts import step_garments

    scores = torch.tensor([[[0.0, 5.0, 1.0], [3.0, 0.0, 9.0]],   # image 0: garments top (0) and shoes (2)
                           [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])  # image 1: no known garment
    labels = torch.tensor([[0, 2], [-1, -1]])
    # step 0 scores shoes (1.0) above top (0.0): garment 1, though it scores trousers highest of all
    assert step_garments(scores, labels).tolist() == [[1, 1], [-1, -1]]
    assert step_garments(scores, torch.tensor([[0, -1], [-1, -1]])).tolist() == [[0, 0], [-1, -1]]


def test_similarity_loss_is_the_contrastive_loss_of_the_steps_garment_keys():
    from vestis.losses import supervised_contrastive
    from vestis.models.parts import similarity_loss

    torch.manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(3, 3, 8), dim=-1)  # 3 images, step 0 + 2 steps
    scores = torch.zeros(3, 3, 3)
    scores[0, 1, 0] = scores[0, 2, 2] = scores[1, 1, 0] = scores[1, 2, 0] = scores[2, 1, 2] = 1.0
    out = {"descriptors": d, "scores": scores}
    labels = torch.tensor([[0, 2], [0, -1], [2, -1]])
    keys = torch.tensor([[10, 20], [10, -1], [-1, -1]])  # image 2's shoes: no colour, no key
    want = supervised_contrastive(torch.stack([d[0, 1], d[0, 2], d[1, 1], d[1, 2]]), torch.tensor([10, 20, 10, 10]), 0.3)
    assert torch.allclose(similarity_loss(out, labels, keys, 0.3), want)
    assert float(want) > 0


def _coloured(n: int, seed: int):
    """`_data` with each garment's colour in its texture channel: red +1.5, blue -1.5 (codes 0 and 1)."""
    data = _data(n, seed)
    rng = np.random.default_rng(seed + 100)
    s8 = data.maps["s8"].astype(np.float32)
    for i, g in enumerate(data.garments):
        for row in g:
            colour = int(rng.integers(2))
            rows, cols = PLACES[row[0]]
            s8[i, 3 + row[0], rows, cols] += 1.5 if colour == 0 else -1.5
            row[1] = colour
    data.maps["s8"] = s8.astype(np.float16)
    data.maps["s16"] = s8.reshape(n, 6, 10, 2, 8, 2).mean((3, 5))[:, :4].astype(np.float16)
    return data


def _colour_gap(model, data) -> float:
    """Mean cosine of two steps standing for garments of the same category and colour, less that of two of the same
    category and another colour (steps of different images; each step stands for the garment it scores highest)."""
    from vestis.models.parts import step_garments

    labels, keys = model.garment_keys(data)
    with torch.no_grad():
        out = model(_t(data.maps))
    g = step_garments(out["scores"][:, 1:], labels)
    key = keys.gather(1, g.clamp_min(0)).flatten()
    lab = labels.gather(1, g.clamp_min(0)).flatten()
    image = torch.arange(len(g)).repeat_interleave(g.shape[1])
    d = out["descriptors"][:, 1:].flatten(0, 1)
    sim = d @ d.T
    other = image[:, None] != image[None, :]
    same_cat = (lab[:, None] == lab[None, :]) & other
    same_key = (key[:, None] == key[None, :]) & same_cat
    return float(sim[same_key].mean() - sim[same_cat & ~same_key].mean())


def test_similarity_term_trains_the_part_descriptor_for_colour():
    """Classification alone has no reason to keep a garment's colour in its descriptor; the contrastive term does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = {}
        for w in (0.0, 1.0):
            models[w] = _model(epochs=20, lr=1e-2, similarity_weight=w, similarity_attribute="colour")
            models[w].fit(_coloured(128, 2), progress=False)
            models[w].eval()
    finally:
        torch.set_num_threads(threads)
    test = _coloured(64, 3)
    without, with_term = _colour_gap(models[0.0], test), _colour_gap(models[1.0], test)
    assert with_term > 0.1 and with_term > without + 0.1, (without, with_term)  # measured: -0.01 and 0.18


def test_similarity_attribute_must_exist():
    from vestis.errors import VestisError

    with pytest.raises(VestisError):
        _model(similarity_weight=1.0, similarity_attribute="fabric")
    _model(similarity_weight=0.0, similarity_attribute="fabric")  # off: not read


def test_supervised_contrastive_known_answer():
    from vestis.losses import supervised_contrastive

    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0], [-1.0, 0.1]]), dim=-1)
    groups = torch.tensor([0, 0, 1, 2])  # only the first two have a positive
    t = 0.5
    sim = z @ z.T / t
    want = []
    for a, p in ((0, 1), (1, 0)):
        others = [j for j in range(4) if j != a]
        want.append(-(sim[a, p] - torch.logsumexp(sim[a, others], 0)))
    assert torch.allclose(supervised_contrastive(z, groups, t), torch.stack(want).mean())
    # one point for all: log(n - 1) per anchor, not 0 (no collapsed minimum)
    same = torch.tensor([[1.0, 0.0]] * 4)
    assert torch.allclose(supervised_contrastive(same, torch.tensor([0, 0, 1, 1]), t), torch.log(torch.tensor(3.0)))
    assert float(supervised_contrastive(z, torch.tensor([0, 1, 2, 3]), t)) == 0.0


def test_similarity_attribute_defaults_to_the_colour():
    assert _model().config["similarity_attribute"] == "colour"
    no_colour = AttributeSchema({"category": ["top", "trousers", "shoes"]})
    model = create_model("parts", no_colour, CHANNELS, SMALL)
    assert model.config["similarity_attribute"] is None  # the label alone
    data = TrainData(["a"], {}, np.zeros((1, 1), np.int64), -np.ones(1, np.int64), no_colour, [np.array([[0], [2]])])
    labels, keys = model.garment_keys(data)
    assert labels.tolist() == [[0, 2]] and keys.tolist() == [[0, 2]]
