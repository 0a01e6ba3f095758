"""AMNet (models/amnet.py): memory block, indicator, manipulator, losses, triplet mining, ablations."""

import numpy as np
import pytest
import torch

from vestis.catalog import AttributeSchema
from vestis.errors import UnknownAttributeError, UnknownValueError, VestisError
from vestis.models import TrainData, create_model
from vestis.runs import load_run, save_run
from vestis.models.amnet import NORMS, ManipulationMiner, normalise_indicator
from vestis.models.layers import value_means
from vestis.models.loop import pooled_features

SCHEMA = AttributeSchema({"colour": ["red", "blue", "green"], "sleeve": ["short", "long"]})
CH = {"s16": 8, "s32": 16}
SMALL = {"hidden": 32, "dim": 16, "batch_size": 32, "pre_epochs": 4, "pre_lr": 0.05, "epochs": 8, "lr": 0.02}
PAPER = {"normalize": False, "indicator_norm": "l1"}  # the paper's two settings (the defaults are the measured ones)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one torch thread


def _data(n=600, seed=0, colours=3):
    """Maps whose channels encode the labels (colour in channels 0-2, sleeve in 3-4), plus noise.
    sleeve code 2 = unspecified; `colours`=2 leaves green (code 2) out of the data entirely."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, colours, n), rng.integers(0, 3, n)], 1)
    s32 = rng.normal(0, 0.3, (n, 16, 2, 2)).astype(np.float32)
    s32[np.arange(n), labels[:, 0]] += 2.0
    s32[np.arange(n), 3 + labels[:, 1]] += 2.0
    maps = {"s16": rng.normal(0, 1, (n, 8, 4, 4)).astype(np.float16), "s32": s32.astype(np.float16)}
    return TrainData([str(i) for i in range(n)], maps, labels, -np.ones(n, np.int64), SCHEMA)


def _t(data, idx=slice(None)):
    return {k: torch.from_numpy(v[idx].astype(np.float32)) for k, v in data.maps.items()}


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    m = create_model("amnet", SCHEMA, CH, {**SMALL, **PAPER})
    hist = m.fit(_data(600), progress=False)
    return m, hist


def test_shapes():
    m = create_model("amnet", SCHEMA, CH, {"hidden": 32, "dim": 16})
    m.eval()
    x = _t(_data(7))
    assert m.metric == "l2" and m.supports_manipulation
    assert m.embed(x).shape == (7, 16)
    assert m.embed_query(x, [{"colour": "blue", "sleeve": "long"}] * 7).shape == (7, 16)
    assert m.memory.memory.shape == (5, 16)  # C = 3 colours + 2 sleeves ("unspecified" has no row)
    assert m.manipulator.in_features == 32 and m.manipulator.out_features == 16
    assert [p.shape[1] for p in m.predict_attributes(x)] == [4, 3]  # values + unspecified
    assert m.indicator(torch.zeros(7, 2, dtype=torch.long), -torch.ones(7, 2, dtype=torch.long)).shape == (7, 5)


def test_configured_levels_are_the_levels_read_in_their_order():
    m = create_model("amnet", SCHEMA, {"s32": 16}, {"hidden": 32, "dim": 16, "levels": ["s32"]})
    assert m.levels == ("s32",)  # a cache of s32 alone is enough
    x = {"s32": _t(_data(3))["s32"]}
    assert m.eval().embed(x).shape == (3, 16)
    assert create_model("amnet", SCHEMA, CH, {"hidden": 32, "dim": 16}).levels == ("s32", "s16")  # concatenation order
    with pytest.raises(VestisError, match="s16"):
        create_model("amnet", SCHEMA, {"s32": 16}, {"hidden": 32, "dim": 16})


def test_gradient_reaches_every_parameter():
    d = _data(64)
    m = create_model("amnet", SCHEMA, CH, {"hidden": 32, "dim": 16})
    with torch.no_grad():
        m.memory.memory.normal_()
    m.train()
    rows = torch.from_numpy(ManipulationMiner(d.labels, m.n_values).sample(32, np.random.default_rng(0)))
    loss, logs = m.training_loss(pooled_features(d, tuple(m.levels), m.config["pool"]), rows, torch.from_numpy(d.labels))
    loss.backward()
    assert set(logs) == {"cls", "triplet"}
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("indicator,addressed", [("signed", [True, True, False, False, False]),
                                                ("binary", [False, True, False, False, False])])
def test_memory_update_touches_only_addressed_rows(indicator, addressed):
    """Eq. 2: only rows the indicator addresses move: red (the current value, under "signed") and blue (new)."""
    d = _data(64)
    m = create_model("amnet", SCHEMA, CH, {"hidden": 32, "dim": 16, "indicator": indicator})
    with torch.no_grad():
        m.memory.memory.normal_()
    before = m.memory.memory.detach().clone()
    x = pooled_features(d, tuple(m.levels), m.config["pool"])
    # every reference is red with short sleeves, manipulated to blue: rows red (0) and blue (1) are addressed
    rows = torch.tensor([[0, 1, 2, 1, -1]] * 4)
    labels = torch.from_numpy(d.labels).clone()
    labels[0] = torch.tensor([0, 0])
    opt = torch.optim.SGD([m.memory.memory], lr=0.1)
    loss, _ = m.training_loss(x, rows, labels)
    loss.backward()
    g = m.memory.memory.grad.abs().sum(1)
    assert ((g > 0).tolist() == addressed)
    opt.step()
    changed = (m.memory.memory.detach() != before).any(1)
    assert changed.tolist() == addressed


def test_memory_rows_never_addressed_stay_put_through_fit():
    """Through the whole training loop (momentum, weight decay): green never occurs, so its row - zero at
    initialisation, as no item has it - is never addressed and never moves."""
    d = _data(300, colours=2)
    m = create_model("amnet", SCHEMA, CH, {**SMALL, "epochs": 3, "pre_epochs": 2})
    m.fit(d, progress=False)
    assert torch.equal(m.memory.memory[2], torch.zeros(16))
    assert (m.memory.memory[[0, 1, 3, 4]].abs().sum(1) > 0).all()


def test_value_means_known_answer():
    reps = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 5.0]])
    labels = torch.tensor([[0, 0], [0, 2], [1, 1], [1, 0]])  # sleeve 2 = unspecified
    m, counts = value_means(reps, labels, [3, 2])
    expected = torch.tensor([[2.0, 1.0],    # red: items 0, 1
                             [2.5, 4.5],    # blue: items 2, 3
                             [0.0, 0.0],    # green: no item
                             [3.0, 2.5],    # short: items 0, 3
                             [0.0, 4.0]])   # long: item 2 (item 1 unspecified has no row)
    assert torch.allclose(m, expected) and counts.tolist() == [2, 2, 0, 2, 1]
    # per-attribute representations (N, A, D), every state a row (FashionSearchNet's prototypes)
    per = torch.stack([reps, -reps], 1)
    m2, c2 = value_means(per, labels, [3, 3])
    assert torch.allclose(m2[:3], expected[:3]) and torch.allclose(m2[3:5], -expected[3:])
    assert torch.allclose(m2[5], -reps[1]) and c2.tolist() == [2, 2, 0, 2, 1, 1]


def test_fit_initialises_memory_with_the_classifiers_mean_representations():
    d = _data(200)
    m = create_model("amnet", SCHEMA, CH, {**SMALL, "pre_epochs": 2, "epochs": 0, "normalize": False})
    m.fit(d, progress=False)
    r = m.embed(_t(d))  # normalize=False: the gallery vector is r itself
    for a, n_vals in enumerate([3, 2]):
        for v in range(n_vals):
            row = [0, 3][a] + v
            assert torch.allclose(m.memory.memory[row], r[d.labels[:, a] == v].mean(0), atol=1e-5)


def test_indicator_and_normalisation_with_several_attributes():
    m = create_model("amnet", SCHEMA, CH, {"hidden": 8, "dim": 4, "indicator": "signed"})
    current = torch.tensor([[0, 0], [0, 2], [1, 1]])  # red/short, red/unspecified, blue/long
    new = torch.tensor([[1, 1], [2, 1], [1, -1]])      # blue+long, green+long, blue (already blue)
    h = m.indicator(current, new)
    assert h.tolist() == [[-1, 1, 0, -1, 1], [-1, 0, 1, 0, 1], [0, 0, 0, 0, 0]]
    hn = normalise_indicator(h)
    assert torch.allclose(hn[0], torch.tensor([-0.25, 0.25, 0, -0.25, 0.25]))
    assert torch.allclose(hn[1], torch.tensor([-1, 0, 1, 0, 1]) / 3)
    assert torch.equal(hn[2], torch.zeros(5))
    assert torch.allclose(hn.abs().sum(1), torch.tensor([1.0, 1.0, 0.0]))
    # the read of eq. 1 is the normalised, signed sum of the addressed prototypes
    with torch.no_grad():
        m.memory.memory.copy_(torch.arange(20.0).reshape(5, 4))
    M = m.memory.memory
    assert torch.allclose(m.memory(hn)[0], 0.25 * (M[1] - M[0] + M[4] - M[3]))
    assert torch.allclose(normalise_indicator(h, "l2")[0].norm(), torch.tensor(1.0))
    assert torch.equal(normalise_indicator(h, "none"), h)


@pytest.mark.parametrize("norm", ["l1", "l2", "none"])
def test_manipulator_starts_as_prototype_arithmetic(norm):
    """init_identity: before phase 2, one manipulation gives r' = r + M(new) - M(old) whatever the norm."""
    m = create_model("amnet", SCHEMA, CH, {"hidden": 8, "dim": 4, "indicator_norm": norm, "indicator": "signed"})
    with torch.no_grad():
        m.memory.memory.normal_()
    r = torch.randn(3, 4)
    h = m.indicator(torch.tensor([[0, 0]] * 3), torch.tensor([[2, -1]] * 3))  # red -> green
    M = m.memory.memory
    assert torch.allclose(m.manipulate(r, h), r + M[2] - M[0], atol=1e-5)
    m = create_model("amnet", SCHEMA, CH, {"hidden": 8, "dim": 4, "indicator_norm": norm, "init_gain": 5.0,
                                            "indicator": "signed"})
    assert torch.allclose(m.manipulator.weight[:, 4:], 5 * torch.eye(4))


def test_embed_query_without_manipulation_is_the_manipulator_with_zero_read(trained):
    m, _ = trained
    x = _t(_data(5, seed=3))
    r = m.represent(x)
    expected = m.manipulator(torch.cat([r, torch.zeros_like(r)], 1))  # h = 0 -> t = 0 -> r' = W [r, 0] + b
    assert torch.allclose(m.embed_query(x), expected, atol=1e-6)
    assert torch.allclose(m.embed_query(x, [{}] * 5), expected, atol=1e-6)


def test_current_value_comes_from_the_classifier(trained):
    m, _ = trained
    d = _data(200, seed=4)
    cur = m.current_values(m.represent(_t(d)))
    assert (cur[:, 0].numpy() == d.labels[:, 0]).mean() > 0.95
    assert (cur[:, 1] < 2).all()  # a known value, never "unspecified"


BENCHMARK = {"normalize": True, "indicator_norm": "none"}  # the settings the benchmark passes
OLD_DEFAULTS = {"indicator": "signed", "current": "argmax", "cls_reduction": "mean"}  # before issue 14


@pytest.fixture(scope="module")
def trained_benchmark_config():
    """The settings the benchmark passes (normalised vectors, un-normalised indicator)."""
    torch.set_num_threads(1)
    m = create_model("amnet", SCHEMA, CH, {**SMALL, **BENCHMARK})
    return m, m.fit(_data(600), progress=False)


@pytest.fixture(scope="module")
def trained_old_defaults():
    """The signed indicator (arg-max current value) and mean classification losses, the defaults before
    issue 14 (the default is now the paper's binary indicator and summed losses)."""
    torch.set_num_threads(1)
    m = create_model("amnet", SCHEMA, CH, {**SMALL, **OLD_DEFAULTS})
    return m, m.fit(_data(600), progress=False)


def _manipulation_precision(m, test: TrainData, two: bool) -> float:
    """Share of the 10 nearest gallery items with exactly the target vector: 60 queries with a known sleeve,
    colour moved to the next value (and, with `two`, the sleeve flipped as well)."""
    q_idx = np.flatnonzero(test.labels[:, 1] < 2)[:60]
    new_colour = (test.labels[q_idx, 0] + 1) % 3
    new_sleeve = 1 - test.labels[q_idx, 1] if two else test.labels[q_idx, 1]
    mans = [{"colour": SCHEMA.values("colour")[c], **({"sleeve": SCHEMA.values("sleeve")[s]} if two else {})}
            for c, s in zip(new_colour, new_sleeve)]
    target = np.stack([new_colour, new_sleeve], 1)
    g = m.embed(_t(test))
    top = torch.cdist(m.embed_query(_t(test, q_idx), mans), g).topk(10, largest=False).indices.numpy()
    return float((test.labels[top] == target[:, None, :]).all(-1).mean())


# precision@10 measured (one attribute / two) before the default became the paper's indicator, old default
# (benchmark settings, paper indicator): trained 1.00 / 1.00 (1.00 / 1.00, 0.965 / 0.985); untrained (no phase
# at all: memory = mean random representations) 0.34 / 0.06 (0.38 / 0.24, 0.30 / 0.07); `epochs` 0 (classifier
# phase and memory, no manipulation training) 0.94 / 0.27 (0.96 / 0.91, 0.36 / 0.02)
@pytest.mark.parametrize("fixture,config", [("trained", {}), ("trained_benchmark_config", BENCHMARK),
                                            ("trained_old_defaults", OLD_DEFAULTS)])
def test_training_makes_manipulated_queries_find_the_target(fixture, config, request):
    m, hist = request.getfixturevalue(fixture)
    assert hist["triplet"][-1] < hist["triplet"][0] and hist["cls"][-1] < hist["cls"][0]
    test = _data(400, seed=1)
    torch.manual_seed(0)
    untrained = create_model("amnet", SCHEMA, CH, {**SMALL, **config, "pre_epochs": 0, "epochs": 0})
    untrained.fit(_data(600), progress=False)  # memory = the mean (random) representations, no training
    torch.manual_seed(0)
    no_manipulation_training = create_model("amnet", SCHEMA, CH, {**SMALL, **config, "epochs": 0})
    no_manipulation_training.fit(_data(600), progress=False)
    for two in (False, True):
        trained = _manipulation_precision(m, test, two)
        assert trained > 0.9 and trained > _manipulation_precision(untrained, test, two) + 0.5, two
        assert trained >= _manipulation_precision(no_manipulation_training, test, two), two
    if not config:  # two attributes at once need the manipulation training under the default settings
        assert _manipulation_precision(m, test, True) > _manipulation_precision(no_manipulation_training, test, True) + 0.5
    # the unmanipulated query does not find the target
    q_idx = np.flatnonzero(test.labels[:, 1] < 2)[:60]
    target = np.stack([(test.labels[q_idx, 0] + 1) % 3, test.labels[q_idx, 1]], 1)
    top = torch.cdist(m.embed_query(_t(test, q_idx)), m.embed(_t(test))).topk(10, largest=False).indices.numpy()
    assert (test.labels[top] == target[:, None, :]).all(-1).mean() < 0.1


def test_unknown_attribute_or_value_raises_the_schema_error(trained):
    m, _ = trained
    x = _t(_data(1))
    with pytest.raises(UnknownValueError, match="valid values: red, blue, green"):
        m.embed_query(x, [{"colour": "navy"}])
    with pytest.raises(UnknownAttributeError, match="valid attributes: colour, sleeve"):
        m.embed_query(x, [{"fabric": "silk"}])
    with pytest.raises(UnknownValueError):  # never manipulated to "unspecified"
        m.embed_query(x, [{"sleeve": "unspecified"}])


def test_run_round_trip_gives_identical_vectors(trained, tmp_path):
    m, _ = trained
    save_run(m, tmp_path / "run", trunk={"name": "t"})
    m2, info = load_run(tmp_path / "run")
    assert info.model == "amnet" and type(m2) is type(m)
    x = _t(_data(9, seed=5))
    mans = [{"colour": "green"}, {}, {"sleeve": "long", "colour": "red"}] * 3
    assert torch.equal(m.embed(x), m2.embed(x))
    assert torch.equal(m.embed_query(x, mans), m2.embed_query(x, mans))
    m3 = create_model("amnet_no_memory", SCHEMA, CH, {"hidden": 8, "dim": 4})
    m3.eval()
    save_run(m3, tmp_path / "run3", trunk={"name": "t"})
    m4, _ = load_run(tmp_path / "run3")
    assert torch.equal(m3.embed_query(x, mans), m4.embed_query(x, mans))


def test_ablation_switches():
    full = create_model("amnet", SCHEMA, CH, {"hidden": 8, "dim": 4})
    no_mem = create_model("amnet_no_memory", SCHEMA, CH, {"hidden": 8, "dim": 4})
    no_rank = create_model("amnet_no_ranking", SCHEMA, CH, {"hidden": 8, "dim": 4})
    # w/o memory: no M; the manipulator reads [r, h'] (Q + C inputs) instead of [r, t] (2Q)
    assert no_mem.memory is None and not any(n.startswith("memory.") for n, _ in no_mem.named_parameters())
    assert no_mem.manipulator.in_features == 4 + 5 and full.manipulator.in_features == 4 + 4
    x, h = torch.randn(3, 4), torch.tensor([[-1.0, 1, 0, 0, 0]] * 3)
    assert torch.allclose(no_mem.manipulate(x, h), no_mem.manipulator(torch.cat([x, normalise_indicator(h)], 1)))
    # w/o ranking: lam = 1, the loss is the classification loss alone
    assert no_rank.config["lam"] == 1.0 and full.config["lam"] == 0.2 and no_rank.memory is not None
    d = _data(64)
    rows = torch.from_numpy(ManipulationMiner(d.labels, [3, 2]).sample(16, np.random.default_rng(0)))
    labels = torch.from_numpy(d.labels)
    loss, logs = no_rank.training_loss(pooled_features(d, tuple(no_rank.levels), no_rank.config["pool"]), rows, labels)
    assert "triplet" not in logs and torch.equal(loss, logs["cls"])
    _, logs = full.training_loss(pooled_features(d, tuple(full.levels), full.config["pool"]), rows, labels)
    assert "triplet" in logs
    # the variants fix their switch
    with pytest.raises(VestisError, match="fixes lam"):
        create_model("amnet_no_ranking", SCHEMA, CH, {"lam": 0.2})
    with pytest.raises(VestisError, match="fixes memory"):
        create_model("amnet_no_memory", SCHEMA, CH, {"memory": True})
    with pytest.raises(VestisError, match="unknown config"):
        create_model("amnet", SCHEMA, CH, {"lambda": 0.5})


def test_no_memory_ablation_trains():
    m = create_model("amnet_no_memory", SCHEMA, CH, {**SMALL, "epochs": 4})
    hist = m.fit(_data(300), progress=False)
    assert hist["triplet"][-1] < hist["triplet"][0]


def test_miner_rows_are_valid_manipulations():
    d = _data(500, seed=2)
    labels = d.labels
    miner = ManipulationMiner(labels, [3, 2], p_identity=0.2, p_two=0.3)
    rows = miner.sample(2000, np.random.default_rng(1))
    ref, pos, neg, new = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3:]
    n_values = np.array([3, 2])
    manipulated = new >= 0
    target = np.where(manipulated, new, labels[ref])
    assert (labels[pos] == target).all()                                   # pos has exactly the target vector
    assert ((labels[neg] != target).any(1)).all()                          # neg does not
    cur = labels[ref]
    assert ((cur < n_values) & (new < n_values) & (new != cur))[manipulated].all()  # known -> other known value
    k = manipulated.sum(1)
    assert set(np.unique(k)) == {0, 1, 2}
    assert 0.1 < (k == 0).mean() < 0.3 and 0.2 < (k == 2).mean() < 0.4
    assert (pos[k == 0] != ref[k == 0]).all()                              # identity: another item, same vector
    # single-attribute draws are balanced over attributes
    one = manipulated[k == 1].argmax(1)
    assert abs((one == 0).mean() - 0.5) < 0.08
    # batches for fit_loop
    bs = list(miner.batches(100, 32, np.random.default_rng(0)))
    assert len(bs) == 3 and all(b.shape == (32, 5) for b in bs)


# --- the indicator forms (issue 14) -------------------------------------------------------------------
def test_binary_indicator_reads_the_desired_values_known_answers():
    """The paper's h: 1 at the desired values only; h' = h / sum h; one manipulation reads t = M(new)."""
    m = create_model("amnet", SCHEMA, CH, {"hidden": 8, "dim": 4, "indicator": "binary"})
    current = torch.tensor([[0, 0], [0, 2], [1, 1]])
    new = torch.tensor([[1, 1], [2, -1], [-1, -1]])  # blue+long, green, nothing
    h = m.indicator(current, new)
    assert h.tolist() == [[0, 1, 0, 0, 1], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert torch.equal(m.indicator(None, new), h)  # the current value plays no part
    hn = normalise_indicator(h, "l1")
    assert hn.tolist() == [[0, 0.5, 0, 0, 0.5], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    with torch.no_grad():
        m.memory.memory.copy_(torch.arange(20.0).reshape(5, 4))
    M = m.memory.memory
    t = m.memory(hn)
    assert torch.allclose(t[0], (M[1] + M[4]) / 2) and torch.equal(t[1], M[2]) and torch.equal(t[2], torch.zeros(4))
    # init_identity under "binary": one manipulation starts as r' = r + M(new), under every norm
    for norm in NORMS:
        mb = create_model("amnet", SCHEMA, CH, {"hidden": 8, "dim": 4, "indicator": "binary", "indicator_norm": norm})
        with torch.no_grad():
            mb.memory.memory.normal_()
        r = torch.randn(2, 4)
        hb = mb.indicator(None, torch.tensor([[2, -1]] * 2))
        assert torch.allclose(mb.manipulate(r, hb), r + mb.memory.memory[2], atol=1e-5), norm


def test_signed_indicator_with_probabilities_known_answers():
    """current = "probabilities": -p(v) at every known value of a manipulated attribute, +1 at the new value;
    l1-normalised by sum |h| = 2 (1 - p(new)) for one manipulation."""
    m = create_model("amnet", SCHEMA, CH, {"hidden": 8, "dim": 4, "indicator": "signed", "current": "probabilities"})
    p = torch.tensor([[0.5, 0.3, 0.2, 0.9, 0.1],
                      [0.2, 0.2, 0.6, 0.4, 0.6]])
    new = torch.tensor([[1, -1], [2, 0]])  # -> blue ; -> green and short
    h = m.indicator(p, new)
    assert torch.allclose(h, torch.tensor([[-0.5, 0.7, -0.2, 0.0, 0.0],
                                           [-0.2, -0.2, 0.4, 0.6, -0.6]]))
    hn = normalise_indicator(h, "l1")
    assert torch.allclose(hn[0], h[0] / 1.4) and torch.allclose(hn[1], h[1] / 2.0)
    # a one-hot distribution is the integer-code form
    onehot = torch.tensor([[1.0, 0, 0, 1, 0]])
    assert torch.equal(m.indicator(onehot, torch.tensor([[2, 1]])), m.indicator(torch.tensor([[0, 0]]), torch.tensor([[2, 1]])))
    # the model's distribution: softmax over each attribute's known values, rows summing to 1 per attribute
    r = torch.randn(3, 4)
    d = m.current_distribution(r)
    assert d.shape == (3, 5) and torch.allclose(d[:, :3].sum(1), torch.ones(3)) and torch.allclose(d[:, 3:].sum(1), torch.ones(3))
    lg = m.classify(r)
    assert torch.allclose(d[:, :3], torch.softmax(lg[0][:, :3], -1))


def _same_weights(m, **config):
    other = create_model("amnet", SCHEMA, CH, {**SMALL, **PAPER, **config}).eval()
    other.load_state_dict(m.state_dict())
    return other


def test_signed_argmax_cancels_when_the_classifier_already_predicts_the_requested_value(trained):
    """The old default ("signed", "argmax"): asking for the value the classifier already predicts gives h = 0,
    the very query of no manipulation. "binary" (the default now) reads M(new) there; "probabilities" leaves
    1 - p(new)."""
    m, _ = trained
    m = _same_weights(m, indicator="signed", current="argmax")
    x = _t(_data(20, seed=6))
    r = m.represent(x)
    pred = m.current_values(r)
    asked = [{"colour": SCHEMA.values("colour")[int(c)]} for c in pred[:, 0]]
    new = m.new_codes(asked)
    assert torch.equal(m.query_indicator(r, new), torch.zeros(20, 5))  # the cancellation
    assert torch.equal(m.embed_query(x, asked), m.embed_query(x))
    binary = _same_weights(m, indicator="binary")
    hb = binary.query_indicator(r, new)
    assert torch.equal(hb, binary.indicator(None, new)) and (hb.sum(1) == 1).all() and (hb >= 0).all()
    expected = binary.manipulator(torch.cat([r, binary.memory.memory[new[:, 0]]], 1))  # t = M(new)
    assert torch.allclose(binary.embed_query(x, asked), expected, atol=1e-5)
    assert not torch.allclose(binary.embed_query(x, asked), binary.embed_query(x), atol=1e-3)
    probs = _same_weights(m, indicator="signed", current="probabilities")
    hp = probs.query_indicator(r, new)
    p_new = probs.current_distribution(r)[torch.arange(20), new[:, 0]]
    assert torch.allclose(hp[torch.arange(20), new[:, 0]], 1 - p_new, atol=1e-6)
    assert torch.allclose(hp.sum(1), torch.zeros(20), atol=1e-5)  # +1 and a distribution summing to 1


def test_indicator_options_are_checked():
    for key in ("indicator", "current", "cls_reduction"):
        with pytest.raises(VestisError, match=key):
            create_model("amnet", SCHEMA, CH, {key: "nope"})


def test_cls_reduction_sum_is_the_number_of_attributes_times_the_mean():
    """Eq. 4 sums the attributes' classification losses ("sum"); the default averages them ("mean")."""
    d = _data(64)
    x = None
    rows = torch.from_numpy(ManipulationMiner(d.labels, [3, 2]).sample(32, np.random.default_rng(0)))
    labels = torch.from_numpy(d.labels)
    got = {}
    for red in ("mean", "sum"):
        torch.manual_seed(0)
        m = create_model("amnet", SCHEMA, CH, {"hidden": 8, "dim": 4, "cls_reduction": red}).eval()
        x = pooled_features(d, tuple(m.levels), m.config["pool"]) if x is None else x
        _, logs = m.training_loss(x, rows, labels)
        got[red] = logs
    assert torch.allclose(got["sum"]["cls"], 2 * got["mean"]["cls"], rtol=1e-6)  # A = 2 attributes
    assert torch.equal(got["sum"]["triplet"], got["mean"]["triplet"])
