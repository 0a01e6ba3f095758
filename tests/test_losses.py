import math

import torch

from vestis.losses import batch_hard_triplet, multi_attribute_ce, soft_triplet, triplet_margin


def test_triplet_margin_known_answer():
    a, p, n = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 1.0]])
    assert math.isclose(float(triplet_margin(a, p, n, margin=0.5)), 5 - 1 + 0.5, rel_tol=1e-6)
    assert math.isclose(float(triplet_margin(a, p, n, margin=0.5, squared=True)), 25 - 1 + 0.5, rel_tol=1e-6)
    assert float(triplet_margin(a, n, p, margin=0.5)) == 0.0


def test_soft_triplet_known_answer():
    a, p, n = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    dp = math.exp(1) / (math.exp(1) + math.exp(2))
    expected = dp ** 2 + (1 - dp - 1) ** 2
    assert math.isclose(float(soft_triplet(a, p, n)), expected, rel_tol=1e-6)
    # identical positive and far negative -> loss near 0
    assert float(soft_triplet(a, a, torch.tensor([[30.0, 0.0]]))) < 1e-6


def test_batch_hard_triplet_picks_hardest():
    e = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    g = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest pos 1, hardest neg 3 -> relu(1-3+1)=0 ; anchor 1: pos 1, neg 2 -> relu(1-2+1)=0
    # anchor 2: pos 7, neg 2 -> 6 ; anchor 3: pos 7, neg 9 -> 0  -> mean 1.5
    assert math.isclose(float(batch_hard_triplet(e, g, margin=1.0)), 1.5, rel_tol=1e-6)
    assert float(batch_hard_triplet(e, torch.tensor([0, 1, 2, 3]), 1.0)) == 0.0  # no positives


def test_multi_attribute_ce_ignores_and_grads():
    logits = [torch.zeros(2, 3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]
    labels = torch.tensor([[0, -1], [2, -1]])
    loss = multi_attribute_ce(logits, labels, ignore_index=-1)
    assert math.isclose(loss.item(), math.log(3), rel_tol=1e-6)
    loss.backward()
    assert logits[0].grad is not None and logits[0].grad.abs().sum() > 0


def test_multi_attribute_ce_sum_is_the_number_of_attributes_times_the_mean():
    g = torch.Generator().manual_seed(0)
    logits = [torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, 2, generator=g)]
    labels = torch.tensor([[0, 1, 1], [2, 3, 0], [1, 0, 1], [0, 2, 0], [2, 1, 1]])
    mean = multi_attribute_ce(logits, labels)
    each = [torch.nn.functional.cross_entropy(lg, labels[:, a]) for a, lg in enumerate(logits)]
    assert math.isclose(float(mean), float(sum(each)) / 3, rel_tol=1e-6)
    assert math.isclose(float(multi_attribute_ce(logits, labels, reduction="sum")), float(sum(each)), rel_tol=1e-6)
    # an attribute without a labelled entry adds nothing to either
    labels[:, 2] = -1
    assert math.isclose(float(multi_attribute_ce(logits, labels, ignore_index=-1, reduction="sum")),
                        float(each[0] + each[1]), rel_tol=1e-6)
    assert math.isclose(float(multi_attribute_ce(logits, labels, ignore_index=-1)), float(each[0] + each[1]) / 2, rel_tol=1e-6)
