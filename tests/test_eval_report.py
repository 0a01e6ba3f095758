"""Report files: report.json parses back, report.md carries the tables, PNGs are valid images; comparisons."""

import json

import pytest
from PIL import Image

from vestis.catalog import AttributeSchema, Catalog, Item
from vestis.eval import evaluate
from vestis.eval.errors import EvalError
from vestis.eval.report import compare_reports, comparison_markdown, read_report, report_markdown, write_report
from vestis.machine import format_machine, machine_info

SCHEMA = AttributeSchema({"colour": ["red", "blue"], "length": ["long", "short"]})


def _report(first_ranked: list[str], run: str) -> dict:
    items = [Item("q1", None, {"colour": "blue", "length": "long"}, instance_id="p1", split="query"),
             Item("q2", None, {"colour": "red", "length": "short"}, instance_id="p9", split="query"),
             Item("g1", None, {"colour": "red", "length": "long"}, instance_id="p1", split="gallery"),
             Item("g2", None, {"colour": "red", "length": "short"}, instance_id="p2", split="gallery"),
             Item("g3", None, {"colour": "blue", "length": "long"}, instance_id="p3", split="gallery"),
             Item("g4", None, {"colour": "blue", "length": "short"}, instance_id="p4", split="gallery")]
    cat = Catalog(items, SCHEMA, name="tiny")
    target = {"colour": "red", "length": "long"}
    queries = [
        {"query_id": "m1", "item_id": "q1", "manipulations": {"colour": "red"}, "attribute": "colour",
         "target": target, "protocol": "manipulation"},
        {"query_id": "m2", "item_id": "q2", "manipulations": {"length": "long"}, "attribute": "length",
         "target": target, "protocol": "manipulation"},
        {"query_id": "m3", "item_id": "q2", "manipulations": {"colour": "blue", "length": "long"},
         "attribute": "colour+length", "target": {"colour": "blue", "length": "long"}, "protocol": "manipulation"},
        {"query_id": "a1", "item_id": "q1", "manipulations": {}, "attribute": "colour", "target": {"colour": "blue"},
         "protocol": "attribute"},
        {"query_id": "t1", "item_id": "g1", "positive_id": "g2", "negative_id": "g3", "manipulations": {},
         "attribute": "colour", "target": {"colour": "red"}, "protocol": "triplet"},
        {"query_id": "s1", "item_id": "q1", "manipulations": {}, "attribute": None, "target": {"instance_id": "p1"},
         "protocol": "same_item"},
    ]
    order = first_ranked + [g for g in ["g1", "g2", "g3", "g4"] if g not in first_ranked]
    rows = [{"query_id": q, "ranked": order} for q in ("m1", "m2", "m3", "a1", "s1")]
    rows.append({"query_id": "t1", "scores": [0.8, 0.3]})
    rep = evaluate(queries, rows, cat, query_sha256="0" * 64, query_file="q.jsonl", views="synthetic multi-view")
    rep["run"] = {"name": run}
    rep["machine"] = machine_info(check_accelerator=False)
    return rep


def test_write_report_files(tmp_path):
    rep = _report(["g2", "g1"], "amnet")
    paths = write_report(rep, tmp_path / "out")
    assert json.loads(paths["json"].read_text()) == rep
    assert read_report(tmp_path / "out") == rep
    md = paths["markdown"].read_text()
    assert "vestis-manipulation/1 + vestis-attribute/1 + vestis-same-item/1" in md
    assert "| Run | queries | Top-1 | Top-5 | Top-10 | Top-20 | Top-30 | Top-40 | Top-50 |" in md
    assert "| Run | colour (n=1) | length (n=1) |" in md  # per-attribute Top-30, single-attribute queries
    assert "| Run | colour+length (n=1) |" in md
    assert "NDCG@10" in md and "MAP (%)" in md and "Triplet accuracy" in md and "| Run | queries | R@1 |" in md
    assert "| over queries |" in md and "| over triplets |" in md
    assert "sha256 `" + "0" * 64 in md and "synthetic multi-view" in md
    assert "| amnet |" in md
    for key in ("top_k", "gallery_size", "recall"):
        p = paths[key]
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 200


def test_markdown_values():
    rep = _report(["g2", "g1"], "amnet")
    md = report_markdown(rep)
    # m1 and m2 (target g1 at rank 2) miss Top-1; m3 (target g3 at rank 3) too: all queries 0.0 / 100.0 at Top-5
    assert "| amnet | 3 | 0.0 | 100.0 |" in md


def test_compare_runs(tmp_path):
    a, b = _report(["g2", "g1"], "baseline"), _report(["g1"], "amnet")
    paths = compare_reports([a, b], tmp_path / "cmp")
    md = paths["markdown"].read_text()
    assert "| baseline | 3 |" in md and "| amnet | 3 |" in md
    assert set(json.loads(paths["json"].read_text())) == {"baseline", "amnet"}
    assert paths["top_k"].read_bytes()[:4] == b"\x89PNG"
    # figures measured on different query files are not put side by side silently
    c = dict(b, query_sha256="1" * 64)
    with pytest.raises(EvalError, match="query_sha256"):
        comparison_markdown([a, c])
    assert "Warning" in comparison_markdown([a, c], allow_mixed=True)
    # names override, duplicates get told apart
    md = comparison_markdown([a, a], names=["x", "x"])
    assert "| x |" in md and "| x (2) |" in md


def test_machine_info():
    info = machine_info()
    assert info["cores"] >= 1 and info["python"].count(".") == 2
    assert "accelerator" in info and "numpy" in info["versions"] and info["versions"]["numpy"]
    line = format_machine(info)
    assert "cores" in line and "GiB" in line
