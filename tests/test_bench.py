"""The benchmarks' shared parts (timing, recall, the command line) and the search benchmark's: the
feature-map-space gallery, the goal verdict."""

import time

import numpy as np
import pytest
import torch

from vestis.bench.gallery import _crop_boxes, augmented_gallery, cached_gallery, similar_items
from vestis.bench.recall import exact_scores, recall_at_k
from vestis.bench.search import format_report, goal_verdict, tiled_gallery
from vestis.bench.timing import Timings, time_calls
from vestis.cli import build_parser
from vestis.errors import VestisError
from vestis.machine import machine_info


def _maps(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return {"s16": rng.random((n, 3, 8, 6)).astype(np.float16), "s32": rng.random((n, 5, 4, 3)).astype(np.float16)}


def _embed(maps):  # a stand-in model on numpy maps: sensitive to position, so crops and flips show
    x = {k: torch.from_numpy(np.asarray(v)).float() for k, v in maps.items()}
    return torch.cat([x["s32"].flatten(1), x["s16"].mean((2, 3))], dim=1).numpy()


def test_crop_boxes_lie_inside_the_map():
    b = _crop_boxes(np.random.default_rng(0), 1000)
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 1 + 1e-9).all() and (b[:, 2:] > b[:, :2]).all()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    assert area.min() >= 0.5 and area.max() <= 1 + 1e-9


def test_augmented_gallery_keeps_real_items_and_adds_new_ones():
    maps = _maps()
    real = _embed(maps)
    g = augmented_gallery(_embed, maps, 100, seed=3)
    assert g.shape == (100, real.shape[1]) and g.dtype == np.float32
    np.testing.assert_allclose(g[:40], real, rtol=1e-6)
    new = g[40:]
    # new items are not copies of real ones, but stay in the real items' range
    d = ((new[:, None, :] - real[None]) ** 2).sum(-1).min(1)
    assert (d > 1e-6).all()
    assert new.min() >= real.min() - 1e-3 and new.max() <= real.max() + 1e-3
    np.testing.assert_array_equal(augmented_gallery(_embed, maps, 100, seed=3), g)  # seeded
    assert not np.array_equal(augmented_gallery(_embed, maps, 100, seed=4), g)
    np.testing.assert_allclose(augmented_gallery(_embed, maps, 10), real[:10], rtol=1e-6)


def test_similar_items_excludes_the_item_itself():
    nn = similar_items(_maps(30), k=5)
    assert nn.shape == (30, 5) and all(i not in row for i, row in enumerate(nn))


def test_cached_gallery_builds_once(tmp_path):
    calls = []
    def build():
        calls.append(1)
        return np.ones((3, 2), np.float32)
    a = cached_gallery(tmp_path, "k", build)
    b = cached_gallery(tmp_path, "k", build)
    assert len(calls) == 1 and np.array_equal(a, b)


def test_tiled_gallery_repeats_with_noise():
    x = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    t = tiled_gallery(x, 25)
    assert t.shape == (25, 4) and np.array_equal(t[:10], x) and not np.array_equal(t[10:20], x)


def test_exact_scores_ip_and_l2():
    x = np.array([[1, 0], [0, 2], [3, 4]], np.float32)
    q = np.array([[1, 1]], np.float32)
    np.testing.assert_allclose(exact_scores(x, q, "ip"), [[1, 2, 7]])
    np.testing.assert_allclose(exact_scores(x, q, "l2", chunk=2), [[-1, -2, -13]])


def test_recall_counts_tied_items_only_with_ties():
    # items 1 and 2 tie for the 2nd place: either one is a correct top-2 with ties; plain recall wants row 1
    scores = np.array([[0.1, 0.5, 0.5, 0.9]], np.float32)
    assert recall_at_k([[3, 2]], scores, 2) == (0.5, 1.0)
    assert recall_at_k([[3, 1]], scores, 2) == (1.0, 1.0)
    assert recall_at_k([[3, 0]], scores, 2) == (0.5, 0.5)
    assert recall_at_k([[3]], scores, 2) == (0.5, 0.5)  # a short answer loses the missing place
    assert recall_at_k([[3, -1]], scores, 2) == (0.5, 0.5)


def test_recall_over_allowed_items_only():
    # a filter allows rows 0 and 2 only: k shrinks to the 2 allowed items; a query with none is left out
    scores = np.array([[0.1, 0.9, 0.5, 0.8], [0.2, 0.3, 0.4, 0.5]], np.float32)
    scores[0, [1, 3]] = -np.inf
    scores[1, :] = -np.inf
    assert recall_at_k([[2, 0], [1]], scores, 3) == (1.0, 1.0)
    assert recall_at_k([[2, 1], [1]], scores, 3) == (0.5, 0.5)
    assert np.isnan(recall_at_k([[0]], scores[1:], 3).plain)


def test_recall_against_exact_search_of_real_vectors():
    rng = np.random.default_rng(0)
    x, q = rng.standard_normal((500, 8)).astype(np.float32), rng.standard_normal((20, 8)).astype(np.float32)
    scores = exact_scores(x, q)
    best = np.argsort(-scores, axis=1)[:, :10]
    assert recall_at_k(best.tolist(), scores, 10) == (1.0, 1.0)
    assert recall_at_k(best[:, ::-1].tolist(), scores, 10).plain == 1.0  # the right items in any order
    worst = np.argsort(scores, axis=1)[:, :10]
    assert recall_at_k(worst.tolist(), scores, 10) == (0.0, 0.0)


def test_time_calls_passes_and_percentiles():
    seen = []

    def call(x):
        seen.append(x)
        time.sleep(0.02 if x == "slow" else 0)
        return x.upper()

    t = time_calls(call, ["a", "slow", "b"], repeats=2, warmup=1)
    assert seen == ["a"] + ["a", "slow", "b"] * 2  # warm-up first, untimed
    assert t.seconds.shape == (2, 3) and t.results == ["A", "SLOW", "B"]
    assert t.seconds[:, 1].min() >= 0.02 and t.ms(100) >= 20.0
    # sleeping costs wall time, not CPU time; a busy loop costs both. The CPU time is the whole process's, so
    # threads an earlier test left running (a server, a pool) may add a little: a bound at half the sleep
    assert t.cpu_seconds.shape == (2, 3) and t.cpu_seconds[:, 1].min() < 0.01
    busy = time_calls(lambda x: sum(range(200_000)), [1, 2], repeats=1, warmup=0)
    assert busy.cpu_ms(50) > 0.1 * busy.ms(50) and busy.cpu_ms(50) <= busy.ms(50) * 1.05 + 0.05
    assert np.isnan(Timings(np.ones((1, 1))).cpu_ms(50))
    with pytest.raises(VestisError, match="repeats"):
        time_calls(call, ["a"], repeats=0)


def test_timings_take_the_median_over_passes_of_each_pass_percentile():
    t = Timings(np.array([[1, 2, 3, 4, 100], [1, 2, 3, 4, 5], [2, 3, 4, 5, 6]], dtype=float) / 1000)
    np.testing.assert_allclose(t.per_pass_ms(50), [3, 3, 4])
    assert t.ms(50) == pytest.approx(3.0) and t.ms(100) == pytest.approx(6.0)  # one slow pass moves nothing


def test_bench_subcommands_take_only_their_own_options():
    p = build_parser()
    a = p.parse_args(["bench", "serve", "--run", "r", "--index", "i"])
    assert (a.n, a.concurrency, a.repeats, a.catalog) == (2000, 8, 3, None)
    a = p.parse_args(["bench", "extract"])
    assert (a.n, a.batch_size, a.repeats, a.catalog) == (256, 32, 5, None)
    a = p.parse_args(["bench", "search", "--run", "r", "--index", "i", "--queries", "q", "--sweep"])
    assert (a.n, a.repeats, a.items, a.milvus_items, a.gallery, a.sweep) == (300, 3, 200_000, 20_000, "augmented", True)
    a = p.parse_args(["bench", "query", "--run", "r", "--index", "i", "--queries", "q"])
    assert (a.n, a.repeats) == (500, 3)
    for wrong in (["bench", "extract", "--concurrency", "2"], ["bench", "query", "--run", "r", "--index", "i",
                                                               "--queries", "q", "--sweep"],
                  ["bench", "serve", "--run", "r"], ["bench", "extract", "--repeats", "0"], ["bench"]):
        with pytest.raises(SystemExit):
            p.parse_args(wrong)


def test_bench_command_lines_of_the_readme_parse():
    p = build_parser()
    for line in ["bench extract --catalog data", "bench query --run r --index i --queries q --repeats 3",
                 "bench search --run r --index i --queries q --n 300 --repeats 3 --sweep",
                 "bench search --run r --index i --queries q --items 8767 --kinds auto,flat --milvus-items 0",
                 "bench search --run r --index i --queries q --items 200000 --mode same_item --kinds auto "
                 "--ef-search 64,128 --milvus-items 0 --threads 1",
                 "bench serve --run r --index i --repeats 3", "bench serve --run r --index i --n 2000 --concurrency 8"]:
        p.parse_args(line.split())


def test_machine_info_names_cores_and_load():
    m = machine_info(check_accelerator=False)
    assert m["cores_usable"] >= 1 and (m["load_average"] is None or len(m["load_average"]) == 3)


def _report(p50, recall, items=200_000):
    row = {"backend": "faiss", "kind": "auto", "built": "hnsw", "options": {"M": 32}, "items": items,
           "queries": 3, "build_s": 1.0, "p50_ms": p50, "p99_ms": 2 * p50, "recall": recall,
           "recall_ties": recall, "default": True}
    return {"run_id": "r", "model": "m", "dim": 4, "metric": "ip", "k": 30, "items": items, "gallery": "augmented",
            "gallery_description": "test", "queries": 3, "repeats": 1, "threads_build": 2, "rows": [row],
            "embed_query_p50_ms": 0.4, "embed_query_p99_ms": 0.9, "encoding_p50_ms": 5.0, "encoding_p99_ms": 6.0,
            "machine": {"cores_usable": 2, "cpu": "x", "memory_gib": 1, "python": "3.12.3", "load_average": [0.5, 0.4, 0.3],
                        "versions": {"faiss-cpu": "1.2"}}}


def test_goal_verdict():
    assert "**met**" in goal_verdict(_report(0.8, 0.98))
    assert "**not met**" in goal_verdict(_report(6.0, 0.98))
    assert "**not met**" in goal_verdict(_report(0.8, 0.90))
    assert "**not judged**" in goal_verdict(_report(0.8, 0.98, items=8767))
    text = format_report(_report(0.8, 0.98))
    assert "auto -> hnsw (default)" in text and "**met**" in text and "alone (`embed_query`, no index): p50 0.40" in text
    assert "machine: 2 cores, 1 GiB, x, no accelerator; Python 3.12.3, faiss-cpu 1.2; load average 0.50, 0.40, 0.30 at the end" in text


def test_milvus_verdict_at_1m_without_faiss_rows():
    """A Milvus-only report at 1M items (--kinds ''): the server's goal is judged on its first unfiltered row, p50
    under 20 ms and recall@30 at least 0.95; below 1M it is not judged."""
    def server(p50, recall, items=1_000_000):
        rep = _report(p50, recall, items)
        rep["rows"] = [{**rep["rows"][0], "backend": "milvus-server", "default": False, "options": {"ef_search": 256}},
                       {**rep["rows"][0], "backend": "milvus-server", "default": False, "filter": "broad",
                        "p50_ms": 900.0, "recall_ties": 0.5}]
        return goal_verdict(rep)

    assert server(10.9, 0.974).endswith("Milvus server at 1000000 items (goal p50 < 20 ms at recall@30 >= 0.95): "
                                        "**met**, p50 10.90 ms, recall@30 0.9740 (ef_search 256).")
    assert server(10.9, 0.974).startswith("The default index (`auto`) was not measured.")
    assert "**not met**, p50 25.00 ms" in server(25.0, 0.99)
    assert "**not met**" in server(10.9, 0.90)
    assert "Milvus server" not in server(10.9, 0.974, items=200_000)


def test_augmented_gallery_of_the_read_levels_only_is_the_same():
    """Augmenting only the levels `embed` reads (and the partner maps only where mixed in) leaves the vectors as they
    were with every level augmented."""
    rng = np.random.default_rng(0)
    maps = {"s16": rng.standard_normal((30, 4, 6, 4)).astype(np.float16),
            "s32": rng.standard_normal((30, 8, 5, 4)).astype(np.float16)}
    seen = []

    def embed(m):
        seen.append(sorted(m))
        return m["s32"].astype(np.float32).mean(axis=(2, 3))

    every = augmented_gallery(embed, maps, 90, seed=2)
    assert seen[-1] == ["s16", "s32"]
    only = augmented_gallery(embed, maps, 90, seed=2, levels=("s32",))
    assert seen[-1] == ["s32"]
    np.testing.assert_array_equal(only, every)


def test_gallery_sources_name_each_new_items_base_item():
    """gallery_sources gives the real item every vector was made from: a new item made without a mix and without
    a crop would be its base item's vector, so with a model that reads only a map's mean over space and crops
    that cover the whole map, each unmixed new vector equals its source's."""
    from vestis.bench import gallery as g
    from vestis.bench.gallery import gallery_sources

    rng = np.random.default_rng(1)
    maps = {"s32": rng.standard_normal((25, 6, 1, 1)).astype(np.float16)}  # 1x1 maps: any crop resamples the cell
    embed = lambda m: m["s32"].astype(np.float32).reshape(len(m["s32"]), -1)  # noqa: E731
    out = augmented_gallery(embed, maps, 80, seed=5)
    src = gallery_sources(25, 80, seed=5)
    assert src.shape == (80,) and (src[:25] == np.arange(25)).all()
    real = embed(maps)
    same = np.isclose(out, real[src], atol=1e-6).all(axis=1)
    assert same[:25].all() and 0.3 < same[25:].mean() < 0.7  # about half are not mixed (P_MIX 1/2)
    other = gallery_sources(25, 80, seed=6)
    assert not np.array_equal(other, src)
    assert g.P_MIX == 0.5
    np.testing.assert_array_equal(gallery_sources(25, 10), np.arange(10))
