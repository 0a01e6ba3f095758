"""Recall@k of an index's answers against exact search over the same vectors (PROTOCOLS.md section 5).

`exact_scores` gives every query's exact score for every vector (numpy, float32; higher is better); items a
filter excludes get -inf. `recall_at_k` compares the row numbers an index returned with those scores:
"recall" = |returned top-k  intersect  exact top-k| / k; "with ties" also counts a returned item whose exact
score is >= the k-th exact score (minus a relative 1e-5 for float rounding), so exact ties (duplicate items)
cannot cost recall. Where fewer than k items are allowed (a filter), k is that number for the query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Recall(NamedTuple):
    plain: float
    with_ties: float


def exact_scores(vectors: np.ndarray, queries: np.ndarray, metric: str = "ip", chunk: int = 65536) -> np.ndarray:
    """(n_queries, n) float32 exact scores, higher is better (inner product, or minus squared L2)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.empty((len(q), len(vectors)), dtype=np.float32)
    for s in range(0, len(vectors), chunk):
        x = np.ascontiguousarray(vectors[s: s + chunk], dtype=np.float32)
        ip = q @ x.T
        if metric == "l2":
            ip = 2 * ip - (q * q).sum(1, keepdims=True) - (x * x).sum(1)[None, :]
        out[:, s: s + chunk] = ip
    return out


def recall_at_k(found: Sequence[Sequence[int]], scores: np.ndarray, k: int, rel_eps: float = 1e-5) -> Recall:
    """Recall@k of `found` (per query, the row numbers returned, best first; -1 = no result) against exact
    `scores` (from `exact_scores`; -inf = not allowed), averaged over the queries with an allowed item. The
    exact top-k is the k best scores, a tie at the k-th place going to the lower row numbers."""
    allowed = np.isfinite(scores).sum(axis=1)
    plain, ties = [], []
    for i, f in enumerate(found):
        kk = int(min(k, allowed[i]))
        if kk == 0:
            continue
        row = scores[i]
        kth = float(-np.partition(-row, kk - 1)[kk - 1])
        better = np.flatnonzero(row > kth)
        top = np.concatenate([better, np.flatnonzero(row == kth)[:kk - len(better)]])
        f = np.asarray(list(f)[:k], dtype=np.int64)
        f = f[f >= 0]
        eps = rel_eps * max(1.0, abs(kth))
        plain.append(len(set(f.tolist()) & set(top.tolist())) / kk)
        ties.append(int((row[f] >= kth - eps).sum()) / kk)
    if not plain:
        return Recall(float("nan"), float("nan"))
    return Recall(float(np.mean(plain)), float(np.mean(ties)))
