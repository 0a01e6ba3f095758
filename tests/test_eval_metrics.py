"""Known-answer tests for vestis.eval.metrics: every expected number is worked out by hand in a comment."""

import math

import pytest

from vestis.eval import metrics as M
from vestis.eval.errors import QueryInRankingError, RankingTooShortError

F, T = False, True


# --- Hit@k / Top-k accuracy (protocol 1) ------------------------------------------------------------
def test_hit_at_k_target_at_rank_k_and_k_plus_1():
    at5 = [F, F, F, F, T]          # the target is the 5th ranked item
    assert M.first_hit_rank(at5) == 5
    assert M.hit_at_k(at5, 5) == 1  # rank 5 is inside the top 5
    assert M.hit_at_k(at5, 4) == 0  # ... and outside the top 4 (target at rank k + 1)
    assert M.first_hit_rank([F, F]) is None
    with pytest.raises(ValueError):
        M.hit_at_k(at5, 0)


def test_top_k_accuracy_is_mean_hit():
    # first hits at ranks 5, 6, none, 1
    lists = [[F, F, F, F, T], [F, F, F, F, F, T], [F] * 10, [T, T]]
    acc = M.top_k_accuracy(lists, ks=(1, 5, 10))
    # k=1: only the last query -> 1/4; k=5: rank 5 and rank 1 -> 2/4; k=10: ranks 5, 6, 1 -> 3/4
    assert acc == {1: 0.25, 5: 0.5, 10: 0.75}
    assert M.TOP_K == (1, 5, 10, 20, 30, 40, 50)


def test_exact_vector_match_with_unspecified():
    A = ["colour", "pattern"]
    target = M.attribute_vector({"colour": "red"}, A)  # pattern missing -> "unspecified"
    assert target == ("red", "unspecified")
    assert M.attribute_vector({"colour": "red"}, A) == target            # also unspecified: a match
    assert M.attribute_vector({"colour": "red", "pattern": "solid"}, A) != target
    # rel: 1 of 2 attributes equal
    assert M.relevance(("red", "solid"), target) == 0.5


# --- NDCG (protocol 1) ---------------------------------------------------------------------------------
def test_ndcg_uses_this_gallerys_ideal_ranking():
    # A has 2 attributes; target (red, long). Gallery: g1 (red, long) rel 1, g2 (red, short) rel .5,
    # g3 (blue, long) rel .5, g4 (blue, short) rel 0. Ranking g4, g2, g1, g3 -> rels 0, .5, 1, .5
    ranked = [0.0, 0.5, 1.0, 0.5]
    gallery = [1.0, 0.5, 0.5, 0.0]
    # gain(.5) = 2^.5 - 1 = 0.414214; log2(3) = 1.584963, log2(4) = 2, log2(5) = 2.321928
    # DCG@4  = 0/1 + 0.414214/1.584963 + 1/2 + 0.414214/2.321928 = 0.261340 + 0.5 + 0.178393 = 0.939732
    assert M.dcg_at_k(ranked, 4) == pytest.approx(0.939732, abs=2e-6)
    # IDCG@4 = DCG of the gallery sorted (1, .5, .5, 0) = 1 + 0.261340 + 0.414214/2 + 0 = 1.468446
    assert M.idcg_at_k(gallery, 4) == pytest.approx(1.468446, abs=2e-6)
    # NDCG@4 = 0.939732 / 1.468446 = 0.639950
    assert M.ndcg_at_k(ranked, gallery, 4) == pytest.approx(0.639950, abs=2e-6)
    # the all-ones IDCG@4 = 1 + 1/1.584963 + 1/2 + 1/2.321928 = 2.561606 would give 0.366853 instead
    all_ones = M.idcg_at_k([1.0] * 4, 4)
    assert all_ones == pytest.approx(2.561606, abs=2e-6)
    assert M.ndcg_at_k(ranked, gallery, 4) != pytest.approx(0.939732 / all_ones, abs=1e-3)
    # NDCG@2 = (0 + 0.261340) / (1 + 0.261340) = 0.207192
    assert M.ndcg_at_k(ranked, gallery, 2) == pytest.approx(0.207192, abs=2e-6)
    # a perfect ranking of this gallery scores exactly 1
    assert M.ndcg_at_k([1.0, 0.5, 0.5, 0.0], gallery, 4) == pytest.approx(1.0)
    # k beyond the gallery: DCG and IDCG both stop at the 4 items -> same as @4
    assert M.ndcg_at_k(ranked, gallery, 10) == pytest.approx(0.639950, abs=2e-6)


def test_ndcg_zero_ideal_is_zero():
    assert M.ndcg_at_k([0.0, 0.0], [0.0, 0.0, 0.0], 2) == 0.0


# --- AP / MAP (protocol 2) ---------------------------------------------------------------------------
def test_average_precision_known_answers():
    # relevant at ranks 1, 3, 4 of 5: (1/1 + 2/3 + 3/4) / 3 = (12 + 8 + 9) / 36 = 29/36 = 0.805556
    assert M.average_precision([T, F, T, T, F]) == pytest.approx(29 / 36)
    # swapping a relevant and an irrelevant item changes it: ranks 1, 2, 4 -> (1 + 1 + 3/4) / 3 = 11/12
    assert M.average_precision([T, T, F, T, F]) == pytest.approx(11 / 12)
    # 4 relevant candidates but only 3 ranked: the missing one adds precision 0 -> (29/12) / 4 = 29/48
    assert M.average_precision([T, F, T, T, F], n_relevant=4) == pytest.approx(29 / 48)
    # MAP = mean of 29/36 and 11/12 = (29 + 33) / 72 = 31/36
    assert M.mean_average_precision([[T, F, T, T, F], [T, T, F, T, F]]) == pytest.approx(31 / 36)
    assert M.average_precision([F, F], n_relevant=1) == 0.0
    with pytest.raises(ValueError, match="undefined"):
        M.average_precision([F, F])
    with pytest.raises(ValueError):
        M.average_precision([T, T], n_relevant=1)


def test_average_precision_ties_in_relevance():
    # relevance is binary, so equally relevant candidates are common: the order of the list decides.
    # every candidate relevant: precision 1 at every rank -> AP 1
    assert M.average_precision([T, T, T]) == 1.0
    # two relevant at the end of 4: (1/3 + 2/4) / 2 = 5/12
    assert M.average_precision([F, F, T, T]) == pytest.approx(5 / 12)


# --- triplets (protocol 2) --------------------------------------------------------------------------
def test_triplet_accuracy_ties_count_as_wrong():
    # 0.9 > 0.1 right; 0.5 = 0.5 tie -> wrong; 0.3 < 0.4 wrong; 0.7 > 0.2 right -> 2/4
    assert M.triplet_accuracy([0.9, 0.5, 0.3, 0.7], [0.1, 0.5, 0.4, 0.2]) == 0.5
    assert M.triplet_accuracy([1.0, 1.0], [1.0, 1.0]) == 0.0  # all ties: 0, not 0.5
    with pytest.raises(ValueError, match="finite"):
        M.triplet_accuracy([math.nan], [0.0])
    with pytest.raises(ValueError):
        M.triplet_accuracy([1.0, 2.0], [0.0])


# --- Recall@k (protocol 3) -----------------------------------------------------------------------------
def test_recall_at_k_is_a_hit_rate():
    # q1: same-instance images at ranks 2 and 3; q2: none; q3: rank 1
    lists = [[F, T, T], [F, F, F], [T]]
    r = M.recall_at_k(lists, ks=(1, 2, 3))
    # k=1: q3 -> 1/3; k=2: q1, q3 -> 2/3; k=3: still 2/3 (q1's second view does not count twice;
    # "found / relevant" would give q1 2/2 and q2 0/? instead)
    assert r[1] == pytest.approx(1 / 3)
    assert r[2] == pytest.approx(2 / 3)
    assert r[3] == pytest.approx(2 / 3)


# --- classification (protocol 3) ---------------------------------------------------------------------------
def test_classification_top_k_ties_rank_against_the_true_class():
    scores = [
        [0.1, 0.5, 0.4, 0.0, 0.0],  # true 2: one higher (0.5)          -> rank 2
        [0.3, 0.3, 0.4, 0.3, 0.3],  # true 0: one higher + three equal  -> rank 5
        [0.9, 0.1, 0.1, 0.1, 0.1],  # true 0: none higher               -> rank 1
        [0.2, 0.1, 0.3, 0.4, 0.5],  # true 0: three higher              -> rank 4
    ]
    acc = M.classification_top_k_accuracy(scores, [2, 0, 0, 0])
    # top-1: rank 1 only -> 1/4; top-3: ranks 1, 2 -> 2/4; top-5: all -> 4/4
    assert acc == {1: 0.25, 3: 0.5, 5: 1.0}
    with pytest.raises(ValueError):
        M.classification_top_k_accuracy(scores, [2, 0, 0, 5])


def test_coarse_levels_from_a_fine_classifier():
    # fine classes 0, 1, 2 -> coarse: 0 -> A always; 1 -> A twice, B twice; 2 -> B; fine class 3 never seen
    cond = M.coarse_conditional([0, 0, 1, 1, 1, 1, 2], [0, 0, 0, 0, 1, 1, 1], n_fine=4, n_coarse=2)
    assert cond.tolist() == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.5, 0.5]]
    scores = [[0.6, 0.1, 0.3, 0.0],   # P(A) = 0.6 + 0.05 = 0.65, P(B) = 0.05 + 0.3 = 0.35
              [0.1, 0.2, 0.3, 0.4]]   # P(A) = 0.1 + 0.1 + 0.2 = 0.4, P(B) = 0.1 + 0.3 + 0.2 = 0.6
    coarse = M.coarse_scores(scores, cond)
    assert coarse.round(6).tolist() == [[0.65, 0.35], [0.4, 0.6]]
    # true coarse A for both: the first ranks it 1st, the second 2nd -> top-1 1/2, top-2 1
    assert M.classification_top_k_accuracy(coarse, [0, 0], ks=(1, 2)) == {1: 0.5, 2: 1.0}
    with pytest.raises(ValueError):
        M.coarse_scores(scores, cond[:3])
    with pytest.raises(ValueError):
        M.coarse_conditional([0, 4], [0, 0], n_fine=4, n_coarse=2)


# --- the gallery-size curve's restricted ranking --------------------------------------------------------------
def test_filtered_hit_at_k():
    hits = [F, T, F, F, T]
    keep = [T, F, T, T, T]  # the first target (rank 2) is outside the subset
    # restricted list: ranks 1, 3, 4, 5 -> hits F, F, F, T: first hit at restricted rank 4
    assert M.filtered_hit_at_k(hits, keep, subset_size=4, k=2) == 0
    assert M.filtered_hit_at_k(hits, keep, subset_size=4, k=4) == 1
    # 1 ranked id in a 10-item subset cannot decide Top-2: the ranking is too short
    with pytest.raises(RankingTooShortError, match="--k"):
        M.filtered_hit_at_k([F, F], [T, F], subset_size=10, k=2, query_id="q9")
    # ... but it can when the subset has only that one item
    assert M.filtered_hit_at_k([F, F], [T, F], subset_size=1, k=2) == 0


# --- the query never sits in the gallery it searches -------------------------------------------------
def test_query_in_its_own_ranking_is_an_error():
    with pytest.raises(QueryInRankingError, match="'q7'.*'x1'"):
        M.check_query_not_ranked("q7", "x1", ["g1", "x1", "g2"])
    M.check_query_not_ranked("q7", "x1", ["g1", "g2"])
    M.check_query_not_ranked("q7", None, ["x1"])  # an image query has no item to find
    with pytest.raises(QueryInRankingError, match="q3"):
        M.relevance_flags(["x", "g"], {"g"}, query_id="q3", query_item_id="x")
    assert M.relevance_flags(["a", "g", "b"], {"g"}, query_id="q3", query_item_id="x") == [F, T, F]


def test_asked_at_k_known_answers():
    # one manipulated attribute: 3 of the top 10 have the requested value
    assert M.asked_at_k([[True, False, True, False, False, False, True, False, False, False, True]]) == pytest.approx(0.3)
    # two manipulated attributes: the mean of 10/10 and 0/10
    assert M.asked_at_k([[True] * 12, [False] * 12], k=10) == pytest.approx(0.5)
    # a short list: missing places are misses
    assert M.asked_at_k([[True, True]], k=10) == pytest.approx(0.2)
    assert M.asked_at_k([[True, True, False]], k=2) == 1.0
    with pytest.raises(ValueError):
        M.asked_at_k([], k=10)
    with pytest.raises(ValueError):
        M.asked_at_k([[True]], k=0)
