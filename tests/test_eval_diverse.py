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


# --- `evaluate` / `vestis eval` on protocol-4 rankings files (PROTOCOLS.md section 4) ---------------------------
def _gallery():
    from vestis.catalog import AttributeSchema, Catalog, Item

    schema = AttributeSchema({"cat": ["top", "bottom", "shoes", "bag"], "colour": ["red", "blue"]})
    spec = {"t1": ("top", "red"), "t2": ("top", "blue"), "t3": ("top", "red"), "b1": ("bottom", "blue"),
            "b2": ("bottom", "blue"), "b3": ("bottom", "red"), "s1": ("shoes", "red"), "s2": ("shoes", "blue"),
            "g1": ("bag", "red"), "g2": ("bag", "blue"), "g3": ("bag", "red"), "s3": ("shoes", "red"),
            "x9": ("top", "red")}
    items = [Item(id=i, image=None, attributes={"cat": c, "colour": col}, split="gallery") for i, (c, col) in spec.items()]
    items.append(Item(id="q", image=None, attributes={"cat": "top"}, split="query"))
    return Catalog(items, schema, name="tiny-diverse")


def _query(qid="d1"):
    # a photo of a red top (box 0..10) and a blue bottom (box 10..20): N = 10
    return {"query_id": qid, "image": "/photos/outfit.jpg", "attribute": "cat", "protocol": "diverse",
            "target": {"cat": ["top", "bottom"], "colour": ["red", "blue"]},
            "boxes": [[0, 0, 10, 10], [0, 10, 10, 20]]}


def test_protocol4_scores_grouped_and_flat_rows_by_hand():
    from vestis.eval import evaluate

    cat = _gallery()
    grouped = {"query_id": "d1", "ranked": ["t1", "b1", "g1", "t2", "b3", "g2", "t3", "s1"],
               "groups": [{"label": "top", "box": [0, 0, 10, 5], "ranked": ["t1", "t2", "t3"]},
                          {"label": "bottom", "box": [0, 10, 10, 20], "ranked": ["b1", "b3", "s1"]},
                          {"label": "bag", "box": None, "ranked": ["g1", "g2"]}]}
    rep = evaluate([_query()], [grouped], cat)["diverse"]
    assert rep["version"] == "vestis-diverse/1" and rep["n_scored"] == 1 and rep["n_grouped"] == 1
    # the first N = 10 of ranked hold a top and a bottom: coverage 1; categories top, bottom, bag, shoes
    assert rep["coverage"] == 1.0 and rep["distinct_categories"] == 4 and rep["list_length"] == 8
    assert rep["ild"] is None  # no vectors given
    # purity@5: top group 3/3, bottom group 2/3 (b1, b3 bottoms, s1 shoes), bag group 2/2
    assert rep["purity@5"] == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert rep["groups_per_query"] == 3 and rep["garments_per_query"] == 2
    assert rep["false_group_share"] == pytest.approx(1 / 3)  # the bag group names no garment of the photo
    # part relevance: category - top 3/3, bottom 2/3; category + colour - top (red): t1, t3 = 2/3; bottom (blue): b1 = 1/3
    assert rep["part_relevance"]["cat"] == pytest.approx((1 + 2 / 3) / 2)
    assert rep["part_relevance"]["cat+colour"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    # group boxes against their garments: top 50 / 100 = 0.5, bottom 1.0
    assert rep["group_box_iou"] == pytest.approx(0.75)

    # a flat baseline of N = 10: the bottoms at ranks 9 and 10
    flat = {"query_id": "d1", "ranked": ["t1", "t2", "t3", "x9", "g1", "g2", "s1", "s2", "b2", "b1"]}
    rep = evaluate([_query()], [flat], cat, item_vectors=lambda ids: np.eye(len(ids)))["diverse"]
    assert rep["coverage"] == 1.0 and rep["n_grouped"] == 0 and "purity@5" not in rep
    assert rep["ild"] == pytest.approx(1.0)  # orthogonal vectors
    assert rep["distinct_categories"] == 4
    flat["ranked"] = flat["ranked"][:9]  # shorter than N
    with pytest.raises(Exception, match="N = 5 x 2"):
        evaluate([_query()], [flat], cat)


def test_protocol4_coverage_counts_only_the_first_n():
    from vestis.eval import evaluate
    from vestis.eval.errors import RankingTooShortError

    cat = _gallery()
    ten_others = ["t1", "t2", "t3", "x9", "g1", "g2", "g3", "s1", "s2", "s3"]  # no bottom
    # the bottom at rank 10 = N is covered; at rank 11 it is past N = 5 x 2
    rep = evaluate([_query()], [{"query_id": "d1", "ranked": ten_others[:9] + ["b1"]}], cat)["diverse"]
    assert rep["coverage"] == 1.0 and rep["list_length"] == 10
    rep = evaluate([_query()], [{"query_id": "d1", "ranked": ten_others + ["b1"]}], cat)["diverse"]
    assert rep["coverage"] == 0.5 and rep["list_length"] == 10
    # a flat list shorter than N is refused
    with pytest.raises(RankingTooShortError):
        evaluate([_query()], [{"query_id": "d1", "ranked": ten_others[:8] + ["b1"]}], cat)
    # a grouped list may be shorter than N: the bottom is not in it, so half the garments are covered
    grouped = {"query_id": "d1", "ranked": ten_others[:4], "groups": [{"label": "top", "box": None,
                                                                         "ranked": ten_others[:4]}]}
    assert evaluate([_query()], [grouped], cat)["diverse"]["coverage"] == 0.5


def test_protocol4_refuses_bad_rows_and_query_lines():
    from vestis.eval import evaluate
    from vestis.eval.errors import QueryFileError, RankingsError

    cat = _gallery()
    ok = ["t1", "b1", "t2", "b2", "t3", "b3", "s1", "s2", "g1", "g2"]
    with pytest.raises(RankingsError, match="not a gallery item"):
        evaluate([_query()], [{"query_id": "d1", "ranked": ok[:9] + ["q"]}], cat)
    with pytest.raises(RankingsError, match="not a gallery item"):  # a group's ids are checked too
        evaluate([_query()], [{"query_id": "d1", "ranked": ok,
                               "groups": [{"label": "top", "box": None, "ranked": ["t1", "nope"]}]}], cat)
    bad = _query()
    bad["target"]["colour"] = ["red"]  # one value for two garments
    with pytest.raises(QueryFileError, match="one value per garment"):
        evaluate([bad], [{"query_id": "d1", "ranked": ok}], cat)
    bad = _query()
    bad["boxes"] = [[0, 0, 1, 1]]
    with pytest.raises(QueryFileError, match="boxes"):
        evaluate([bad], [{"query_id": "d1", "ranked": ok}], cat)
    skipped = evaluate([_query()], [{"query_id": "d1", "skipped": "unreadable image"}], cat)
    assert skipped["skipped"] == {"unreadable image": 1} and skipped["diverse"]["n_scored"] == 0


def test_vestis_eval_rescores_diverse_rankings_written_by_vestis_search(tiny_pipeline, parts_pipeline, tmp_path):
    """queries -> search -> eval through the command line: the rankings rows carry groups, and the report's figures
    are those of the rows (coverage recomputed here from the file alone)."""
    import json

    from vestis.catalog import Catalog
    from vestis.cli import main
    from vestis.eval import read_queries, read_rankings

    root, cat, run, idx, cache = tiny_pipeline
    prun, pidx = parts_pipeline
    q, r, rep = tmp_path / "q.jsonl", tmp_path / "r.jsonl", tmp_path / "report"
    # train-split outfits: photos of several garments that are not in the gallery they search
    assert main(["queries", "--protocol", "diverse", "--catalog", str(cat), "--attribute", "category", "--split",
                 "train", "--out", str(q)]) == 0
    queries = read_queries(q)
    assert queries and all(q_["protocol"] == "diverse" and len(q_["target"]["category"]) >= 2 for q_ in queries)
    assert all(len(q_["boxes"]) == len(q_["target"]["category"]) for q_ in queries)
    assert main(["search", "--run", str(prun), "--index", str(pidx), "--queries", str(q), "--output", str(r),
                 "--k", "10", "--cache", str(cache)]) == 0
    rows = read_rankings(r)
    assert all("groups" in row for row in rows.values())
    assert main(["eval", "--queries", str(q), "--rankings", str(r), "--catalog", str(cat), "--run", str(prun),
                 "--report", str(rep), "--cache", str(cache)]) == 0
    report = json.loads((rep / "report.json").read_text())["diverse"]
    assert report["n_scored"] == len(queries) and report["ild"] is not None and 0 <= report["ild"] <= 2
    gallery = Catalog.load(cat)
    by_hand = [coverage([gallery[i].attributes.get("category") for i in rows[q_["query_id"]]["ranked"]],
                        q_["target"]["category"]) for q_ in queries]
    assert report["coverage"] == pytest.approx(np.mean(by_hand))
    assert "Diverse part-based suggestions" in (rep / "report.md").read_text()
