"""The model protocol, checked for every registered method (as timm's tests run over `list_models()`): fit on a
tiny synthetic catalogue with the method's `quick_config`, then embed every declared space, plan, search every
mode it declares, explain where it explains, predict where it predicts, and save / load round trip. A new method
file is tested here without a test of its own."""

import numpy as np
import pytest
import torch

from vestis.models import MODELS, Request, Space, create_model, declared_levels

NAMES = sorted(MODELS)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vestis.catalog import Catalog
    from vestis.catalog.synthetic import generate
    from vestis.vision.extract import catalogue_features
    from vestis.vision.trunk import TrunkSpec

    root = tmp_path_factory.mktemp("protocol")
    generate(n=120, seed=11, out=root / "cat", workers=1)
    cat = Catalog.load(root / "cat")
    cat = cat.with_attributes(["category", "colour", "sleeve"])
    spec = TrunkSpec(levels=declared_levels())  # what the CLI extracts: every method's levels
    feats = catalogue_features(cat, spec, root / "cache", progress=False)
    return root, cat, spec, feats


def _maps(feats, rows):
    return {k: torch.from_numpy(v[rows].astype(np.float32)) for k, v in feats.maps.items()}


def test_every_builtin_model_is_registered_and_declares_levels():
    assert {"visual", "attribute_baseline", "global_embed", "fashionsearchnet", "fashionsearchnet_noloc", "amnet",
            "amnet_no_memory", "amnet_no_ranking"} <= set(NAMES)
    assert set(declared_levels()) >= {"s16", "s32"}
    for name in NAMES:
        assert MODELS[name].levels and set(MODELS[name].levels) <= set(declared_levels())


@pytest.mark.parametrize("name", NAMES)
def test_model_protocol(name, tiny, tmp_path):
    from vestis.engine import Engine, Result
    from vestis.indexing import build_index
    from vestis.runs import load_run, save_run
    from vestis.train import train_run

    root, cat, spec, feats = tiny
    cache = root / "cache"
    cls = MODELS[name]
    run = tmp_path / "run"
    info = train_run(name, cat, run, spec, cache, config=dict(cls.quick_config), progress=False)
    model, loaded = load_run(run)
    assert loaded.run_id == info.run_id and model.name == name

    # training changed the model (against the untrained one with the same config), where it has parameters
    fresh = create_model(name, cat.schema, model.channels, dict(cls.quick_config))
    trained_state, fresh_state = model.state_dict(), fresh.state_dict()
    if any(p.numel() for p in fresh.parameters()):
        assert any(not torch.equal(trained_state[k], fresh_state[k]) for k in fresh_state), "fit changed nothing"

    # every declared space: the declared size, finite vectors; unit length where compared by inner product
    rows = np.arange(12)
    maps = _maps(feats, rows)
    spaces = model.spaces()
    assert "main" in spaces and all(isinstance(s, Space) for s in spaces.values())
    vectors = {}
    with torch.inference_mode():
        for s, space in spaces.items():
            v = model.embed(maps, s).numpy()
            expected = (12, space.parts, space.dim) if space.members == "parts" else (12, space.dim)
            assert v.shape == expected and np.isfinite(v).all(), s
            vectors[s] = v

    # embed_spaces (what `vestis index` calls): exactly the per-space rows, for all spaces at once and for a subset;
    # a per-part space with labels carries exactly `part_labels`, every other space none
    with torch.inference_mode():
        names = list(spaces)
        for asked in (names, names[::-2]):
            got = model.embed_spaces(maps, asked)
            assert sorted(got) == sorted(asked)
            for s in asked:
                assert np.array_equal(got[s].vectors.numpy(), vectors[s]), s
                if spaces[s].members == "parts" and spaces[s].labels:
                    assert torch.equal(got[s].part_labels, model.part_labels(maps, s)), s
                else:
                    assert got[s].part_labels is None, s

    # save / load round trip gives the same vectors in every space
    save_run(model, tmp_path / "run2", trunk=loaded.trunk)
    again, _ = load_run(tmp_path / "run2")
    with torch.inference_mode():
        for s in spaces:
            assert np.array_equal(again.embed(maps, s).numpy(), vectors[s]), s

    # plans: every probe names a declared space and has its size
    manip = _valid_manipulation(model, cat, feats.ids[0])
    for mode in model.modes():
        probes = model.plan(_maps(feats, [0]), Request(mode, [manip if mode == "manipulate" else {}]))
        assert probes, mode
        for p in probes:
            assert p.space in spaces and p.vectors.shape[-1] == spaces[p.space].dim, (mode, p.space)

    # a query summary, where the model has one, plans exactly as the whole maps in every mode (a block of
    # QUERY_BLOCK rows, as the engine runs both; `Engine.keep_item_queries`)
    from vestis.engine import QUERY_BLOCK

    block = _maps(feats, np.arange(QUERY_BLOCK))
    summary = model.query_summary(block)
    if summary is not None:
        assert all(t.shape[2:] == (1, 1) for t in summary.values())
        with torch.inference_mode():
            for mode in model.modes():
                req = Request(mode, [manip if mode == "manipulate" else {}] * QUERY_BLOCK)
                whole, small = model.plan(block, req), model.plan(summary, req)
                assert len(whole) == len(small) > 0, mode
                for w, sm in zip(whole, small):
                    assert w.space == sm.space and w.filters == sm.filters, mode
                    assert np.array_equal(w.vectors, sm.vectors), mode
            if model.predicts_attributes:
                for a, p in model.attribute_probabilities(block).items():
                    assert torch.equal(p, model.attribute_probabilities(summary)[a]), a
    assert (summary is not None) == (name in {"attribute_baseline", "amnet", "amnet_no_memory", "amnet_no_ranking",
                                              "visual"}), name

    # search through the engine in every mode the model declares
    idx = tmp_path / "idx"
    build_index(run, cat, idx, split="gallery", cache_dir=cache, progress=False)
    engine = Engine.load(run, idx, catalog=cat, cache_dir=cache)
    gallery = {it.id for it in cat.split("gallery")}
    query = next(it.id for it in cat.split("query") if it.image is not None)
    manip = _valid_manipulation(model, cat, query)
    for mode in engine.modes():
        res = engine.search(item_id=query, mode=mode, k=5, manipulations=manip if mode == "manipulate" else None)
        assert isinstance(res, Result) and res.groups, mode
        for g in res.groups:
            ids = [h.id for h in g.hits]
            assert 0 < len(ids) <= 5 and len(set(ids)) == len(ids) and query not in ids, mode
            assert set(ids) <= gallery, mode
            scores = [h.score for h in g.hits]
            assert scores == sorted(scores, reverse=True), mode
        if mode.startswith("attribute:"):  # candidates: items with a known value of the attribute
            a = mode.split(":", 1)[1]
            assert all(h.attributes.get(a) in cat.schema.values(a) for h in res.hits)
        if mode == "manipulate":
            assert all(set(h.matches) == set(manip) for h in res.hits)

    # attribute probabilities where the model classifies
    if model.predicts_attributes:
        with torch.inference_mode():
            for a, p in model.attribute_probabilities(maps).items():
                assert p.shape == (12, len(cat.schema.values(a)) + 1)
                assert torch.allclose(p.sum(-1), torch.ones(12), atol=1e-4)
                assert (p >= 0).all()
    # explanations where the model has maps: one per image, a region per attribute
    if model.explains:
        from vestis.models import Explanation

        expl = model.explain(maps)
        assert len(expl) == 12 and all(isinstance(e, Explanation) for e in expl)
        for e in expl:
            # a region per attribute, or per attention step for a part-based model
            steps = [f"step {t + 1}" for t in range(spaces["parts"].parts)] if "parts" in spaces else None
            assert e.names in (list(model.schema.attributes), steps) and e.stride > 0
            h, w = e.map_size
            for r in e.regions:
                assert r.heatmap is None or r.heatmap.shape == (h, w)
                assert r.box is None or (0 <= r.box[0] < r.box[2] <= w and 0 <= r.box[1] < r.box[3] <= h)
                assert (r.label is None) == (r.box is None) or r.heatmap is None


def _valid_manipulation(model, cat, item_id) -> dict:
    """One manipulation {attribute: another known value} the model's schema allows."""
    if not model.supports_manipulation:
        return {}
    item = cat[item_id]
    for a in model.schema.attributes:
        vals = list(model.schema.values(a))
        if item.attributes.get(a) in vals and len(vals) > 1:
            return {a: next(v for v in vals if v != item.attributes[a])}
    return {}
