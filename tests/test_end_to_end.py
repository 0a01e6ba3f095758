"""One end-to-end run on a tiny synthetic catalogue, through the command line a user types:
synth -> train -> index -> queries -> search -> eval, plus the engine API and its errors."""

import json

import numpy as np

import pytest
import torch

from vestis.cli import main


@pytest.fixture(scope="module")
def pipeline(tiny_pipeline):
    return tiny_pipeline


def test_default_index_kind_auto_searches_a_small_catalogue_exactly(pipeline):
    root, cat, run, idx, cache = pipeline
    meta = json.loads((idx / "engine.json").read_text())
    assert meta["kind"] == "auto" and meta["kinds"] == {"main": "flat", "visual": "flat", "labels": "flat",
                                                        "attr_category": "flat", "attr_colour": "flat",
                                                        "attr_pattern": "flat"}


def test_cli_pipeline_writes_rankings_and_report(pipeline, capsys):
    root, cat, run, idx, cache = pipeline
    q = root / "q.jsonl"
    assert main(["queries", "--catalog", str(cat), "--protocol", "manipulation", "--out", str(q),
                 "--attributes", "category,colour,pattern", "--per-attribute", "5"]) == 0
    queries = [json.loads(line) for line in q.read_text().splitlines()]
    assert queries and all(set(x["target"]) == {"category", "colour", "pattern"} for x in queries)
    r = root / "r.jsonl"
    assert main(["search", "--run", str(run), "--index", str(idx), "--queries", str(q), "--output", str(r),
                 "--cache", str(cache)]) == 0
    rows = [json.loads(line) for line in r.read_text().splitlines()]
    assert [x["query_id"] for x in rows] == [x["query_id"] for x in queries]
    for x, qq in zip(rows, queries):
        assert qq["item_id"] not in x["ranked"]
    assert main(["eval", "--queries", str(q), "--rankings", str(r), "--catalog", str(cat), "--run", str(run),
                 "--no-curve", "--report", str(root / "rep")]) == 0
    rep = json.loads((root / "rep" / "report.json").read_text())
    assert rep["protocol"].startswith("vestis-manipulation/") and rep["n_scored"] == len(queries)
    assert (root / "rep" / "top_k.png").is_file()


def test_engine_search_modes_and_errors(pipeline):
    from vestis.engine import Engine, EngineError
    from vestis.errors import UnknownAttributeError, UnknownValueError

    root, cat, run, idx, cache = pipeline
    eng = Engine.load(run, idx, cache_dir=cache)
    gallery = set(eng.spaces["main"].ids())
    query = next(it for it in eng.catalog if it.id not in gallery and "colour" in it.attributes)
    new = next(v for v in eng.model.schema.values("colour") if v != query.attributes["colour"])
    hits = eng.search(item_id=query.id, manipulations={"colour": new}, k=5)
    assert 0 < len(hits) <= 5 and all(h.id in gallery for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # cached features == freshly encoded (vision only: with labels on an item query's own labels are its preferences)
    by_image = eng.search(image=query.image, manipulations={"colour": new}, k=5, labels=False)
    assert [h.id for h in by_image] == [h.id for h in eng.search(item_id=query.id, manipulations={"colour": new}, k=5,
                                                               labels=False)]
    assert hits.labels == "on" and all(h.attributes.get("colour") in (new, None) for h in hits if h.matches["colour"])
    vis = eng.search(item_id=query.id, mode="visual", k=3)
    assert len(vis) == 3
    only = eng.search(item_id=query.id, k=5, filters={"colour": new})
    assert all(h.attributes.get("colour") == new for h in only)
    with pytest.raises(UnknownValueError, match="valid values"):
        eng.search(item_id=query.id, manipulations={"colour": "navy"})
    with pytest.raises(UnknownAttributeError):
        eng.search(item_id=query.id, manipulations={"sleeves": "long"})
    with pytest.raises(EngineError, match="mode"):
        eng.search(item_id=query.id, mode="psychic")
    with pytest.raises(EngineError, match="k must be"):
        eng.search(item_id=query.id, k=0)


def test_index_from_another_run_is_refused(pipeline, tmp_path):
    from vestis.engine import Engine, EngineError

    root, cat, run, idx, cache = pipeline
    other = tmp_path / "other"
    assert main(["train", "--model", "visual", "--catalog", str(cat), "--out", str(other), "--cache", str(cache)]) == 0
    with pytest.raises(EngineError, match="was built with run"):
        Engine.load(other, idx, cache_dir=cache)
    assert main(["search", "--run", str(other), "--index", str(idx), "--item", "s000000", "--cache", str(cache)]) == 2


def test_demo_runs_and_second_run_reuses(tmp_path, capsys):
    args = ["demo", "--workdir", str(tmp_path / "demo"), "-n", "120", "--cache", str(tmp_path / "cache"), "--no-serve"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "[5/5] search" in first and "training attribute_baseline" in first
    assert "vestis serve --run" in first  # --no-serve: says how to serve instead of serving
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "synthetic catalogue: reusing" in second and "model: reusing" in second and "index: reusing" in second
    assert "encoded 0" in second


@pytest.fixture(scope="module")
def bench_queries(pipeline):
    root, cat, run, idx, cache = pipeline
    q = root / "qb.jsonl"
    assert main(["queries", "--catalog", str(cat), "--protocol", "manipulation", "--out", str(q),
                 "--attributes", "category,colour,pattern", "--per-attribute", "3"]) == 0
    return q


def test_bench_query_times_manipulation_plus_search(pipeline, bench_queries, capsys):
    root, cat, run, idx, cache = pipeline
    q = bench_queries
    assert main(["bench", "query", "--run", str(run), "--index", str(idx), "--queries", str(q), "--n", "5",
                 "--repeats", "2", "--cache", str(cache)]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["queries"] == min(5, len(q.read_text().splitlines())) and r["repeats"] == 2 and r["k"] == 30
    assert 0 < r["manipulation_p50_ms"] and 0 < r["search_p50_ms"] and r["p50_ms"] <= r["p99_ms"]
    assert r["gallery_size"] > 0 and r["index"].endswith("flat")


def test_bench_search_reports_rows_and_verdict(pipeline, bench_queries, capsys):
    root, cat, run, idx, cache = pipeline
    q = bench_queries
    assert main(["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(q), "--n", "5",
                 "--repeats", "1", "--items", "400", "--milvus-items", "0", "--kinds", "auto,flat,hnsw",
                 "--json", str(root / "bench.json"), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "| faiss | auto -> flat (default) |" in out and "| faiss | hnsw |" in out
    assert "**not judged** (400 items" in out and "`embed_query`, no index" in out
    rep = json.loads((root / "bench.json").read_text())
    assert rep["items"] == 400 and [r["kind"] for r in rep["rows"]] == ["auto", "flat", "hnsw"]
    flat = rep["rows"][1]
    assert flat["recall_ties"] == 1.0 and flat["items"] == 400
    # CPU time beside wall time, and the index search alone (no query vector) below the whole query
    assert all(0 < r["cpu_p50_ms"] and 0 < r["search_p50_ms"] for r in rep["rows"])
    assert rep["embed_query_cpu_p50_ms"] > 0 and "CPU p50 ms | search alone p50 ms" in out
    assert [r["default"] for r in rep["rows"]] == [True, False, False]


def test_bench_search_ef_search_rows_on_the_auto_graph(pipeline, bench_queries, capsys):
    from vestis.bench.search import default_configs

    cfgs = default_configs(0, ("auto", "flat"), ef_search=(64, 128))
    assert cfgs[0].searches == [{}, {"ef_search": 64}, {"ef_search": 128}] and cfgs[1].searches == [{}]
    root, cat, run, idx, cache = pipeline
    args = ["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(bench_queries), "--n", "3",
            "--repeats", "1", "--items", "400", "--milvus-items", "0", "--kinds", "auto", "--cache", str(cache)]
    # 400 items: auto builds flat, which has no graph to search more or less widely: no extra rows
    assert main(args + ["--ef-search", "64", "--json", str(root / "ef.json")]) == 0
    assert [r["built"] for r in json.loads((root / "ef.json").read_text())["rows"]] == ["flat"]
    capsys.readouterr()
    assert main(args + ["--ef-search", "64,x"]) == 2
    assert "--ef-search takes positive integers" in capsys.readouterr().err


def test_bench_search_filtered_rows_and_memory(pipeline, bench_queries, capsys):
    """--filters: each filter is a row per index, its recall against the exact top k among the matching items (new
    gallery items carry their source item's attributes), and every row says how much memory its index took."""
    root, cat, run, idx, cache = pipeline
    from vestis.catalog import Catalog

    colour = Catalog.load(cat).schema.values("colour")[0]
    filters = {"narrow": {"colour": colour}, "broad": {"category": ["t-shirt", "shirt", "dress", "trousers", "skirt"]}}
    assert main(["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(bench_queries),
                 "--n", "5", "--repeats", "1", "--items", "400", "--milvus-items", "0", "--kinds", "flat,hnsw",
                 "--filters", json.dumps(filters), "--json", str(root / "bench-f.json"), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "| narrow {" in out and "Peak resident memory" in out
    rep = json.loads((root / "bench-f.json").read_text())
    assert [(r["kind"], r["filter"]) for r in rep["rows"]] == [(k, f) for k in ("flat", "hnsw")
                                                              for f in (None, "narrow", "broad")]
    for r in rep["rows"]:
        assert r["rss_index_mb"] >= 0
        if r["filter"]:
            assert 0 < r["filter_share"] < 1
        if r["kind"] == "flat":
            assert r["recall_ties"] == 1.0  # exact search, with and without filters: the recall is computed right
    assert rep["max_rss_mb"] > 0
    assert main(["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(bench_queries),
                 "--items", "400", "--filters", "[1]", "--cache", str(cache)]) == 2
    assert "--filters must map a name" in capsys.readouterr().err


def test_bench_search_times_an_attribute_space(pipeline, bench_queries, capsys):
    """`--mode attribute:<name>` times the attribute's own space (attribute_baseline: p_q . p_c over its values)."""
    root, cat, run, idx, cache = pipeline
    assert main(["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(bench_queries),
                 "--n", "5", "--repeats", "1", "--items", "300", "--milvus-items", "0", "--kinds", "auto,flat",
                 "--mode", "attribute:colour", "--json", str(root / "bench-attr.json"), "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "mode attribute:colour (space attr_colour)" in out and "The query vector alone" in out
    rep = json.loads((root / "bench-attr.json").read_text())
    from vestis.catalog import Catalog

    n_colours = len(Catalog.load(cat).schema.values("colour"))
    assert rep["space"] == "attr_colour" and rep["dim"] == n_colours and rep["rows"][1]["recall_ties"] == 1.0
    assert main(["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(bench_queries),
                 "--n", "2", "--items", "300", "--milvus-items", "0", "--mode", "attribute:nope", "--cache", str(cache)]) == 2
    assert "unknown attribute 'nope'" in capsys.readouterr().err


def test_bench_search_times_same_item_queries(pipeline, bench_queries, capsys):
    """`--mode same_item` times the plain item vector in the main space (same-product search, Park et al.)."""
    root, cat, run, idx, cache = pipeline
    assert main(["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(bench_queries),
                 "--n", "4", "--repeats", "1", "--items", "300", "--milvus-items", "0", "--kinds", "auto,flat",
                 "--mode", "same_item", "--json", str(root / "bench-same.json"), "--cache", str(cache)]) == 0
    rep = json.loads((root / "bench-same.json").read_text())
    assert rep["mode"] == "same_item" and rep["space"] == "main" and rep["rows"][1]["recall_ties"] == 1.0
    assert "mode same_item" in capsys.readouterr().out
    assert main(["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(bench_queries),
                 "--n", "2", "--items", "300", "--milvus-items", "0", "--mode", "diverse", "--cache", str(cache)]) == 2
    assert "not 'diverse'" in capsys.readouterr().err


def test_bench_labels_times_the_catalogue_aware_query_and_its_recall(pipeline, bench_queries, capsys):
    root, cat, run, idx, cache = pipeline
    assert main(["bench", "labels", "--run", str(run), "--index", str(idx), "--queries", str(bench_queries),
                 "--n", "5", "--repeats", "1", "--items", "400", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "400 items" in out and "FAISS flat" in out  # 400 vectors: kind auto searches exactly
    recall = float(out.split("same filter: ")[1].split(" ")[0])
    assert recall == 1.0  # exact search: the constrained results are the exact top k under the filter
    assert "p50 **" in out


def test_protocol2_through_the_command_line_with_triplets_batched(pipeline, engine, capsys):
    """Attribute MAP and triplet queries, searched and scored by the CLI; a triplet's scores are the inner products
    of the plan's query vector with x+ and x- in the attribute's space (attribute_baseline: p_q . p_c), whatever
    the batch."""
    from vestis.eval.queries import read_queries
    from vestis.eval.runners import triplet_scores

    root, cat, run, idx, cache = pipeline
    for protocol in ("attribute", "triplet"):
        q, r = root / f"p2-{protocol}.jsonl", root / f"p2-{protocol}-rankings.jsonl"
        assert main(["queries", "--catalog", str(cat), "--protocol", protocol, "--out", str(q),
                     "--attributes", "category,colour", "--per-attribute", "6"]) == 0
        assert main(["search", "--run", str(run), "--index", str(idx), "--queries", str(q), "--output", str(r),
                     "--labels", "off", "--cache", str(cache)]) == 0
        assert main(["eval", "--queries", str(q), "--rankings", str(r), "--catalog", str(cat),
                     "--report", str(root / f"p2-{protocol}-report")]) == 0
    for protocol in ("attribute", "triplet"):
        rep = json.loads((root / f"p2-{protocol}-report" / "report.json").read_text())
        assert set(rep[protocol]["per_attribute"]) == {"category", "colour"}
    assert 0 <= rep["triplet"]["overall"] <= 1
    triplets = read_queries(root / "p2-triplet.jsonl")
    batched, one_by_one = triplet_scores(engine, triplets), triplet_scores(engine, triplets, batch=1)
    assert [r["query_id"] for r in batched] == [t["query_id"] for t in triplets]
    for a, b in zip(batched, one_by_one):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    t = triplets[0]
    maps = engine.item_maps([t["item_id"], t["positive_id"], t["negative_id"]])
    with torch.inference_mode():
        v = engine.model.embed(maps, f"attr_{t['attribute']}").numpy()
    assert batched[0]["scores"] == pytest.approx([float(v[1] @ v[0]), float(v[2] @ v[0])], abs=1e-5)


def test_index_builds_value_graphs_from_one_option(pipeline, bench_queries, capsys, tmp_path):
    """`vestis index --options '{"value_graphs": [...]}'`: every HNSW space gets a graph per value (issue 15; a flat
    `auto` space accepts the option and stays exact), saved with its manifest; `vestis bench search` takes the same
    build option and measures the walk without the graphs beside it (--search-options)."""
    from vestis.index import load_index, read_manifest

    root, cat, run, idx, cache = pipeline
    out = tmp_path / "vg-idx"
    assert main(["index", "--run", str(run), "--catalog", str(cat), "--out", str(out), "--split", "gallery",
                 "--kind", "hnsw", "--options", '{"value_graphs": ["category"]}', "--cache", str(cache)]) == 0
    manifests = sorted(p.parent for p in out.rglob("manifest.json"))
    with_graphs = [d for d in manifests if read_manifest(d).options["value_graphs"]]
    assert len(manifests) > 1 and [d.name for d in with_graphs] == ["main"]  # index options go to the main space
    for d in with_graphs:
        assert read_manifest(d).options["value_graphs"] == ["category"]
        index = load_index(d)
        assert index._graphs.graphs and sum(g.entries for g in index._graphs.graphs.values()) == len(index)
        values = sorted(index._items.codes["category"], key=lambda v: -(index._items.col("category")
                                                                          == index._items.codes["category"][v]).sum())
        q = np.random.default_rng(0).standard_normal((3, index.dim)).astype(np.float32)
        f = {"category": values[:2]}
        assert index.search(q, 10, filters=f).ids == index.search(q, 10, filters=f, exact=True).ids
    capsys.readouterr()
    args = ["bench", "search", "--run", str(run), "--index", str(idx), "--queries", str(bench_queries), "--n", "3",
            "--repeats", "1", "--items", "400", "--milvus-items", "0", "--kinds", "hnsw", "--cache", str(cache),
            "--filters", '{"broad": {"category": ["t-shirt", "shirt", "dress"]}}']
    assert main(args + ["--index-options", '{"value_graphs": ["category"]}', "--json", str(root / "vg.json")]) == 0
    rows = json.loads((root / "vg.json").read_text())["rows"]
    assert [r["filter"] for r in rows] == [None, "broad"] and all(r["options"]["value_graphs"] == ["category"]
                                                                 for r in rows)
    capsys.readouterr()
    assert main(args + ["--search-options", '{"value_graphs": false}']) == 2
    assert "--search-options must be a JSON list" in capsys.readouterr().err
