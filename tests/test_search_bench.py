"""The search benchmark's parts: the feature-map-space gallery, recall with ties, the goal verdict."""

import numpy as np
import torch

from vestis.bench_gallery import _crop_boxes, augmented_gallery, cached_gallery, similar_items
from vestis.index.bench import exact_scores, recall_with_ties
from vestis.search_bench import format_report, goal_verdict, tiled_gallery


def _maps(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return {"s16": rng.random((n, 3, 8, 6)).astype(np.float16), "s32": rng.random((n, 5, 4, 3)).astype(np.float16)}


def _embed(maps):  # a stand-in model: sensitive to position, so crops and flips show
    return torch.cat([maps["s32"].flatten(1), maps["s16"].mean((2, 3))], dim=1)


def test_crop_boxes_lie_inside_the_map():
    b = _crop_boxes(np.random.default_rng(0), 1000)
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 1 + 1e-9).all() and (b[:, 2:] > b[:, :2]).all()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    assert area.min() >= 0.5 and area.max() <= 1 + 1e-9


def test_augmented_gallery_keeps_real_items_and_adds_new_ones():
    maps = _maps()
    real = _embed({k: torch.from_numpy(v).float() for k, v in maps.items()}).numpy()
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


def test_recall_with_ties_counts_tied_items():
    # items 1 and 2 tie for the 2nd place: either one is a correct top-2
    scores = np.array([[0.1, 0.5, 0.5, 0.9]], np.float32)
    assert recall_with_ties([[3, 2]], scores, 2) == 1.0
    assert recall_with_ties([[3, 1]], scores, 2) == 1.0
    assert recall_with_ties([[3, 0]], scores, 2) == 0.5
    assert recall_with_ties([[3]], scores, 2) == 0.5  # a short answer loses the missing place
    assert recall_with_ties([[3, -1]], scores, 2) == 0.5


def _report(p50, recall, items=200_000):
    row = {"backend": "faiss", "kind": "auto", "built": "hnsw", "options": {"M": 32}, "items": items,
           "queries": 3, "build_s": 1.0, "p50_ms": p50, "p99_ms": 2 * p50, "recall": recall,
           "recall_ties": recall, "default": True}
    return {"run_id": "r", "model": "m", "dim": 4, "metric": "ip", "k": 30, "items": items, "gallery": "augmented",
            "gallery_description": "test", "queries": 3, "repeats": 1, "threads_build": 2, "rows": [row],
            "embed_query_p50_ms": 0.4, "embed_query_p99_ms": 0.9, "encoding_p50_ms": 5.0, "encoding_p99_ms": 6.0,
            "machine": {"cores": 2, "cpu": "x", "memory_gib": 1, "load_avg_1m": 0, "faiss": "1"}}


def test_goal_verdict():
    assert "**met**" in goal_verdict(_report(0.8, 0.98))
    assert "**not met**" in goal_verdict(_report(6.0, 0.98))
    assert "**not met**" in goal_verdict(_report(0.8, 0.90))
    assert "**not judged**" in goal_verdict(_report(0.8, 0.98, items=8767))
    text = format_report(_report(0.8, 0.98))
    assert "auto -> hnsw (default)" in text and "**met**" in text and "alone (`embed_query`, no index): p50 0.40" in text
