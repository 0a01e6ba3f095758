"""Protocol 4's metrics (PROTOCOLS.md section 4) on known answers."""

import numpy as np
import pytest

from vestis.eval.metrics import (coverage, distinct_categories, intra_list_diversity, mmr, multilabel_average_precision,
                                 part_relevance, purity_at_k, round_robin)


def test_round_robin():
    assert round_robin([["a", "b", "c"], ["b", "d"], ["e"]]) == ["a", "b", "e", "d", "c"]
    assert round_robin([["a", "b", "c"], ["b", "d"], ["e"]], 3) == ["a", "b", "e"]
    assert round_robin([]) == []


def test_coverage():
    # garments: top, trousers, shoes; N = 15 by default
    ranked = ["top"] * 14 + ["shoes"]
    assert coverage(ranked, ["top", "trousers", "shoes"]) == pytest.approx(2 / 3)
    assert coverage(ranked + ["trousers"], ["top", "trousers", "shoes"]) == pytest.approx(2 / 3)  # 16th: past N
    assert coverage(["top", "top"], ["top", "top"], n=2) == 1.0
    assert coverage(["top", "shoes"], ["top", "top"], n=2) == 0.5  # one result covers one garment
    with pytest.raises(ValueError):
        coverage(["top"], [])


def test_purity_at_5():
    assert purity_at_k(["a", "a", "b", "a", "c", "b", "b"]) == pytest.approx(3 / 5)
    assert purity_at_k(["a", "a"]) == 1.0
    assert purity_at_k([None, "a", "a", "b", None]) == pytest.approx(2 / 5)
    assert purity_at_k([]) == 0.0


def test_part_relevance():
    garment = {"category": "shirt", "colour": "red"}
    results = [{"category": "shirt", "colour": "red"}, {"category": "shirt", "colour": "blue"},
               {"category": "jeans", "colour": "red"}, {"category": "shirt", "colour": "red", "pattern": "x"}]
    assert part_relevance(results, garment, ["category"]) == pytest.approx(3 / 4)
    assert part_relevance(results, garment, ["category", "colour", "pattern"]) == pytest.approx(2 / 4)  # pattern unlabelled
    assert part_relevance([], garment, ["category"]) == 0.0
    with pytest.raises(ValueError):
        part_relevance(results, garment, ["pattern"])


def test_intra_list_diversity_and_distinct_categories():
    # three unit vectors: two equal, one orthogonal: pairwise cosines 1, 0, 0 -> mean 1/3
    assert intra_list_diversity([[1, 0], [2, 0], [0, 3]]) == pytest.approx(1 - 1 / 3)
    assert intra_list_diversity([[1, 0]]) == 0.0
    assert distinct_categories(["a", "b", "a", None, "unspecified"]) == 2


def test_mmr():
    rel = [1.0, 0.99, 0.5]
    vecs = [[1, 0], [1, 0.01], [0, 1]]  # the second is a near copy of the first
    assert mmr(rel, vecs, 3, lam=1.0) == [0, 1, 2]  # relevance only
    assert mmr(rel, vecs, 2, lam=0.5) == [0, 2]  # 0.5*0.99 - 0.5*~1 < 0.5*0.5 - 0
    assert mmr(rel, vecs, 5, lam=0.7) == [0, 1, 2]  # 0.7*0.99 - 0.3*~1 = 0.393 > 0.7*0.5 = 0.35


def test_multilabel_average_precision():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.2, 0.3]])
    targets = np.array([[1, 0], [0, 1], [1, 0]])
    # label 0: order 0 (+), 1 (-), 2 (+): AP = (1 + 2/3) / 2; label 1: order 1 (+), 2, 0: AP = 1
    # pooled: 0.9 (+), 0.8 (-), 0.7 (+), 0.3 (-), 0.2 (+), 0.1 (-): AP = (1 + 2/3 + 3/5) / 3
    got = multilabel_average_precision(scores, targets)
    assert got["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert got["AP_all"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    with pytest.raises(ValueError):
        multilabel_average_precision(scores, np.zeros((3, 2)))
