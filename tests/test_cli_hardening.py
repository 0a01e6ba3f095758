"""Damaged or unusual files through the command line (issue 16): one clear line and exit 2, never a traceback;
catalogues that are not UTF-8 read with a warning; identifier columns and missing images said, not trained on
silently."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from vestis.cli import main


def _fails_in_one_line(capsys, argv, *expected):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


@pytest.fixture
def copies(tiny_pipeline, tmp_path):
    """Copies of the tiny run and index that a test may damage, and an item id to search for."""
    root, cat, run, idx, cache = tiny_pipeline
    shutil.copytree(run, tmp_path / "run")
    shutil.copytree(idx, tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "engine.json").read_text())
    meta["run_dir"] = str(tmp_path / "run")
    (tmp_path / "idx" / "engine.json").write_text(json.dumps(meta))
    item = json.loads((cat / "catalog.jsonl").read_text().splitlines()[0])["id"]
    return tmp_path / "run", tmp_path / "idx", cache, item


def _search(run, idx, cache, item):
    return ["search", "--run", str(run), "--index", str(idx), "--item", item, "--cache", str(cache), "--k", "3"]


def test_the_copies_search(copies, capsys):
    assert main(_search(*copies)) == 0


def _truncate(path: Path, n: int = 30) -> None:
    path.write_bytes(path.read_bytes()[:n])


def test_a_truncated_run_schema(copies, capsys):
    run, idx, cache, item = copies
    _truncate(run / "schema.json")
    # the run's sha256 fingerprint of schema.json catches it first, in one line
    _fails_in_one_line(capsys, _search(*copies), f"{run / 'schema.json'} changed since the run was saved")


def test_a_truncated_engine_json(copies, capsys):
    run, idx, cache, item = copies
    _truncate(idx / "engine.json")
    _fails_in_one_line(capsys, _search(*copies), f"{idx / 'engine.json'} is corrupt", "rebuild the index")


@pytest.mark.parametrize("change, message", [
    ({"trunk": "tf_efficientnet_lite0"}, "`trunk` must be an object"),
    ({"trunk": {"name": "tf_efficientnet_lite0", "resolution": "160x128"}}, "`trunk.resolution` must be [height, width]"),
    ({"channels": {"s32": -5}}, "`channels` must be an object of trunk levels and positive channel counts"),
    ({"config": {"hidden": -1}}, "model attribute_baseline: hidden must be at least 1 (got -1"),
    ({"config": {"dropout": 1.5}}, "dropout must lie between 0 and 1"),
    ({"config": {"epochs": "many"}}, "epochs must be an integer"),
    ({"config": {"lr": 0}}, "lr must be above 0"),
    ({"config": ["hidden"]}, "`config` must be an object"),
])
def test_a_damaged_run_json(copies, capsys, change, message):
    run, idx, cache, item = copies
    info = json.loads((run / "run.json").read_text())
    for k, v in change.items():
        info[k] = {**info[k], **v} if k == "config" and isinstance(v, dict) else v
    (run / "run.json").write_text(json.dumps(info))
    _fails_in_one_line(capsys, _search(*copies), str(run / "run.json"), message)


def test_a_truncated_catalogue_schema(tiny_pipeline, tmp_path, capsys):
    root, cat, run, idx, cache = tiny_pipeline
    shutil.copy(cat / "catalog.jsonl", tmp_path / "catalog.jsonl")
    (tmp_path / "schema.json").write_bytes((cat / "schema.json").read_bytes()[:50])
    _fails_in_one_line(capsys, ["ingest", str(tmp_path), "--no-image-check"], "schema.json is not a readable attribute schema")


@pytest.mark.parametrize("encoding, raw, name", [("cp1252", "cr\xe8me".encode("cp1252"), "Windows-1252"),
                                                  ("latin-1", b"cr\x81me", "Latin-1")])  # 0x81: not in cp1252
def test_a_csv_that_is_not_utf8_is_read_with_a_warning(tmp_path, capsys, encoding, raw, name):
    (tmp_path / "items.csv").write_bytes(b"id,image,colour\na1,a.jpg," + raw + b"\na2,b.jpg,red\n")
    assert main(["ingest", str(tmp_path / "items.csv"), "--no-image-check", "--json"]) == 0
    out = capsys.readouterr()
    assert f"items.csv is not UTF-8 (byte 0x{raw[2]:02x} at line 2, column 12); read as {name}" in out.err
    counts = json.loads(out.out)["attributes"]["colour"]["counts"]
    assert raw.decode(encoding) in counts and "red" in counts


def test_a_jsonl_line_that_is_not_utf8_is_named_and_skipped(tmp_path, capsys):
    good = json.dumps({"id": "a1", "image": "a.jpg", "colour": "red"}).encode()
    (tmp_path / "items.jsonl").write_bytes(good + b"\n" + b'{"id": "a2", "image": "b.jpg", "colour": "cr\xe8me"}\n')
    assert main(["ingest", str(tmp_path / "items.jsonl"), "--no-image-check"]) == 0
    assert "items.jsonl line 2: not UTF-8 (byte 0xe8 at column 45)" in capsys.readouterr().err


def test_a_bad_config_value_stops_training_before_it_starts(tiny_pipeline, tmp_path, capsys):
    root, cat, run, idx, cache = tiny_pipeline
    (tmp_path / "c.json").write_text(json.dumps({"hidden": -1}))
    _fails_in_one_line(capsys, ["train", "--model", "attribute_baseline", "--catalog", str(cat), "--out",
                                str(tmp_path / "r"), "--config", str(tmp_path / "c.json"), "--cache", str(cache)],
                       "hidden must be at least 1")


def test_train_leaves_out_identifier_columns_and_says_which_images_are_missing(tiny_pipeline, tmp_path, capsys):
    """A pandas export (an `Unnamed: 0` index column, a `sku` per item) of the tiny catalogue, 3 images gone."""
    root, cat, run, idx, cache = tiny_pipeline
    rows = [json.loads(line) for line in (cat / "catalog.jsonl").read_text().splitlines()]
    with open(tmp_path / "items.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Unnamed: 0", "id", "image", "sku", "colour", "pattern"])
        for i, r in enumerate(rows):
            w.writerow([i, r["id"], str(cat / r["image"]), f"SKU-{i:05d}", r["attributes"].get("colour", ""),
                        r["attributes"].get("pattern", "")])
    from vestis.catalog import Catalog
    train_ids = [it.id for it in Catalog.load(tmp_path / "items.csv").split("train")]
    gone = set(train_ids[:3])
    text = (tmp_path / "items.csv").read_text()
    for i in gone:
        text = text.replace(str(cat / f"images/{i}.jpg"), str(tmp_path / f"gone/{i}.jpg"))
    (tmp_path / "items.csv").write_text(text)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochs": 1, "hidden": 16}))
    argv = ["train", "--model", "attribute_baseline", "--catalog", str(tmp_path / "items.csv"), "--config", str(cfg),
            "--cache", str(cache)]
    assert main([*argv, "--out", str(tmp_path / "r1")]) == 0
    out = capsys.readouterr()
    assert "column 'Unnamed: 0' looks like an identifier" in out.err and "column 'sku' looks like an identifier" in out.err
    assert "name it in --attributes to train on it" in out.err
    assert f"warning: 3 of {len(train_ids)} train items have no image file and are not trained on: " in out.err
    assert "attributes: colour, pattern)" in out.out
    assert f"({len(train_ids) - 3} items," in out.out
    assert json.loads((tmp_path / "r1" / "schema.json").read_text())["attributes"].keys() == {"colour", "pattern"}
    assert main([*argv, "--out", str(tmp_path / "r2"), "--attributes", "Unnamed: 0,colour"]) == 0
    assert "looks like an identifier" not in capsys.readouterr().err
    assert list(json.loads((tmp_path / "r2" / "schema.json").read_text())["attributes"]) == ["Unnamed: 0", "colour"]


def test_every_model_default_config_passes_its_own_check():
    import vestis.models  # noqa: F401
    from vestis.models.base import MODELS
    from vestis.models.config_check import ConfigError, check_config

    assert len(MODELS) >= 5
    for name, cls in MODELS.items():
        check_config(name, cls.default_config, cls.default_config)
    with pytest.raises(ConfigError, match="batch_size must be an integer"):
        check_config("attribute_baseline", MODELS["attribute_baseline"].default_config, {"batch_size": True})
