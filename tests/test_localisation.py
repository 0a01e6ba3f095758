"""Box scores (known answers), `vestis localisation` and `vestis explain` on a tiny synthetic catalogue."""

import json

import pytest
from PIL import Image

from vestis.cli import main
from vestis.eval.localisation import box_iou, box_scores, mirror, peak_cell, points_inside, summarise


def test_box_scores_known_answers():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    s = box_scores((0, 0, 4, 4), (1, 1, 3, 3))  # the box contains the region: full coverage, 1/4 precise
    assert s == {"iou": pytest.approx(0.25), "coverage": pytest.approx(1.0), "precision": pytest.approx(0.25)}
    assert box_scores((0, 0, 0, 0), (0, 0, 1, 1))["precision"] == 0.0  # an empty box, no division by zero
    summary = summarise([{"iou": 0.6, "coverage": 1.0, "precision": 0.6}, {"iou": 0.2, "coverage": 0.4, "precision": 0.5}])
    assert summary["n"] == 2 and summary["iou_0.5"] == 0.5 and summary["coverage_0.5"] == 0.5
    assert summary["mean_iou"] == pytest.approx(0.4) and summary["mean_precision"] == pytest.approx(0.55)


def test_pointing_game_known_answers():
    import numpy as np

    m = np.zeros((4, 3))
    m[2, 1] = 5.0
    m[0, 0] = 4.0
    assert peak_cell(m) == (1.0, 2.0, 2.0, 3.0)  # column 1, row 2
    assert points_inside((1.5, 2.5), (1, 2, 2, 3)) and points_inside((1.0, 2.0), (1, 2, 2, 3))  # edges count
    assert not points_inside((0.5, 2.5), (1, 2, 2, 3))
    rows = [{"iou": 0.1, "coverage": 0.1, "precision": 0.1, "pointing": 1.0},
            {"iou": 0.1, "coverage": 0.1, "precision": 0.1, "pointing": 0.0},
            {"iou": 0.1, "coverage": 0.1, "precision": 0.1, "pointing": 1.0}]
    assert summarise(rows)["pointing"] == pytest.approx(2 / 3)
    assert "pointing" not in summarise([{"iou": 0.1, "coverage": 0.1, "precision": 0.1}])
    assert mirror((10, 5, 20, 9), (0, 0, 100, 50)) == (80, 5, 90, 9)  # about x = 50
    assert summarise([{**rows[1], "pointing_mirrored": 1.0}])["pointing_mirrored"] == 1.0


TINY_FSN = {"width": 16, "reduce": 8, "dim": 8, "roi": 2, "batch_size": 32, "epochs_cls": 1, "epochs": 1,
            "global_epochs": 1, "global_steps": 5, "global_batch": 32,
            "attributes": ["category", "colour", "sleeve", "neckline"]}
UNTRAINED = {"epochs_cls": 0, "epochs": 0, "global_epochs": 0}


@pytest.fixture(scope="module")
def fsn_run(tmp_path_factory, train_tiny):
    root = tmp_path_factory.mktemp("loc")
    cache, cat = root / "cache", root / "cat"
    assert main(["synth", "-n", "120", "--seed", "3", "--out", str(cat), "--workers", "1"]) == 0
    run = train_tiny(root, cat, "fashionsearchnet", TINY_FSN, cache)
    return root, cat, run, cache


def _localisation(root, cat, run, cache, name):
    assert main(["localisation", "--run", str(run), "--catalog", str(cat), "--split", "all",
                 "--report", str(root / name), "--cache", str(cache)]) == 0
    return json.loads((root / name / "localisation.json").read_text())


def test_localisation_scores_every_labelled_region_against_the_whole_image_floor(fsn_run, capsys):
    root, cat, run, cache = fsn_run
    assert main(["localisation", "--run", str(run), "--catalog", str(cat), "--split", "all",
                 "--report", str(root / "loc"), "--cache", str(cache)]) == 0
    rep = json.loads((root / "loc" / "localisation.json").read_text())
    items = [json.loads(line) for line in (cat / "catalog.jsonl").read_text().splitlines()]
    assert rep["n_items"] == len(items) and set(rep["attributes"]) == {"category", "colour", "sleeve", "neckline"}
    n_sleeve = sum("sleeve" in it.get("regions", {}) for it in items)
    assert rep["attributes"]["sleeve"]["boxes"]["n"] == n_sleeve > 0
    for r in rep["attributes"].values():
        assert 0.0 < r["area_share"] <= 1.0 + 1e-9
        for part in ("boxes", "whole_image"):
            assert 0.0 <= r[part]["mean_iou"] <= 1.0 and 0.0 <= r[part]["mean_precision"] <= 1.0
        # the whole picture covers every region entirely
        assert r["whole_image"]["coverage_0.5"] == 1.0
    assert "| sleeve |" in (root / "loc" / "localisation.md").read_text()


def test_trained_paper_boxes_localise_colour_better_than_untrained_and_whole_image(fsn_run, train_tiny):
    """Colour mean IoU on the 120 synthetic images, the whole picture scoring 0.410. Measured over the heads'
    initialisation (torch seeds 0-3): box_mode "paper", 12 + 6 epochs 0.464, 0.480, 0.448, 0.458; untrained
    0.419, 0.431, 0.414, 0.413. The bar (seed 0): 0.03 above the whole picture and 0.02 above the untrained
    run. The default "minmax" boxes are all but inert here (12 + 6 epochs: 0.437, 0.416, 0.454, 0.412, box area
    0.91-0.99 of the picture; the fixture run above 0.411), so no margin is required of them."""
    import torch

    root, cat, _, cache = fsn_run
    paper = {**TINY_FSN, "box_mode": "paper"}
    torch.manual_seed(0)  # the heads' initialisation draws from the global generator
    trained = train_tiny(root, cat, "fashionsearchnet", {**paper, "epochs_cls": 12, "epochs": 6}, cache, name="paper")
    torch.manual_seed(0)
    untrained = train_tiny(root, cat, "fashionsearchnet", {**paper, **UNTRAINED}, cache, name="paper0")
    got = _localisation(root, cat, trained, cache, "loc-paper")["attributes"]["colour"]
    before = _localisation(root, cat, untrained, cache, "loc-paper0")["attributes"]["colour"]
    iou, whole = got["boxes"]["mean_iou"], got["whole_image"]["mean_iou"]
    assert iou > whole + 0.03 and iou > before["boxes"]["mean_iou"] + 0.02, (iou, before["boxes"]["mean_iou"], whole)
    assert before["boxes"]["mean_iou"] < whole + 0.03
    assert got["area_share"] < 0.9  # the boxes are not the whole picture


def test_explain_writes_an_overlay_per_image_and_rejects_bad_input(fsn_run, train_tiny, capsys, tmp_path):
    root, cat, run, cache = fsn_run
    images = sorted((cat / "images").glob("*.jpg"))[:2]
    assert main(["explain", *map(str, images), "--run", str(run), "--out", str(tmp_path / "ex"),
                 "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    for im in images:
        png = tmp_path / "ex" / f"{im.stem}-explain.png"
        assert png.is_file() and Image.open(png).size[0] > 100
        assert str(png) in out
    assert "colour" in out and "box (" in out
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["explain", str(bad), "--run", str(run), "--out", str(tmp_path / "ex2"), "--cache", str(cache)]) == 2
    assert "bad.jpg" in capsys.readouterr().err and not (tmp_path / "ex2").exists()
    # attribute_baseline explains with Grad-CAM through the same command
    ab = train_tiny(root, cat, "attribute_baseline", {"epochs": 1, "attributes": ["category", "colour"]}, cache,
                    name="ab")
    capsys.readouterr()
    assert main(["explain", str(images[0]), "--run", str(ab), "--out", str(tmp_path / "ab.png"), "--cache", str(cache)]) == 0
    assert (tmp_path / "ab.png").is_file() and "colour" in capsys.readouterr().out
    # a model without explanation maps says so
    base = root / "base"
    assert main(["train", "--model", "visual", "--catalog", str(cat), "--out", str(base), "--cache", str(cache)]) == 0
    capsys.readouterr()
    assert main(["explain", str(images[0]), "--run", str(base), "--cache", str(cache)]) == 2
    assert "no explanation maps" in capsys.readouterr().err
