"""The engine's side of protocol v2 on known answers: probes in several spaces, groups, per-part spaces collapsed
to their item (its best part), round-robin merging, filters merged with a plan's, and every request check."""

import numpy as np
import pytest
import torch

from vestis.catalog import AttributeSchema, Catalog, Item
from vestis.engine import Engine, EngineError, Group, Hit, Result
from vestis.index import create_index
from vestis.indexing import part_id
from vestis.models import Probe, Space

SCHEMA = AttributeSchema({"colour": ["red", "blue"], "category": ["shirt", "shoe"]})
ITEMS = [Item(id=f"i{j}", image=None, attributes=a) for j, a in enumerate([
    {"colour": "red", "category": "shirt"}, {"colour": "blue", "category": "shirt"},
    {"colour": "red", "category": "shoe"}, {"colour": "blue", "category": "shoe"}, {"category": "shoe"}])]


class PartsStub:
    """A two-part model: part 0 ("top") and part 1 ("shoes"), 2-d vectors; queries probe both part spaces."""

    name = "parts-stub"
    schema = SCHEMA

    def spaces(self):
        return {"main": Space(2), "parts": Space(2, members="parts", parts=2)}

    def modes(self):
        return ["same_item", "diverse", "top"]

    def plan(self, maps, request):
        q = maps["q"].numpy()
        if request.mode == "same_item":
            return [Probe("main", q)]
        top = Probe("parts", q, group="top", boxes=np.array([[0, 0, 10, 5]] * len(q)), scores=np.full(len(q), 0.9))
        if request.mode == "top":
            return [top]
        return [top, Probe("parts", q[:, ::-1].copy(), group="shoes", filters={"category": "shoe"})]


@pytest.fixture
def engine():
    cat = Catalog(ITEMS, SCHEMA)
    main = create_index("faiss", "flat", dim=2)
    main.add([it.id for it in ITEMS], np.array([[1, 0], [0.9, 0.1], [0.5, 0.5], [0, 1], [0.2, 0.8]], np.float32),
             [it.attributes for it in ITEMS])
    parts = create_index("faiss", "flat", dim=2)
    # item i: part 0 at angle a_i, part 1 at angle b_i; i2's part 1 is the best match of [1, 0]
    vecs = {("i0", 0): [1, 0], ("i0", 1): [0, 1], ("i1", 0): [0.8, 0.2], ("i1", 1): [0.1, 0.9],
            ("i2", 0): [0.3, 0.7], ("i2", 1): [1, 0.05], ("i3", 0): [0, 1], ("i3", 1): [0.6, 0.4],
            ("i4", 0): [0.5, 0.5], ("i4", 1): [0.5, 0.5]}
    ids = [part_id(i, k) for i, k in vecs]
    attrs = [{**cat[i].attributes, "part": str(k)} for i, k in vecs]
    parts.add(ids, np.array(list(vecs.values()), np.float32), attrs)
    return Engine(PartsStub(), None, {"main": main, "parts": parts}, cat, None, ".")


def _maps(*rows):
    return {"q": torch.tensor(rows, dtype=torch.float32)}


def test_flat_mode_is_one_group_and_iterates_its_hits(engine):
    (res,) = engine.search_maps(_maps([1, 0]), k=3, mode="same_item")
    assert len(res.groups) == 1 and [h.id for h in res] == ["i0", "i1", "i2"] == [h.id for h in res.groups[0].hits]
    assert len(res) == 3 and res[0].id == "i0"


def test_parts_collapse_to_the_item_keeping_its_best_part(engine):
    (res,) = engine.search_maps(_maps([1, 0]), k=5, mode="top")
    (top,) = res.groups
    assert (top.label, top.box, top.score) == ("top", (0.0, 0.0, 10.0, 5.0), pytest.approx(0.9))
    # [1, 0] against every part: i2#1 (1.0) > i0#0 (1.0) tie order aside, each item once, with its best part
    ids = [h.id for h in top.hits]
    assert len(ids) == len(set(ids)) == 5
    best = {h.id: h.part for h in top.hits}
    assert best["i2"] == 1 and best["i0"] == 0 and best["i3"] == 1


def test_groups_are_deduplicated_keeping_each_item_where_it_ranks_best(engine):
    """top ([1, 0]): i0 / i2 (tie, 1.0), i1, i3, i4; shoes ([0, 1] among shoes): i3, i2, i4. i3 (3rd vs 1st) and i4
    (5th vs 3rd) go to shoes; i2 (1st or 2nd vs 2nd) stays in top (a tie goes to the earlier group)."""
    (res,) = engine.search_maps(_maps([1, 0]), k=5, mode="diverse")
    top, shoes = res.groups
    assert sorted(h.id for h in top.hits) == ["i0", "i1", "i2"] and top.hits[-1].id == "i1"
    assert [h.id for h in shoes.hits] == ["i3", "i4"] and {h.attributes["category"] for h in shoes.hits} == {"shoe"}
    assert shoes.box is None and shoes.score is None
    # k=1: each group's first, after de-duplication
    (res,) = engine.search_maps(_maps([1, 0]), k=1, mode="diverse")
    assert [len(g.hits) for g in res.groups] == [1, 1] and res.groups[1].hits[0].id == "i3"


def test_dedupe_groups_known_answer():
    from vestis.engine import dedupe_groups

    h = lambda i: Hit(i, 0.0, {}, None)  # noqa: E731
    a = Group("a", [h("x"), h("y"), h("z")], box=(0, 0, 1, 1), score=0.5)
    b = Group("b", [h("y"), h("x"), h("w")])
    c = Group("c", [h("z")])
    out = dedupe_groups([a, b, c], k=2)
    assert [(g.label, [x.id for x in g.hits]) for g in out] == [("a", ["x"]), ("b", ["y", "w"]), ("c", ["z"])]
    assert out[0].box == (0, 0, 1, 1) and out[0].score == 0.5
    assert dedupe_groups([Group("a", [h("x")]), Group("b", [h("x")])], k=3)[1:] == []  # empty groups are dropped


def test_round_robin_merge_reads_each_item_once():
    h = lambda i: Hit(i, 0.0, {}, None)  # noqa: E731
    r = Result([Group("a", [h("x"), h("y"), h("z")]), Group("b", [h("y"), h("w")])])
    assert [x.id for x in r.hits] == ["x", "y", "w", "z"]


def test_user_filters_merge_with_the_plan_and_exclude_the_query(engine):
    (res,) = engine.search_maps(_maps([0, 1]), k=5, mode="diverse", filters={"colour": "blue"}, exclude=["i3"])
    (top,) = res.groups  # blue shoes: only i3, which is the query: that group is empty and not shown
    assert top.label == "top" and [h.id for h in top.hits] == ["i1"]


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "manipulate", "manipulations": [{"colour": "red"}]}, "cannot apply manipulations"),
    ({"mode": "attribute:colour"}, "unknown mode 'attribute:colour'"),
    ({"mode": "same_item", "manipulations": [{"colour": "red"}]}, "does not take manipulations"),
    ({"mode": "same_item", "filters": {"colour": []}}, "empty list of values"),
    ({"mode": "same_item", "filters": {"fabric": "silk"}}, "fabric"),
    ({"mode": "same_item", "filters": {"colour": "green"}}, "green"),
    ({"mode": "same_item", "k": 0}, "k must be"),
    ({"mode": "same_item", "k": True}, "k must be"),
])
def test_every_request_check_happens_in_the_engine(engine, kwargs, message):
    from vestis.errors import VestisError

    with pytest.raises(VestisError, match=message):
        engine.search_maps(_maps([1, 0]), **kwargs)


def test_search_needs_exactly_one_query(engine):
    with pytest.raises(EngineError, match="exactly one query"):
        engine.search(k=3, mode="same_item")
    with pytest.raises(EngineError, match="exactly one query"):
        engine.search(image=b"x", item_id="i0", k=3, mode="same_item")


def test_diverse_with_labels_on_filters_parts_on_the_catalogue_label(tiny_pipeline, parts_pipeline):
    """Labels on: a part's group holds only gallery items whose catalogue category is the group's label (the model's
    predicted part labels are not read); labels off: the model's part labels decide, whatever the catalogue says."""
    from vestis.catalog import Catalog
    from vestis.engine import Engine

    root, cat, run, idx, cache = tiny_pipeline
    engine = Engine.load(*parts_pipeline, cache_dir=cache)
    outfits = [it for it in Catalog.load(cat).split("train") if it.parts][:4]
    assert outfits
    for it in outfits:
        on = engine.search(image=it.image, mode="diverse", k=10, labels=True)
        off = engine.search(image=it.image, mode="diverse", k=10, labels=False)
        assert on.labels == "on" and off.labels == "off"
        for g in on.groups:
            assert g.hits and all(h.attributes.get("category") == g.label for h in g.hits), g.label
    # the two differ somewhere: off reads the model's labels, which the quick run gets partly wrong
    differs = 0
    for it in outfits:
        on = engine.search(image=it.image, mode="diverse", k=10, labels=True)
        off = engine.search(image=it.image, mode="diverse", k=10, labels=False)
        differs += [[h.id for h in g.hits] for g in on.groups] != [[h.id for h in g.hits] for g in off.groups]
    assert differs
