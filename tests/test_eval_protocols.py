"""protocols.evaluate on tiny hand-made catalogues, and rankings files. Expected numbers are worked out by hand."""

import json

import numpy as np
import pytest

from vestis.catalog import AttributeSchema, Catalog, Item
from vestis.eval import evaluate
from vestis.eval.errors import EvalError, QueryFileError, QueryInRankingError, RankingsError, RankingTooShortError
from vestis.eval.protocols import classification_report
from vestis.eval.queries import file_sha256, write_queries
from vestis.eval.rankings import read_rankings, rows_from_indices, write_rankings

CL = AttributeSchema({"colour": ["red", "blue", "green"], "length": ["long", "short"]})


def item(id, split, instance=None, **attrs):
    return Item(id=id, image=None, attributes=attrs, instance_id=instance, split=split)


def mq(qid, item_id, manips, target):
    return {"query_id": qid, "item_id": item_id, "manipulations": manips, "attribute": "+".join(manips),
            "target": target, "protocol": "manipulation"}


# --- protocol 1 ----------------------------------------------------------------------------------------
def test_ndcg_end_to_end_uses_the_gallery_ideal():
    cat = Catalog([item("q1", "query", colour="blue", length="long"),
                   item("g1", "gallery", colour="red", length="long"),     # rel 1 (the target)
                   item("g2", "gallery", colour="red", length="short"),    # rel .5
                   item("g3", "gallery", colour="blue", length="long"),    # rel .5
                   item("g4", "gallery", colour="blue", length="short")],  # rel 0
                  CL, name="four")
    q = mq("m1", "q1", {"colour": "red"}, {"colour": "red", "length": "long"})
    rep = evaluate([q], [{"query_id": "m1", "ranked": ["g4", "g2", "g1", "g3"]}], cat)
    all_ = rep["manipulation"]["groups"]["all"]
    # the target g1 is ranked 3rd: Top-1 0, Top-5 and beyond 1
    assert all_["top_k"]["1"] == 0.0 and all_["top_k"]["5"] == 1.0 and all_["top_k"]["50"] == 1.0
    # rels 0, .5, 1, .5 vs the ideal 1, .5, .5, 0: DCG 0.939732 / IDCG 1.468446 = 0.639950 at every k >= 4
    # (an all-ones IDCG@10 would be 4.543559 and give 0.206827)
    for k in ("10", "20", "30", "50"):
        assert all_["ndcg"][k] == pytest.approx(0.639950, abs=2e-6)
    assert rep["manipulation"]["gallery_size"] == 4
    # asked@10: g2 and g1 are red (the requested colour) of the 4 ranked; the 6 empty places are misses
    assert all_["asked_at_10"] == pytest.approx(0.2)


def _sixty():
    """60 gallery items: gt (red, long) is the target of q1 / q2, gu (red, unspecified) the target of q3."""
    items = [item("q1", "query", colour="blue", length="long"), item("q2", "query", colour="blue", length="long"),
             item("q3", "query", colour="blue"),
             item("gt", "gallery", colour="red", length="long"), item("gu", "gallery", colour="red")]
    items += [item(f"f{i:02d}", "gallery", colour="blue", length="short") for i in range(58)]
    queries = [mq("m1", "q1", {"colour": "red"}, {"colour": "red", "length": "long"}),
               mq("m2", "q2", {"colour": "red"}, {"colour": "red", "length": "long"}),
               mq("m3", "q3", {"colour": "red"}, {"colour": "red", "length": "unspecified"})]
    return Catalog(items, CL, name="sixty"), queries


def _ranking(first: list[str], n=60):
    fill = [f"f{i:02d}" for i in range(58)]
    rest = [g for g in ["gt", "gu"] + fill if g not in first]
    return (first + rest)[:n]


def test_top_k_boundaries_and_unspecified_matching():
    cat, queries = _sixty()
    fill = [f"f{i:02d}" for i in range(58)]
    rows = [
        # m1: gu (red, unspecified) first is NOT a hit for (red, long); gt at rank 5
        {"query_id": "m1", "ranked": _ranking(["gu"] + fill[:3] + ["gt"])},
        # m2: gt at rank 6 (k + 1 for k = 5)
        {"query_id": "m2", "ranked": _ranking(fill[:5] + ["gt"])},
        # m3: target (red, unspecified): gt ranked 1st is not a hit, gu 2nd is
        {"query_id": "m3", "ranked": _ranking(["gt", "gu"])},
    ]
    rep = evaluate(queries, rows, cat, gallery_fractions=())
    top = rep["manipulation"]["groups"]["all"]["top_k"]
    # first hits at ranks 5, 6, 2 -> Top-1 0/3, Top-5 2/3 (ranks 5 and 2), Top-10 3/3
    assert top["1"] == 0.0
    assert top["5"] == pytest.approx(2 / 3)
    assert top["10"] == 1.0
    pa = rep["manipulation"]["groups"]["all"]["per_attribute"]
    assert pa == {"colour": {"n": 3, "top_30": 1.0}}
    assert set(rep["manipulation"]["groups"]) == {"all", "single"}


def test_query_never_in_its_gallery():
    cat, queries = _sixty()
    ranked = _ranking(["gt"])
    bad = ranked[:10] + ["q1"] + ranked[10:]
    with pytest.raises(QueryInRankingError, match="'m1'"):
        evaluate(queries[:1], [{"query_id": "m1", "ranked": bad}], cat, gallery_fractions=())
    # a query item inside the gallery searched is refused before any ranking is read
    gallery = cat.split("gallery").ids() + ["q1"]
    with pytest.raises(EvalError, match="in the gallery it searches"):
        evaluate(queries[:1], [{"query_id": "m1", "ranked": ranked}], cat, gallery_ids=gallery, gallery_fractions=())
    # ranked ids must be gallery items
    with pytest.raises(RankingsError, match="not a gallery item"):
        evaluate(queries[:1], [{"query_id": "m1", "ranked": ["q2"] + ranked[:-1]}], cat, gallery_fractions=())


def test_rankings_must_be_long_enough_and_complete():
    cat, queries = _sixty()
    with pytest.raises(RankingTooShortError, match="needs at least 50"):
        evaluate(queries[:1], [{"query_id": "m1", "ranked": _ranking(["gt"], 49)}], cat, gallery_fractions=())
    rep = evaluate(queries[:1], [{"query_id": "m1", "ranked": _ranking(["gt"], 50)}], cat, gallery_fractions=())
    assert rep["manipulation"]["groups"]["all"]["top_k"]["1"] == 1.0
    with pytest.raises(RankingsError, match="no line for 1 of 2"):
        evaluate(queries[:2], [{"query_id": "m1", "ranked": _ranking(["gt"])}], cat, gallery_fractions=())
    with pytest.raises(RankingsError, match="not in the query file"):
        evaluate(queries[:1], [{"query_id": "m1", "ranked": _ranking(["gt"])},
                               {"query_id": "zz", "ranked": _ranking(["gt"])}], cat, gallery_fractions=())
    # a query the run could not answer is counted, not scored
    rep = evaluate(queries[:2], [{"query_id": "m1", "ranked": _ranking(["gt"])},
                                 {"query_id": "m2", "skipped": "image unreadable"}], cat, gallery_fractions=())
    assert rep["skipped"] == {"image unreadable": 1}
    assert rep["n_queries"] == 2 and rep["n_scored"] == 1


def test_query_file_from_another_catalogue_is_caught():
    cat, queries = _sixty()
    q = dict(queries[0], target={"colour": "red", "length": "short"})  # q1 is long: target disagrees
    with pytest.raises(QueryFileError, match="another catalogue"):
        evaluate([q], [{"query_id": "m1", "ranked": _ranking(["gt"])}], cat, gallery_fractions=())
    q = dict(queries[0], manipulations={"colour": "blue"}, target={"colour": "blue", "length": "long"})
    with pytest.raises(QueryFileError, match="invalid manipulation"):
        evaluate([q], [{"query_id": "m1", "ranked": _ranking(["gt"])}], cat, gallery_fractions=())


def test_gallery_size_curve_by_hand():
    # gallery g0..g9 in catalogue order; targets of (red, long): g1 and g7
    labels = {0: ("blue", "long"), 1: ("red", "long"), 2: ("blue", "long"), 3: ("blue", "short"),
              4: ("red", "short"), 5: ("red", "short"), 6: ("blue", "short"), 7: ("red", "long"),
              8: ("blue", "short"), 9: ("green", "long")}
    items = [item(f"g{i}", "gallery", colour=c, length=l) for i, (c, l) in labels.items()]
    items += [item(f"q{i}", "query", colour="blue", length="long") for i in range(3)]
    cat = Catalog(items, CL, name="ten")
    target = {"colour": "red", "length": "long"}
    queries = [mq(f"m{i}", f"q{i}", {"colour": "red"}, target) for i in range(3)]
    tail = ["g6", "g3", "g0", "g5", "g8", "g9"]
    rows = [{"query_id": "m0", "ranked": ["g4", "g7", "g2", "g1"] + tail},
            {"query_id": "m1", "ranked": ["g1", "g4", "g2", "g7"] + tail},
            {"query_id": "m2", "ranked": ["g7", "g4", "g1", "g2"] + tail}]
    # the documented subset rule: one permutation of the gallery from default_rng(seed=0), the subset for
    # fraction f is its first round(f * 10) items. For seed 0 the permutation is 4 6 2 7 3 5 9 0 8 1:
    assert np.random.default_rng(0).permutation(10).tolist() == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]
    # 10 % = {g4}; 25 % = {g4, g6, g2}; 50 % = {g4, g6, g2, g7, g3}; 100 % = all.
    # A subset without a target keeps the target that comes first in the permutation: g7 (g1 comes last).
    # Top-1 on the restricted rankings:
    #   m0: 10 % [g4, g7] 0 | 25 % [g4, g7, g2, g6] 0 | 50 % [g4, g7, ...] 0 | 100 % [g4, ...] 0
    #   m1: 10 % [g4, g7] 0 | 25 % [g4, g2, g7, g6] 0 | 50 % [g4, g2, g7, ...] 0 | 100 % [g1, ...] 1
    #   m2: [g7, ...] first everywhere -> 1 1 1 1
    # -> 1/3, 1/3, 1/3, 2/3 (keeping the best-ranked target instead would give m1 a hit at 10 %)
    rep = evaluate(queries, rows, cat, curve_k=1)
    curve = rep["manipulation"]["groups"]["all"]["gallery_size_curve"]
    assert curve["k"] == 1 and curve["seed"] == 0
    assert [p["gallery_size"] for p in curve["points"]] == [1, 3, 5, 10]
    assert [p["top_k"] for p in curve["points"]] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3])
    # Top-2: m0 [g4, g7] hits at every size; m1 hits at 10 % ([g4, g7]) and 100 % ([g1, g4]) only
    # ([g4, g2] at 25 % and 50 %); m2 always -> 3/3, 2/3, 2/3, 3/3
    rep = evaluate(queries, rows, cat, curve_k=2)
    pts = rep["manipulation"]["groups"]["all"]["gallery_size_curve"]["points"]
    assert [p["top_k"] for p in pts] == pytest.approx([1, 2 / 3, 2 / 3, 1])
    # at 100 % the curve is plain Top-k
    rep = evaluate(queries, rows, cat)
    g = rep["manipulation"]["groups"]["all"]
    assert g["gallery_size_curve"]["points"][-1]["top_k"] == g["top_k"]["20"]


def test_gallery_size_curve_needs_long_rankings():
    cat, queries = _sixty()
    gallery = cat.split("gallery").ids()
    position = np.empty(60, dtype=int)
    position[np.random.default_rng(0).permutation(60)] = np.arange(60)
    # rank the 50 items that come last in the permutation: none of the 10 % subset (its first 6) is ranked
    ranked = [gallery[i] for i in np.argsort(-position)[:50]]
    with pytest.raises(RankingTooShortError, match="--k"):
        evaluate(queries[:1], [{"query_id": "m1", "ranked": ranked}], cat, gallery_fractions=(0.1,))
    rep = evaluate(queries[:1], [{"query_id": "m1", "ranked": ranked}], cat, gallery_fractions=())
    assert "gallery_size_curve" not in rep["manipulation"]["groups"]["all"]  # () leaves the curve out


def test_single_and_two_attribute_groups():
    cat = Catalog([item("q1", "query", colour="blue", length="long"),
                   item("g1", "gallery", colour="red", length="long"),
                   item("g2", "gallery", colour="red", length="short")], CL)
    queries = [mq("m1", "q1", {"colour": "red"}, {"colour": "red", "length": "long"}),
               mq("m2", "q1", {"colour": "red", "length": "short"}, {"colour": "red", "length": "short"})]
    rows = [{"query_id": "m1", "ranked": ["g2", "g1"]}, {"query_id": "m2", "ranked": ["g2", "g1"]}]
    groups = evaluate(queries, rows, cat)["manipulation"]["groups"]
    # m1 hits at rank 2, m2 at rank 1
    assert groups["all"]["top_k"]["1"] == 0.5
    assert groups["single"]["top_k"]["1"] == 0.0 and groups["single"]["n"] == 1
    assert groups["two"]["top_k"]["1"] == 1.0
    assert list(groups["two"]["per_attribute"]) == ["colour+length"]


# --- protocol 2 ----------------------------------------------------------------------------------------
SC = AttributeSchema({"colour": ["red", "blue", "green"], "size": ["s", "m"]})


def _map_catalog():
    return Catalog([
        item("a1", "gallery", colour="red", size="s"), item("a2", "gallery", colour="blue", size="s"),
        item("a3", "gallery", colour="red", size="m"), item("a4", "gallery", colour="green", size="m"),
        item("a5", "gallery", colour="red"), item("a6", "gallery", size="s"),
        item("qa", "query", colour="red", size="m"), item("qb", "query", colour="blue"), item("qc", "query", size="s"),
    ], SC, name="map")


def aq(qid, item_id, a, v):
    return {"query_id": qid, "item_id": item_id, "manipulations": {}, "attribute": a, "target": {a: v},
            "protocol": "attribute"}


def test_map_by_hand():
    cat = _map_catalog()
    queries = [aq("a1q", "qa", "colour", "red"), aq("a2q", "qb", "colour", "blue"), aq("a3q", "qc", "size", "s")]
    rows = [
        # colour candidates a1..a5 (a6 has no colour: dropped). Order a2 a1 a3 a4 a5 -> relevant at 2, 3, 5 of R=3:
        # (1/2 + 2/3 + 3/5) / 3 = (15 + 20 + 18) / 90 = 53/90
        {"query_id": "a1q", "ranked": ["a2", "a1", "a6", "a3", "a4", "a5"]},
        # blue: only a2, at rank 2 -> 1/2
        {"query_id": "a2q", "ranked": ["a1", "a2", "a3", "a4", "a5"]},
        # size candidates a1 a2 a3 a4 a6 (a5 dropped). Order a6 a3 a1 a2 a4 -> relevant at 1, 3, 4 of R=3:
        # (1 + 2/3 + 3/4) / 3 = 29/36
        {"query_id": "a3q", "ranked": ["a6", "a3", "a5", "a1", "a2", "a4"]},
    ]
    rep = evaluate(queries, rows, cat)
    sec = rep["attribute"]
    assert rep["protocol"] == "vestis-attribute/1"
    assert sec["per_attribute"]["colour"]["map"] == pytest.approx((53 / 90 + 1 / 2) / 2)  # 49/90
    assert sec["per_attribute"]["size"]["map"] == pytest.approx(29 / 36)
    assert sec["mean"] == pytest.approx((49 / 90 + 29 / 36) / 2)                          # 0.675
    assert sec["mean_over_queries"] == pytest.approx((53 / 90 + 1 / 2 + 29 / 36) / 3)     # 341/540
    assert sec["n_candidates"] == {"colour": 5, "size": 5}
    # MAP needs every candidate ranked
    with pytest.raises(RankingTooShortError, match="every candidate"):
        evaluate(queries[:1], [{"query_id": "a1q", "ranked": ["a2", "a1", "a3", "a4"]}], cat)


def test_triplet_accuracy_end_to_end():
    cat = _map_catalog()

    def tq(qid, a, x, p, n):
        return {"query_id": qid, "item_id": x, "positive_id": p, "negative_id": n, "manipulations": {},
                "attribute": a, "target": {a: cat[x].attributes[a]}, "protocol": "triplet"}

    queries = [tq("t1", "colour", "a1", "a3", "a2"), tq("t2", "colour", "a3", "a5", "a4"), tq("t3", "size", "a1", "a2", "a3")]
    rows = [{"query_id": "t1", "scores": [0.9, 0.1]},   # right
            {"query_id": "t2", "scores": [0.5, 0.5]},   # tie -> wrong
            {"query_id": "t3", "scores": [0.2, 0.3]}]   # wrong
    sec = evaluate(queries, rows, cat)["triplet"]
    assert sec["per_attribute"] == {"colour": {"n": 2, "accuracy": 0.5}, "size": {"n": 1, "accuracy": 0.0}}
    assert sec["mean"] == 0.25 and sec["overall"] == pytest.approx(1 / 3)
    bad = [tq("t1", "colour", "a1", "a2", "a3")]  # a2 is blue: not a positive for red a1
    with pytest.raises(QueryFileError, match="not a valid triplet"):
        evaluate(bad, [{"query_id": "t1", "scores": [1.0, 0.0]}], cat)
    with pytest.raises(RankingsError, match="scores"):
        evaluate(queries[:1], [{"query_id": "t1", "ranked": ["a1"]}], cat)


# --- protocol 3 ----------------------------------------------------------------------------------------
def test_recall_at_k_end_to_end():
    cat = Catalog([item("s1", "gallery", "p1"), item("s2", "gallery", "p1"), item("s3", "gallery", "p2"),
                   item("s4", "gallery", "p3"), item("s5", "gallery", "p4"),
                   item("x1", "query", "p1"), item("x2", "query", "p2"), item("x3", "query", "p5")],
                  AttributeSchema({}), name="inst")
    queries = [{"query_id": f"s{i}", "item_id": f"x{i}", "manipulations": {}, "attribute": None,
                "target": {"instance_id": p}, "protocol": "same_item"} for i, p in ((1, "p1"), (2, "p2"), (3, "p5"))]
    rows = [{"query_id": "s1", "ranked": ["s1", "s3", "s2", "s4", "s5"]},   # same instance at rank 1 (and 3)
            {"query_id": "s2", "ranked": ["s1", "s2", "s4", "s5", "s3"]},   # at rank 5
            {"query_id": "s3", "ranked": ["s1", "s2", "s3", "s4", "s5"]}]   # p5 has no gallery image: skipped
    rep = evaluate(queries, rows, cat, views="synthetic multi-view")
    sec = rep["same_item"]
    # R@1 = 1/2 (x1), R@5 = 2/2
    assert sec["recall_at_k"]["1"] == 0.5 and sec["recall_at_k"]["5"] == 1.0 and sec["recall_at_k"]["50"] == 1.0
    assert sec["views"] == "synthetic multi-view"
    assert rep["skipped"] == {"no same-instance image in gallery": 1} and rep["n_scored"] == 2
    assert rep["protocol"] == "vestis-same-item/1"


def test_classification_report():
    rep = classification_report([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]], [1, 2], ["a", "b", "c"], ks=(1, 2))
    # sample 0: true class 1 scores highest -> rank 1; sample 1: true class 2 below 0.5 -> rank 2
    assert rep["top_k"] == {"1": 0.5, "2": 1.0} and rep["n_classes"] == 3


# --- report metadata and files -------------------------------------------------------------------------
def test_report_metadata_from_files(tmp_path):
    cat, queries = _sixty()
    sha = write_queries(tmp_path / "q.jsonl", queries)
    rows = [{"query_id": q["query_id"], "ranked": _ranking(["gt", "gu"])} for q in queries]
    write_rankings(tmp_path / "rankings.jsonl", rows, n_candidates=60)
    rep = evaluate(tmp_path / "q.jsonl", tmp_path / "rankings.jsonl", cat, gallery_fractions=())
    assert rep["protocol"] == "vestis-manipulation/1"
    assert rep["dataset"] == "sixty"
    assert rep["splits"] == {"query": "query", "gallery": "gallery"}
    assert rep["query_sha256"] == sha and rep["query_file"] == "q.jsonl"
    assert rep["n_queries"] == 3 and rep["run"] is None and rep["machine"] is None
    json.dumps(rep)  # JSON-serialisable as is


def test_queries_need_a_protocol():
    cat, queries = _sixty()
    q = {k: v for k, v in queries[0].items() if k != "protocol"}
    rows = [{"query_id": "m1", "ranked": _ranking(["gt"])}]
    with pytest.raises(QueryFileError, match="protocol"):
        evaluate([q], rows, cat)
    assert evaluate([q], rows, cat, protocol="manipulation", gallery_fractions=())["n_scored"] == 1


def test_rankings_round_trip(tmp_path):
    rows = [{"query_id": "a", "ranked": ["g2", "g1", "g3"]},
            {"query_id": "b", "scores": [0.25, -1.5]},
            {"query_id": "c", "skipped": "image missing"}]
    sha = write_rankings(tmp_path / "r.jsonl", rows)
    assert sha == file_sha256(tmp_path / "r.jsonl")
    back = read_rankings(tmp_path / "r.jsonl")
    assert list(back.values()) == rows
    assert write_rankings(tmp_path / "r2.jsonl", back.values()) == sha
    # numeric ids written by other tools read as strings
    (tmp_path / "n.jsonl").write_text('{"query_id": "a", "ranked": [15970, 39386]}\n')
    assert read_rankings(tmp_path / "n.jsonl")["a"]["ranked"] == ["15970", "39386"]


def test_malformed_rankings(tmp_path):
    good = '{"query_id": "a", "ranked": ["g1"]}'
    cases = {"{": "not valid JSON", '{"query_id": "b", "ranked": ["g1", "g1"]}': "ranked twice",
             '{"query_id": "b", "ranked": ["g1"], "scores": [1, 2]}': "exactly one of",
             '{"query_id": "b", "scores": [1]}': "two finite", '{"query_id": "b", "scores": [1, NaN]}': "two finite",
             '{"query_id": "a", "ranked": []}': "duplicate query_id", '{"ranked": []}': "query_id"}
    for bad, msg in cases.items():
        p = tmp_path / "r.jsonl"
        p.write_text(good + "\n" + bad + "\n")
        with pytest.raises(RankingsError, match=msg) as e:
            read_rankings(p)
        assert "r.jsonl:2" in str(e.value)
    with pytest.raises(RankingTooShortError):
        write_rankings(tmp_path / "x.jsonl", [{"query_id": "a", "ranked": ["g1"]}], n_candidates=100)


def test_rows_from_indices():
    rows = rows_from_indices(["q1", "q2"], np.array([[2, 0, -1], [1, 2, 0]]), ["g0", "g1", "g2"])
    assert rows == [{"query_id": "q1", "ranked": ["g2", "g0"]}, {"query_id": "q2", "ranked": ["g1", "g2", "g0"]}]


def test_rankings_rows_with_groups_round_trip_and_bad_groups_are_refused(tmp_path):
    rows = [{"query_id": "q1", "ranked": ["a", "c", "b"],
             "groups": [{"label": "top", "box": [0, 1, 20, 30], "ranked": ["a", "b"]},
                        {"label": "shoes", "box": None, "ranked": ["c"]}]}]
    write_rankings(tmp_path / "r.jsonl", rows)
    back = read_rankings(tmp_path / "r.jsonl")["q1"]
    assert back["ranked"] == ["a", "c", "b"]
    assert back["groups"] == [{"label": "top", "box": [0.0, 1.0, 20.0, 30.0], "ranked": ["a", "b"]},
                              {"label": "shoes", "box": None, "ranked": ["c"]}]
    for bad, msg in [({"groups": "top"}, "must be a list"),
                     ({"groups": [{"label": "top"}]}, "string \"label\" and \"ranked\""),
                     ({"groups": [{"label": "top", "box": [0, 1, 2], "ranked": []}]}, "four finite numbers"),
                     ({"groups": [{"label": "top", "box": [0, 1, 2, float("nan")], "ranked": []}]}, "four finite"),
                     ({"groups": [{"label": 3, "ranked": []}]}, "string \"label\"")]:
        with pytest.raises(RankingsError, match=msg):
            write_rankings(tmp_path / "bad.jsonl", [{"query_id": "q", "ranked": ["a"], **bad}])
