"""Training on two domains (`vestis train --mix`): the set-valued loss, the per-domain balanced batches, the mixed
TrainData, and a tiny synthetic two-domain fixture where mixing must measurably help the second domain."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vestis.catalog import AttributeSchema, Catalog, Item
from vestis.catalog.mapping import LabelMapping
from vestis.errors import CatalogError, VestisError
from vestis.losses import multi_attribute_ce, set_ce
from vestis.models import TrainData, create_model
from vestis.models.loop import NO_LOSS, balanced_batches, data_batches
from vestis.train import mix_train_data

TYPES = ["Tshirts", "Sweaters", "Dresses", "Skirts"]
SCHEMA = AttributeSchema({"type": TYPES, "colour": ["red", "blue"]})
MAPPING = LabelMapping.from_json({"source_attribute": "category", "target_attribute": "type",
                                  "map": {"top": ["Tshirts", "Sweaters"], "dress": ["Dresses"], "skirt": ["Skirts"]}})
PHOTO_CATS = ["top", "dress", "skirt"]


def test_set_ce_is_minus_log_of_the_summed_probability():
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)]])  # p = .25, .25, .5
    assert set_ce(logits, torch.tensor([[True, True, False]])).item() == pytest.approx(-math.log(0.5))
    assert set_ce(logits, torch.tensor([[False, False, True]])).item() == pytest.approx(-math.log(0.5))
    assert set_ce(logits, torch.tensor([[True, False, False]])).item() == pytest.approx(-math.log(0.25))
    # mixed batch: one plain label (CE), one set row, one NO_LOSS row; the mean over the two that count
    lg = torch.tensor([[0.0, 0.0, math.log(2.0)]] * 3)
    y = torch.tensor([[2], [NO_LOSS], [NO_LOSS]])
    sets = {0: torch.tensor([[False] * 3, [True, True, False], [False] * 3])}
    got = multi_attribute_ce([lg], y, ignore_index=NO_LOSS, sets=sets)
    assert got.item() == pytest.approx((-math.log(0.5) - math.log(0.5)) / 2)
    # gradients flow only into the set's logits relative to the rest
    lg2 = lg.clone().requires_grad_(True)
    multi_attribute_ce([lg2], y, ignore_index=NO_LOSS, sets=sets).backward()
    assert torch.all(lg2.grad[2] == 0)


def test_balanced_batches_give_each_domain_half():
    domains = np.array([0] * 100 + [1] * 10)
    batches = list(balanced_batches(domains, 20, np.random.default_rng(0)))
    assert len(batches) == 10  # the large domain visited once: 100 rows, 10 per batch
    for b in batches:
        assert (domains[b] == 0).sum() == 10 and (domains[b] == 1).sum() == 10
    first = np.concatenate(batches)[domains[np.concatenate(batches)] == 0]
    assert sorted(first) == list(range(100))
    # rows restrict the draw
    only = np.arange(0, 110, 2)
    assert all(np.isin(b, only).all() for b in balanced_batches(domains, 20, np.random.default_rng(1), only))


def _domain(rng, n, cats, shift):
    """Pooled-feature-like maps (n, 8, 2, 2): class c lights up channel c (+ 4 for the photo domain, whose
    channels 0-3 are noise), so a classifier trained on packshots alone has nothing to go on for photos."""
    x = rng.normal(0, 1.0, (n, 8, 2, 2)).astype(np.float32)
    for i, c in enumerate(cats):
        x[i, c + shift] += 3.0
    return x.astype(np.float16)


def _levels(x):
    return {"s16": x, "s32": x}  # the same maps at both levels the heads may read


def _fixture(seed=0):
    rng = np.random.default_rng(seed)
    n0 = 240
    types = rng.integers(0, 4, n0)
    colours = rng.integers(0, 2, n0)
    packshots = TrainData([f"p{i}" for i in range(n0)], _levels(_domain(rng, n0, types, 0)),
                          np.stack([types, colours], 1).astype(np.int64), np.full(n0, -1), SCHEMA)
    # photos: top -> Tshirts or Sweaters (either channel), dress -> Dresses, skirt -> Skirts
    n1 = 120
    pcat = rng.integers(0, 3, n1)
    true_type = np.array([rng.integers(0, 2) if c == 0 else c + 1 for c in pcat])
    photos = Catalog([Item(f"f{i}", None, {"category": PHOTO_CATS[c]}, split="train") for i, c in enumerate(pcat)],
                     AttributeSchema({"category": PHOTO_CATS}), name="photos")
    feats = SimpleNamespace(ids=[f"f{i}" for i in range(n1)], maps=_levels(_domain(rng, n1, true_type, 4)))
    test_cat = rng.integers(0, 3, 90)
    test_type = np.array([rng.integers(0, 2) if c == 0 else c + 1 for c in test_cat])
    test_maps = {k: torch.from_numpy(v.astype(np.float32)) for k, v in _levels(_domain(rng, 90, test_type, 4)).items()}
    return packshots, photos, feats, test_cat, test_maps


def _photo_accuracy(model, test_cat, test_maps):
    p = model.attribute_probabilities(test_maps)["type"][:, :len(TYPES)]
    best = [TYPES[i] for i in p.argmax(1).tolist()]
    return float(np.mean([b in MAPPING.map[PHOTO_CATS[c]] for b, c in zip(best, test_cat)]))


def test_mix_train_data_labels_sets_and_record():
    packshots, photos, feats, _, _ = _fixture()
    mixed, record = mix_train_data(packshots, photos, feats, MAPPING)
    n0 = len(packshots)
    assert len(mixed) == n0 + 120 and mixed.n_primary == n0 and mixed.mixed
    assert (mixed.domains[:n0] == 0).all() and (mixed.domains[n0:] == 1).all()
    assert (mixed.labels[n0:, 1] == NO_LOSS).all()  # colour: unknown for photos, no loss (not "unspecified")
    tops = [n0 + i for i, f in enumerate(feats.ids) if photos[f].attributes["category"] == "top"]
    dress = [n0 + i for i, f in enumerate(feats.ids) if photos[f].attributes["category"] == "dress"]
    assert (mixed.labels[tops, 0] == NO_LOSS).all() and mixed.label_sets[0][tops][:, :2].all()
    assert not mixed.label_sets[0][tops][:, 2:].any()
    assert (mixed.labels[dress, 0] == TYPES.index("Dresses")).all() and not mixed.label_sets[0][dress].any()
    assert not mixed.label_sets[0][:n0].any()
    assert record["catalog"] == "photos" and record["items"] == 120 and record["mapping"]["target_attribute"] == "type"
    assert mixed.primary().labels.shape == (n0, 2)
    batch = next(data_batches(mixed, 32, np.random.default_rng(0)))
    assert (mixed.domains[batch] == 1).sum() == 16
    bad = LabelMapping.from_json({"source_attribute": "category", "target_attribute": "type", "map": {"top": ["Tops"]}})
    with pytest.raises(CatalogError, match="Tops"):
        mix_train_data(packshots, photos, feats, bad)
    with pytest.raises(VestisError, match="not one of the run's attributes"):
        mix_train_data(packshots, photos, feats, LabelMapping.from_json(
            {"source_attribute": "category", "target_attribute": "size", "map": {"top": ["S"]}}))


@pytest.mark.parametrize("model_name", ["attribute_baseline", "amnet"])
def test_mixing_helps_the_second_domain(model_name, one_thread):
    packshots, photos, feats, test_cat, test_maps = _fixture()
    config = {"attribute_baseline": {"epochs": 30, "hidden": 32, "batch_size": 32, "visual_dim": 4},
              "amnet": {"pre_epochs": 30, "epochs": 3, "lr": 0.01, "batch_size": 32, "triplets_per_epoch": 128,
                        "hidden": 32, "dim": 16}}[model_name]
    accs = {}
    for mixed in (False, True):
        model = create_model(model_name, SCHEMA, {"s16": 8, "s32": 8}, config)
        data = mix_train_data(packshots, photos, feats, MAPPING)[0] if mixed else packshots
        model.fit(data, progress=False)
        model.eval()
        accs[mixed] = _photo_accuracy(model, test_cat, test_maps)
    # packshots only: the photo channels mean nothing to it (about chance over the 3 mapped sets and beyond);
    # mixed: the photos' own signal is learnt through the mapped (set-valued) labels
    assert accs[True] >= 0.85, accs
    assert accs[True] - accs[False] >= 0.3, accs


def test_cli_mix_records_both_catalogues_and_c2s_pipeline(tiny_pipeline, train_tiny, tmp_path, capsys):
    """`vestis train --mix` on the tiny synthetic catalogue plus a second catalogue (some of its photos under a
    coarser label), then consumer-to-shop queries from the second catalogue through search and eval --classify."""
    import csv
    import json

    from vestis.catalog import Catalog
    from vestis.cli import main

    root, cat, run, idx, cache = tiny_pipeline
    first = Catalog.load(cat)
    cats = list(first.schema.values("category"))
    coarse = {"a": cats[:2], "b": cats[2:]}
    photos = tmp_path / "photos"
    photos.mkdir()
    with open(photos / "catalog.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "image", "kind", "split"])
        for i, it in enumerate(list(first)[:60]):
            kind = "a" if it.attributes.get("category") in coarse["a"] else "b"
            w.writerow([f"ph{i}", str(it.image), kind, "train" if i < 40 else "query"])
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"source_attribute": "kind", "target_attribute": "category", "map": coarse}))
    mixed = train_tiny(tmp_path, cat, "attribute_baseline", {"epochs": 2, "hidden": 32, "batch_size": 32,
                       "attributes": ["category", "colour", "pattern"]}, cache, "--mix", str(photos),
                       "--mix-mapping", str(mapping), name="mixed")
    info = json.loads((mixed / "run.json").read_text())
    assert info["catalog"].endswith(" + photos")
    assert info["history"]["mix"]["items"] == 40 and info["history"]["mix"]["mapping"]["map"] == coarse
    assert main(["train", "--model", "attribute_baseline", "--catalog", str(cat), "--out", str(tmp_path / "x"),
                 "--cache", str(cache), "--mix", str(photos)]) == 2  # --mix without its mapping: refused
    q = tmp_path / "c2s.jsonl"
    assert main(["queries", "--protocol", "consumer_to_shop", "--catalog", str(photos), "--mapping", str(mapping),
                 "--out", str(q)]) == 0
    r = tmp_path / "r.jsonl"
    assert main(["search", "--run", str(run), "--index", str(idx), "--queries", str(q), "--output", str(r),
                 "--cache", str(cache), "--labels", "on"]) == 0
    capsys.readouterr()
    assert main(["eval", "--queries", str(q), "--rankings", str(r), "--catalog", str(cat), "--run", str(mixed),
                 "--classify", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "Consumer-to-shop" in out and "Category accuracy" in out

    # labels on, the mixed run: a shopper's photo takes preferences from the mapped attribute only, a packshot
    # on studio white from every attribute (the engine tells them apart by the photo's border)
    import io

    import numpy as np
    from PIL import Image

    from vestis import catalogue_ranking
    from vestis.engine import Engine

    midx = tmp_path / "mixed-idx"
    assert main(["index", "--run", str(mixed), "--catalog", str(cat), "--out", str(midx), "--split", "gallery",
                 "--cache", str(cache)]) == 0
    engine = Engine.load(mixed, midx, cache_dir=cache)
    assert engine.photo_preferences == ["category"]
    seen = []
    real_targets = catalogue_ranking.targets

    sets_seen = []

    def spy(*args, **kwargs):
        seen.append(args[5] if len(args) > 5 else kwargs.get("shopper"))
        sets_seen.append(args[6] if len(args) > 6 else kwargs.get("photo_sets"))
        return real_targets(*args, **kwargs)

    catalogue_ranking.targets = spy
    try:
        for bg in ((255, 255, 255), (120, 90, 60)):
            a = np.empty((200, 150, 3), np.uint8)
            a[:] = bg
            a[40:160, 40:110] = (30, 60, 150)
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, "JPEG", quality=92)
            assert len(engine.search(image=buf.getvalue(), k=5, labels=True).hits) == 5
        engine.search(item_id=next(iter(engine.catalog)).id, k=5, labels=True)
    finally:
        catalogue_ranking.targets = real_targets
    assert seen == [[False], [True], None]
    # the mapping's sets reach the ranking (a shopper's photo scores each value by its sets' probability)
    assert sets_seen[0] == {"category": [list(v) for v in json.loads(mapping.read_text())["map"].values()]}




def test_mix_dropout_drops_only_the_second_domains_rows():
    """`mix_dropout`: while training, the pooled features of rows from a second domain are dropped at rate p (the
    rest scaled by 1 / (1 - p)); the first catalogue's rows pass unchanged; no domain row, no change."""
    from vestis.models.attribute_baseline import drop_other_domains

    torch.manual_seed(0)
    x = torch.rand(400, 64) + 0.5
    x0 = x.clone()
    other = torch.zeros(400, dtype=torch.bool)
    other[::2] = True
    y = drop_other_domains(x, other, 0.5)
    assert torch.equal(y[~other], x[~other])  # packshot rows untouched
    dropped = y[other] == 0
    assert 0.45 < float(dropped.float().mean()) < 0.55
    assert torch.allclose(y[other][~dropped], 2 * x[other][~dropped])
    assert torch.equal(drop_other_domains(x, torch.zeros(400, dtype=torch.bool), 0.5), x)
    assert torch.equal(x, x0)  # the batch itself is not modified (it is a view of the cached features)
    assert not torch.equal(drop_other_domains(x, other, 0.5), y)  # fresh draws each step


@pytest.mark.parametrize("mixed", [False, True])
def test_mix_dropout_reaches_training_only_in_a_mixed_run(mixed, monkeypatch):
    """The option acts through `fit` on a mixed run's second-domain rows, and not at all on a run of one catalogue."""
    import vestis.models.attribute_baseline as ab

    calls = []
    real = ab.drop_other_domains
    monkeypatch.setattr(ab, "drop_other_domains", lambda x, other, p: calls.append((int(other.sum()), p)) or real(x, other, p))
    rng = np.random.default_rng(0)
    n = 64
    maps = {"s32": rng.random((n, 16, 2, 2), dtype=np.float32)}
    labels = rng.integers(0, 2, (n, 2))
    data = TrainData(ids=[f"i{i}" for i in range(n)], maps=maps, labels=labels, instances=np.full(n, -1),
                     schema=SCHEMA, domains=np.repeat([0, 1], n // 2) if mixed else None)
    model = create_model("attribute_baseline", SCHEMA, {"s32": 16},
                         {"hidden": 8, "epochs": 1, "batch_size": 16, "mix_dropout": 0.5})
    model.fit(data, progress=False)
    assert bool(calls) == mixed
    assert all(k > 0 and p == 0.5 for k, p in calls)


def test_mix_dropout_is_checked_as_a_share():
    from vestis.models.attribute_baseline import AttributeBaseline
    from vestis.models.config_check import ConfigError, check_config

    for bad in (1.0, -0.1, "half"):
        with pytest.raises(ConfigError, match="mix_dropout"):
            check_config("attribute_baseline", AttributeBaseline.default_config, {"mix_dropout": bad})
    check_config("attribute_baseline", AttributeBaseline.default_config, {"mix_dropout": 0.5})
