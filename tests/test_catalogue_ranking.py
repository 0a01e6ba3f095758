"""Catalogue-aware ranking (labels on): the vectors' inner products are the documented score, the requested values
are constraints that still let unlabelled items through, and a catalogue whose gallery is half unlabelled falls
back to the model's predictions for those items."""

import dataclasses

import numpy as np
import pytest

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


def test_half_unlabelled_gallery_falls_back_to_the_models_prediction(tiny_pipeline, train_tiny, tmp_path):
    from vestis.engine import Engine
    from vestis.indexing import build_index

    root, cat_path, _, idx, cache = tiny_pipeline
    # a run whose colour classifier has learnt something (the shared fixture's 3 epochs have not)
    run = train_tiny(tmp_path, cat_path, "attribute_baseline", {"epochs": 40, "hidden": 64, "batch_size": 32,
                                                                 "attributes": ["category", "colour", "pattern"]}, cache)
    cat = Catalog.load(cat_path)
    gallery = [it.id for it in cat.split("gallery")]
    unlabelled = set(gallery[::2])
    items = [dataclasses.replace(it, attributes={a: v for a, v in it.attributes.items() if a != "colour"})
             if it.id in unlabelled else it for it in cat]
    half = Catalog(items, cat.schema, name=cat.name, path=cat.path)
    out = tmp_path / "idx-half"
    build_index(run, half, out, split="gallery", cache_dir=cache, progress=False)
    engine = Engine.load(run, out, catalog=half, cache_dir=cache)
    full = Engine.load(run, tmp_path / "idx-full", catalog=cat, cache_dir=cache) if build_index(
        run, cat, tmp_path / "idx-full", split="gallery", cache_dir=cache, progress=False) else None
    import torch

    pool = sorted(unlabelled)
    with torch.inference_mode():
        probs = engine.model.attribute_probabilities(engine.item_maps(pool))["colour"].numpy()
    p_of = {iid: row for iid, row in zip(pool, probs)}
    values = list(engine.model.schema.values("colour"))
    shown, gap = 0, []  # gap: mean predicted p(requested) of those shown / of all unlabelled
    for it, v in _manipulations(full):
        res = engine.search(image=it.image, manipulations={"colour": v}, k=10)
        met = [h.attributes.get("colour") in (v, None) for h in res]
        assert met == sorted(met, reverse=True)  # labelled items of another colour only after all that may match
        # the unlabelled items shown among those that may match rank by their predicted colour
        mine = [h.id for h, m in zip(res, met) if m and h.id in unlabelled]
        shown += len(mine)
        if mine:
            p_v = np.array([p_of[i][values.index(v)] for i in pool])
            gap.append(np.mean([p_of[i][values.index(v)] for i in mine]) / p_v.mean())
    assert shown > 0  # unknown is not a mismatch: unlabelled items are searched
    # those shown are the ones the model thinks likelier than the others to have the requested colour
    assert min(gap) > 1 and np.mean(gap) > 1.5
