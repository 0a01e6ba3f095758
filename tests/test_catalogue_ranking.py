"""Catalogue-aware ranking (labels on): the vectors' inner products are the documented score, the requested values
are constraints that still let unlabelled items through, and a catalogue whose gallery is half unlabelled falls
back to the model's predictions for those items."""

import dataclasses

import numpy as np
import pytest
import torch

from vestis import catalogue_ranking as CR
from vestis.catalog import AttributeSchema, Catalog

SCHEMA = AttributeSchema({"colour": ["red", "blue", "green"], "sleeve": ["short", "long"]})


def test_label_blocks_use_the_catalogue_label_where_known_else_the_prediction():
    pred = {"colour": np.array([[0.1, 0.6, 0.2, 0.1], [0.3, 0.3, 0.3, 0.1]]),
            "sleeve": np.array([[0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])}
    blocks = CR.label_blocks(SCHEMA, [{"colour": "green"}, {"sleeve": "long", "colour": "purple"}], pred)
    np.testing.assert_allclose(blocks, [[0, 0, 1, 0, 0.5, 0.4, 0.1],          # colour labelled, sleeve predicted
                                        [0.3, 0.3, 0.3, 0.1, 0, 1, 0]])       # an unknown value counts as unlabelled


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_inner_products_are_the_documented_score(metric):
    rng = np.random.default_rng(0)
    blocks = CR.label_blocks(SCHEMA, [{"colour": "red"}, {}, {"colour": "blue", "sleeve": "short"}],
                             {"colour": rng.dirichlet(np.ones(4), 3), "sleeve": rng.dirichlet(np.ones(3), 3)})
    main_g = rng.normal(size=(3, 5)).astype(np.float32)
    gallery, scale = CR.gallery_vectors(blocks, main_g, metric)
    assert np.allclose(np.linalg.norm(gallery, axis=1), scale["bound"], rtol=1e-5)  # one norm: MIPS = NN search
    pred_q = {"colour": np.array([[0.2, 0.5, 0.2, 0.1]]), "sleeve": np.array([[0.7, 0.2, 0.1]])}
    rows = CR.targets(SCHEMA, pred_q, [{"colour": "red"}], None)
    main_q = rng.normal(size=(1, 5)).astype(np.float32)
    q = CR.query_vectors(SCHEMA, rows, main_q, metric, scale, weight=0.7)
    got = (gallery @ q[0]).astype(np.float64)
    # by hand: sum over attributes of the expected log target probability under each item's label / prediction
    t = np.concatenate([[1, 0, 0, 0], [0.7, 0.2, 0.1]])
    loglik = blocks @ np.log(np.maximum(t, CR.PROB_FLOOR))
    g = main_g / np.linalg.norm(main_g, axis=1).max()
    if metric == "ip":
        sim = g @ (main_q[0] / np.linalg.norm(main_q[0]))
    else:  # w/2 times the negated squared distance, up to a constant of the query
        qq = main_q[0] / np.linalg.norm(main_g, axis=1).max()
        sim = -0.5 * ((g - qq) ** 2).sum(1) + 0.5 * (qq ** 2).sum()
    np.testing.assert_allclose(got, loglik + 0.7 * sim, rtol=1e-4, atol=1e-4)


def test_targets_requested_then_own_labels_then_predictions():
    pred = {"colour": np.array([[0.2, 0.5, 0.2, 0.1]]), "sleeve": np.array([[0.1, 0.8, 0.1]])}
    (row,) = CR.targets(SCHEMA, pred, [{"colour": "green"}], [{"sleeve": "short"}])
    np.testing.assert_array_equal(row["colour"], [0, 0, 1, 0])
    np.testing.assert_array_equal(row["sleeve"], [1, 0, 0])
    (row,) = CR.targets(SCHEMA, pred, [{}], None)
    np.testing.assert_allclose(row["sleeve"], [0.1, 0.8, 0.1])
    assert CR.target_vector(SCHEMA, row) == ("blue", "long")
    assert CR.constraints({"colour": "red"}) == {"colour": ["red", "unspecified"]}


def test_photo_preferences_keep_only_the_named_attributes_of_a_photo():
    pred = {"colour": np.array([[0.2, 0.5, 0.2, 0.1]] * 2), "sleeve": np.array([[0.1, 0.8, 0.1]] * 2)}
    photo, item = CR.targets(SCHEMA, pred, [{}, {}], [None, {"sleeve": "short"}], photo_preferences=["colour"])
    np.testing.assert_allclose(photo["colour"], [0.2, 0.5, 0.2, 0.1])  # the named attribute: its prediction
    np.testing.assert_allclose(photo["sleeve"], [1 / 3] * 3)           # any other: no preference
    np.testing.assert_array_equal(item["sleeve"], [1, 0, 0])            # a catalogue item keeps its own labels
    np.testing.assert_allclose(item["colour"], [0.2, 0.5, 0.2, 0.1])
    (req,) = CR.targets(SCHEMA, {a: p[:1] for a, p in pred.items()}, [{"sleeve": "long"}], None,
                        photo_preferences=["colour"])
    np.testing.assert_array_equal(req["sleeve"], [0, 1, 0])             # a requested value is never dropped
    # a packshot photo (shopper False) keeps every prediction; shopper True restricts even without a None label row
    packshot, shopper = CR.targets(SCHEMA, pred, [{}, {}], None, photo_preferences=["colour"], shopper=[False, True])
    np.testing.assert_allclose(packshot["sleeve"], [0.1, 0.8, 0.1])
    np.testing.assert_allclose(shopper["sleeve"], [1 / 3] * 3)
    (none,) = CR.targets(SCHEMA, {a: p[:1] for a, p in pred.items()}, [{}], None, photo_preferences=[])
    assert all(np.allclose(t, t[0]) for t in none.values())
    # uniform targets add one constant to every item's score: the ranking is the model's similarity alone
    blocks = CR.label_blocks(SCHEMA, [{"colour": "red"}, {}, {"sleeve": "long"}],
                             {"colour": np.full((3, 4), 0.25), "sleeve": np.full((3, 3), 1 / 3)})
    logs = np.concatenate([np.log(none[a]) for a in SCHEMA.attributes])
    assert np.allclose(blocks @ logs, (blocks @ logs)[0])


def test_set_hit_probabilities_known_answers():
    # one set: its values share the set's whole mass, whatever the split inside (a hat photo called "Hat")
    np.testing.assert_allclose(CR.set_hit_probabilities(np.array([0.999, 0.001, 0.0, 0.0]), [[0, 1]]), [1, 1, 0, 0],
                               atol=1e-6)
    # overlapping sets S1 = {0, 1}, S2 = {0, 2, 3}: value 0 counts half in each, so P(S1) = 0.45 + 0.02 = 0.47,
    # P(S2) = 0.45 + 0.04 = 0.49; value 0 is in both (0.96), value 4 ("unspecified") is in none and keeps 0.04
    t = np.array([0.9, 0.02, 0.02, 0.02, 0.04])
    np.testing.assert_allclose(CR.set_hit_probabilities(t, [[0, 1], [0, 2, 3]]), [0.96, 0.47, 0.49, 0.49, 0.04],
                               atol=1e-6)
    # no sets: the prediction itself
    np.testing.assert_allclose(CR.set_hit_probabilities(t, []), t)


def test_photo_sets_apply_to_shoppers_photos_only():
    pred = {"colour": np.array([[0.05, 0.9, 0.01, 0.04]] * 2), "sleeve": np.array([[0.1, 0.8, 0.1]] * 2)}
    sets = {"colour": [["red", "blue"], ["green"]], "pattern": [["x"]]}  # an attribute the schema lacks is ignored
    shopper, packshot = CR.targets(SCHEMA, pred, [{}, {}], None, photo_preferences=["colour"], shopper=[True, False],
                                   photo_sets=sets)
    np.testing.assert_allclose(shopper["colour"], [0.95, 0.95, 0.01, 0.04], atol=1e-6)
    np.testing.assert_allclose(packshot["colour"], [0.05, 0.9, 0.01, 0.04], atol=1e-6)  # a packshot: per value
    (req,) = CR.targets(SCHEMA, {a: p[:1] for a, p in pred.items()}, [{"colour": "green"}], None,
                        photo_preferences=["colour"], shopper=[True], photo_sets=sets)
    np.testing.assert_array_equal(req["colour"], [0, 0, 1, 0])  # a requested value wins over the sets
    # ranked by the score: a red item and a blue item now tie on labels where red trailed by log(0.9 / 0.05)
    blocks = CR.label_blocks(SCHEMA, [{"colour": "red"}, {"colour": "blue"}, {"colour": "green"}],
                             {"colour": np.full((3, 4), 0.25), "sleeve": np.full((3, 3), 1 / 3)})
    logs = np.concatenate([np.log(np.maximum(shopper[a], CR.PROB_FLOOR)) for a in SCHEMA.attributes])
    s = blocks @ logs
    assert s[0] == pytest.approx(s[1]) and s[1] > s[2] + 4


def test_an_engine_on_a_mixed_run_prefers_only_the_mapped_attribute():
    from types import SimpleNamespace

    from vestis.engine import Engine

    model = SimpleNamespace(spaces=lambda: {})
    mixed = SimpleNamespace(history={"mix": {"mapping": {"source_attribute": "category", "target_attribute": "colour",
                                                          "map": {"warm": ["red"], "cool": ["blue", "green"]}}}})
    engine = Engine(model, mixed, {}, Catalog([], SCHEMA), None, ".")
    assert engine.photo_preferences == ["colour"]
    assert engine.photo_sets == {"colour": [["red"], ["blue", "green"]]}
    plain = SimpleNamespace(history={"train_items": 10})
    engine = Engine(model, plain, {}, Catalog([], SCHEMA), None, ".")
    assert engine.photo_preferences is None and engine.photo_sets is None


def _manipulations(engine, n=12):
    gallery = set(engine.spaces["main"].ids())
    out = []
    for it in engine.catalog:
        if it.id in gallery or "colour" not in it.attributes or it.image is None:
            continue
        for v in engine.model.schema.values("colour"):
            if v != it.attributes["colour"] and sum(engine.catalog[g].attributes.get("colour") == v for g in gallery) >= 10:
                out.append((it, v))
                break
        if len(out) == n:
            break
    return out


def test_labels_on_shows_what_was_asked_for_and_off_reads_no_label(tiny_pipeline):
    from vestis.engine import Engine

    root, cat, run, idx, cache = tiny_pipeline
    engine = Engine.load(run, idx, cache_dir=cache)
    asked_on, asked_off = [], []
    for it, v in _manipulations(engine):
        on = engine.search(image=it.image, manipulations={"colour": v}, k=10)
        off = engine.search(image=it.image, manipulations={"colour": v}, k=10, labels=False)
        assert on.labels == "on" and off.labels == "off" and len(on) == 10
        asked_on.append(np.mean([h.attributes.get("colour") == v for h in on]))
        asked_off.append(np.mean([h.attributes.get("colour") == v for h in off]))
    assert len(asked_on) >= 6
    assert np.mean(asked_on) == 1.0 > np.mean(asked_off)  # >= 10 gallery items have each requested colour


def test_half_unlabelled_gallery_falls_back_to_the_models_prediction(tiny_pipeline, tmp_path):
    from vestis.engine import Engine
    from vestis.indexing import build_index

    root, cat_path, run, idx, cache = tiny_pipeline
    cat = Catalog.load(cat_path)
    gallery = [it.id for it in cat.split("gallery")]
    unlabelled = set(gallery[::2])
    items = [dataclasses.replace(it, attributes={a: v for a, v in it.attributes.items() if a != "colour"})
             if it.id in unlabelled else it for it in cat]
    half = Catalog(items, cat.schema, name=cat.name, path=cat.path)
    out = tmp_path / "idx-half"
    build_index(run, half, out, split="gallery", cache_dir=cache, progress=False)
    engine = Engine.load(run, out, catalog=half, cache_dir=cache)
    full = Engine.load(run, idx, cache_dir=cache)
    schema = engine.model.schema
    scale = engine.meta["spaces"][CR.SPACE]["labels"]
    shown = 0
    for it, v in _manipulations(full):
        res = engine.search(image=it.image, manipulations={"colour": v}, k=10)
        met = [h.attributes.get("colour") in (v, None) for h in res]
        assert met == sorted(met, reverse=True)  # labelled items of another colour only after all that may match
        mine = [h for h in res if h.id in unlabelled]
        shown += len(mine)
        if not mine:
            continue
        # an unlabelled item's score is the documented one with the run's PREDICTED colour for it (not a mismatch)
        q_maps = engine.encode_images([it.image])
        g_maps = engine.item_maps([h.id for h in mine])
        with torch.inference_mode():
            q_probs = {a: p.numpy() for a, p in engine.model.attribute_probabilities(q_maps).items()}
            g_probs = {a: p.numpy() for a, p in engine.model.attribute_probabilities(g_maps).items()}
            q_main = engine.model.embed_query(q_maps, [{"colour": v}]).numpy()[0]
            g_main = engine.model.embed(g_maps, "main").numpy()
        (t,) = CR.targets(schema, q_probs, [{"colour": v}], None)
        blocks = CR.label_blocks(schema, [half[h.id].attributes for h in mine], g_probs)
        log_t = np.concatenate([np.log(np.maximum(t[a], CR.PROB_FLOOR)) for a in schema.attributes])
        sim = (g_main / scale["main_norm"]) @ (q_main / np.linalg.norm(q_main))
        expected = blocks @ log_t + engine.label_weight * sim
        np.testing.assert_allclose([h.score for h in mine], expected, rtol=2e-3, atol=2e-3)
    assert shown > 0  # unknown is not a mismatch: unlabelled items are searched
