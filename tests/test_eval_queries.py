"""Query generation (PROTOCOLS.md): only valid queries, every attribute represented, seeded, files round-trip."""

import itertools
import json
import random

import pytest

from vestis.catalog import UNSPECIFIED, AttributeSchema, Catalog, Item
from vestis.eval.errors import QueryFileError
from vestis.eval.queries import (
    attribute_queries,
    file_sha256,
    manipulation_queries,
    read_queries,
    same_item_queries,
    triplet_queries,
    write_queries,
)

SCHEMA = {"colour": ["red", "blue", "green", "black"], "sleeve": ["long", "short", "none"],
          "pattern": ["solid", "stripe", "floral"]}
A = list(SCHEMA)


def random_catalog(n=300, seed=0) -> Catalog:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        attrs = {}
        for a, vals in SCHEMA.items():
            if rng.random() < (0.4 if a == "pattern" else 0.1):  # some labels missing = unspecified
                continue
            attrs[a] = rng.choice(vals[:3]) if rng.random() < 0.9 else vals[-1]
        split = rng.choices(["gallery", "query", "train"], [6, 3, 1])[0]
        items.append(Item(id=f"i{i:03d}", image=None, attributes=attrs, instance_id=f"p{i // 3}", split=split))
    return Catalog(items, AttributeSchema(SCHEMA), name="tiny")


def vec(item: Item) -> tuple:
    return tuple(item.attributes.get(a, UNSPECIFIED) for a in A)


def brute_force_candidates(cat: Catalog, n: int) -> set:
    """Every valid (item, manipulations) pair, straight from the rules of PROTOCOLS.md section 1."""
    gallery = {vec(it) for it in cat.split("gallery")}
    out = set()
    for it in cat.split("query"):
        for combo in itertools.combinations(A, n):
            if any(a not in it.attributes for a in combo):
                continue  # never manipulate from unspecified
            for new in itertools.product(*(SCHEMA[a] for a in combo)):
                if any(new[j] == it.attributes[a] for j, a in enumerate(combo)):
                    continue  # the new value must differ
                t = dict(zip(A, vec(it)))
                t.update(zip(combo, new))
                if tuple(t[a] for a in A) in gallery:
                    out.add((it.id, tuple(sorted(zip(combo, new)))))
    return out


@pytest.fixture(scope="module")
def cat():
    return random_catalog()


def assert_valid(cat: Catalog, q: dict):
    gallery = {vec(it) for it in cat.split("gallery")}
    it = cat[q["item_id"]]
    assert cat.split_of(it.id) == "query"
    assert q["protocol"] == "manipulation"
    assert list(q["target"]) == A  # the full vector over A
    for a, v in q["manipulations"].items():
        assert a in it.attributes, "manipulated from unspecified"
        assert v != UNSPECIFIED and v in SCHEMA[a], "manipulated to unspecified / unknown value"
        assert v != it.attributes[a], "new value equals the old one"
    expected = {a: q["manipulations"].get(a, it.attributes.get(a, UNSPECIFIED)) for a in A}
    assert q["target"] == expected
    assert tuple(q["target"][a] for a in A) in gallery, "no gallery item has the target vector"


def test_every_generated_manipulation_query_is_valid(cat):
    qs, counts = manipulation_queries(cat, A, seed=1, per_attribute=20)
    assert qs
    for q in qs:
        assert_valid(cat, q)
        assert len(q["manipulations"]) == 1
        assert q["attribute"] == next(iter(q["manipulations"]))
    # every attribute represented, at most N each, counts agree with the queries
    assert list(counts) == A
    assert all(0 < c <= 20 for c in counts.values())
    assert sum(counts.values()) == len(qs)
    assert {a: sum(q["attribute"] == a for q in qs) for a in A} == counts
    assert len({q["query_id"] for q in qs}) == len(qs)


def test_generation_enumerates_exactly_the_valid_candidates(cat):
    for n in (1, 2):
        qs, _ = manipulation_queries(cat, A, seed=0, per_attribute=None, n_changes=n)
        got = {(q["item_id"], tuple(sorted(q["manipulations"].items()))) for q in qs}
        assert got == brute_force_candidates(cat, n)
        assert len(got) == len(qs)  # no duplicates


def test_two_attribute_queries_change_exactly_two_attributes(cat):
    qs, counts = manipulation_queries(cat, A, seed=3, per_attribute=10, n_changes=2)
    assert set(counts) == {"colour+sleeve", "colour+pattern", "sleeve+pattern"}
    for q in qs:
        assert_valid(cat, q)
        assert len(q["manipulations"]) == 2
        item = cat[q["item_id"]]
        changed = [a for a in A if q["target"][a] != item.attributes.get(a, UNSPECIFIED)]
        assert sorted(changed) == sorted(q["manipulations"])
        assert q["attribute"] == "+".join(a for a in A if a in q["manipulations"])
    both, c2 = manipulation_queries(cat, A, seed=3, per_attribute=10, n_changes=(1, 2))
    assert set(c2) == set(A) | set(counts)
    assert len({q["query_id"] for q in both}) == len(both)


def test_generation_is_deterministic_for_a_seed(cat):
    a, ca = manipulation_queries(cat, A, seed=7, per_attribute=15, n_changes=(1, 2))
    b, cb = manipulation_queries(cat, A, seed=7, per_attribute=15, n_changes=(1, 2))
    c, _ = manipulation_queries(cat, A, seed=8, per_attribute=15, n_changes=(1, 2))
    assert a == b and ca == cb
    assert a != c
    # the catalogue's item order does not matter
    shuffled = Catalog(list(reversed(cat.items)), cat.schema, name=cat.name)
    assert manipulation_queries(shuffled, A, seed=7, per_attribute=15, n_changes=(1, 2))[0] == a


def test_unspecified_is_matched_but_never_manipulated():
    schema = AttributeSchema({"colour": ["red", "blue"], "pattern": ["solid", "stripe"]})
    items = [
        Item("q1", None, {"colour": "red"}, split="query"),                      # pattern unspecified
        Item("q2", None, {"pattern": "solid"}, split="query"),                   # colour unspecified
        Item("g1", None, {"colour": "blue"}, split="gallery"),                   # (blue, unspecified)
        Item("g2", None, {"colour": "blue", "pattern": "solid"}, split="gallery"),
        Item("g3", None, {"pattern": "stripe"}, split="gallery"),                # (unspecified, stripe)
    ]
    qs, counts = manipulation_queries(Catalog(items, schema), ["colour", "pattern"], seed=0, per_attribute=None)
    # q1 colour red->blue: target (blue, unspecified) = g1, valid. q1 pattern: unspecified, never from it.
    # q2 colour: unspecified, never. q2 pattern solid->stripe: target (unspecified, stripe) = g3, valid.
    got = sorted((q["item_id"], q["manipulations"], q["target"]["colour"], q["target"]["pattern"]) for q in qs)
    assert got == [("q1", {"colour": "blue"}, "blue", UNSPECIFIED), ("q2", {"pattern": "stripe"}, UNSPECIFIED, "stripe")]
    assert counts == {"colour": 1, "pattern": 1}


def test_attribute_with_no_valid_query_is_reported_as_zero():
    schema = AttributeSchema({"colour": ["red", "blue"], "size": ["s", "m"]})
    items = [Item("q", None, {"colour": "red", "size": "s"}, split="query"),
             Item("g", None, {"colour": "blue", "size": "s"}, split="gallery")]
    qs, counts = manipulation_queries(Catalog(items, schema), None, seed=0)
    assert counts == {"colour": 1, "size": 0}


def test_query_split_must_differ_from_gallery_split(cat):
    with pytest.raises(QueryFileError, match="never sits"):
        manipulation_queries(cat, A, seed=0, query_split="gallery")


def test_attribute_queries(cat):
    qs, counts = attribute_queries(cat, A, seed=0)
    gallery_values = {a: {it.attributes[a] for it in cat.split("gallery") if a in it.attributes} for a in A}
    for q in qs:
        it = cat[q["item_id"]]
        a = q["attribute"]
        assert cat.split_of(it.id) == "query" and q["protocol"] == "attribute"
        assert q["target"] == {a: it.attributes[a]}
        assert it.attributes[a] in gallery_values[a]
    # per_attribute=None takes every eligible query item
    for a in A:
        eligible = [it for it in cat.split("query") if it.attributes.get(a) in gallery_values[a]]
        assert counts[a] == len(eligible)
    small, c2 = attribute_queries(cat, A, seed=0, per_attribute=5)
    assert c2 == {a: 5 for a in A} and len(small) == 15
    assert attribute_queries(cat, A, seed=0, per_attribute=5)[0] == small


def test_triplet_queries(cat):
    qs, counts = triplet_queries(cat, A, 30, 0)
    assert counts == {a: 30 for a in A}
    seen = set()
    for q in qs:
        a = q["attribute"]
        x, p, n = (cat[q[k]] for k in ("item_id", "positive_id", "negative_id"))
        assert len({x.id, p.id, n.id}) == 3
        assert x.attributes[a] == p.attributes[a] == q["target"][a]
        assert a in n.attributes and n.attributes[a] != x.attributes[a]
        assert {cat.split_of(i.id) for i in (x, p, n)} <= {"gallery", "query"}  # never train
        seen.add((a, x.id, p.id, n.id))
    assert len(seen) == len(qs)
    assert triplet_queries(cat, A, 30, 0)[0] == qs


def test_same_item_queries(cat):
    qs, counts = same_item_queries(cat, seed=0)
    gallery_instances = {it.instance_id for it in cat.split("gallery")}
    for q in qs:
        it = cat[q["item_id"]]
        assert cat.split_of(it.id) == "query"
        assert q["target"] == {"instance_id": it.instance_id}
        assert it.instance_id in gallery_instances
    n_query = len(cat.split("query"))
    assert counts["queries"] == len(qs) and counts["queries"] + counts["no_gallery_view"] == n_query
    few, c = same_item_queries(cat, seed=0, max_queries=4)
    assert len(few) == 4 and c["queries"] == 4


# --- files -------------------------------------------------------------------------------------------
def test_query_file_round_trip_and_sha256(tmp_path, cat):
    qs, _ = manipulation_queries(cat, A, seed=2, per_attribute=5, n_changes=(1, 2))
    sha = write_queries(tmp_path / "q.jsonl", qs)
    assert sha == file_sha256(tmp_path / "q.jsonl")
    assert write_queries(tmp_path / "again.jsonl", qs) == sha  # same queries, same bytes
    back = read_queries(tmp_path / "q.jsonl")
    assert back == qs
    assert write_queries(tmp_path / "third.jsonl", back) == sha
    lines = (tmp_path / "q.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(qs)
    first = json.loads(lines[0])
    assert list(first)[:1] == ["query_id"] and first["protocol"] == "manipulation"


def test_image_queries_resolve_relative_to_the_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    img = tmp_path / "imgs" / "look.jpg"
    q = {"query_id": "x1", "image": str(img), "manipulations": {"colour": "red"}, "attribute": "colour",
         "target": {"colour": "red"}, "protocol": "manipulation"}
    sha = write_queries(tmp_path / "q.jsonl", [q])
    assert json.loads((tmp_path / "q.jsonl").read_text())["image"] == "imgs/look.jpg"
    back = read_queries(tmp_path / "q.jsonl")
    assert back[0]["image"] == str(img)
    assert write_queries(tmp_path / "q2.jsonl", back) == sha


def test_malformed_query_lines_name_the_line(tmp_path):
    good = '{"query_id": "a", "item_id": "i1", "manipulations": {}, "target": {}}'
    cases = {
        "not json": "not valid JSON",
        '{"query_id": "b"}': "exactly one of",
        '{"query_id": "b", "item_id": "x", "image": "y"}': "exactly one of",
        '{"item_id": "x"}': "query_id",
        '{"query_id": "b", "item_id": "x", "protocol": "nope"}': "unknown protocol",
        '{"query_id": "a", "item_id": "x"}': "duplicate query_id",
        '{"query_id": "b", "item_id": "x", "target": {"c": 3}}': "target",
        '[1, 2]': "JSON object",
    }
    for bad, msg in cases.items():
        p = tmp_path / "bad.jsonl"
        p.write_text(good + "\n" + bad + "\n", encoding="utf-8")
        with pytest.raises(QueryFileError, match=msg) as e:
            read_queries(p)
        assert "bad.jsonl:2" in str(e.value)
    with pytest.raises(QueryFileError, match="not found"):
        read_queries(tmp_path / "missing.jsonl")
