"""Retrieval and classification metrics of PROTOCOLS.md, as pure functions.

Every function takes plain sequences / arrays and returns numbers; nothing here reads files, a
catalogue or global state (the shape of FAISS contrib's `evaluation.py`). `protocols.py` turns query
and rankings files into the inputs these functions take.

Conventions shared by all functions:
- ranks are 1-based: the first ranked item has rank 1;
- a *hit list* is one boolean per ranked item, best first (`hits[j]` is True when the (j+1)-th ranked
  item is a correct answer: the target vector for protocol 1, the same instance for protocol 3);
- a list shorter than k is read as "nothing more was ranked" (callers check that rankings are long
  enough before calling; see `protocols.py`);
- ties are never resolved in the caller's favour: an equal similarity counts as wrong (triplets) and a
  class whose score equals the true class's score ranks above it (classification).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from vestis.eval.errors import QueryInRankingError, RankingTooShortError

UNSPECIFIED = "unspecified"  # same string as vestis.catalog.UNSPECIFIED (kept local: metrics import nothing)

TOP_K = (1, 5, 10, 20, 30, 40, 50)
"""k values for Top-k accuracy (protocol 1) and Recall@k (protocol 3)."""
NDCG_K = (10, 20, 30, 50)
"""k values for NDCG@k (protocol 1)."""
CLASSIFICATION_K = (1, 3, 5)
"""k values for category classification accuracy (protocol 3, Park et al. Table 2)."""


# --- the query-not-in-gallery rule ----------------------------------------------------------------
def check_query_not_ranked(query_id: str, query_item_id: str | None, ranked_ids: Iterable[str]) -> None:
    """Raise `QueryInRankingError` (naming the query) if `ranked_ids` contains the query's own item.

    The query never sits in the gallery it searches (PROTOCOLS.md, shared rules), so a ranking that
    returns the query item is a broken ranking, not a lucky hit. Image queries (`query_item_id` None)
    have no item to check.
    """
    if query_item_id is None:
        return
    for rid in ranked_ids:
        if rid == query_item_id:
            raise QueryInRankingError(query_id, query_item_id)


def relevance_flags(ranked_ids: Sequence[str], relevant_ids: Iterable[str], *, query_id: str = "?",
                    query_item_id: str | None = None) -> list[bool]:
    """Hit list of a ranking: `[id in relevant_ids for id in ranked_ids]`.

    Checks the query-not-in-gallery rule first (`check_query_not_ranked`).
    """
    check_query_not_ranked(query_id, query_item_id, ranked_ids)
    rel = set(relevant_ids)
    return [rid in rel for rid in ranked_ids]


# --- attribute vectors (protocol 1) ----------------------------------------------------------------
def attribute_vector(attributes: Mapping[str, str], attribute_set: Sequence[str]) -> tuple[str, ...]:
    """An item's vector over the attribute set A, in A's order; an absent label is "unspecified".

    "unspecified" is an ordinary state for matching: a target with "unspecified" on an attribute
    matches only items whose label for it is also missing.
    """
    return tuple(attributes.get(a, UNSPECIFIED) for a in attribute_set)


def relevance(vector: Sequence[str], target: Sequence[str]) -> float:
    """rel = (number of positions where `vector` equals `target`) / |A| (AMNet's NDCG relevance)."""
    if len(vector) != len(target) or not target:
        raise ValueError(f"vectors of different lengths or empty: {len(vector)} vs {len(target)}")
    return sum(1 for v, t in zip(vector, target) if v == t) / len(target)


# --- hit-based metrics (protocols 1 and 3) ----------------------------------------------------------
def first_hit_rank(hits: Sequence[bool]) -> int | None:
    """1-based rank of the first True in a hit list, or None if there is none."""
    for j, h in enumerate(hits):
        if h:
            return j + 1
    return None


def hit_at_k(hits: Sequence[bool], k: int) -> int:
    """Hit@k = 1 if any of the top-k ranked items is a hit (`any(hits[:k])`), else 0."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(any(hits[:k]))


def _hit_rate(hit_lists: Sequence[Sequence[bool]], ks: Iterable[int]) -> dict[int, float]:
    ks = list(ks)
    if not hit_lists:
        raise ValueError("no queries to score")
    firsts = [first_hit_rank(h) for h in hit_lists]
    return {k: sum(1 for f in firsts if f is not None and f <= k) / len(firsts) for k in ks}


def top_k_accuracy(hit_lists: Sequence[Sequence[bool]], ks: Iterable[int] = TOP_K) -> dict[int, float]:
    """Top-k accuracy (protocol 1) = mean over queries of Hit@k.

    `hit_lists[i][j]` is True when the (j+1)-th ranked gallery item of query i has exactly the
    target attribute vector over A ("unspecified" in the target matches only "unspecified").
    Returns {k: accuracy in [0, 1]}.
    """
    return _hit_rate(hit_lists, ks)


def recall_at_k(hit_lists: Sequence[Sequence[bool]], ks: Iterable[int] = TOP_K) -> dict[int, float]:
    """Recall@k (protocol 3) = share of queries with at least one same-instance image in the top k.

    A hit rate, not "relevant items found / relevant items": a query with 3 gallery views of its
    product scores 1 at k as soon as one of them is in the top k. `hit_lists[i][j]` is True when the
    (j+1)-th ranked gallery image of query i shows the query's instance. Returns {k: recall in [0, 1]}.
    """
    return _hit_rate(hit_lists, ks)


def filtered_hit_at_k(hits: Sequence[bool], keep: Sequence[bool], subset_size: int, k: int,
                      query_id: str = "?") -> int:
    """Hit@k of a ranking restricted to a gallery subset (the gallery-size curve, AMNet Fig. 6).

    `hits[j]` / `keep[j]`: whether the j-th ranked item is a target / lies in the subset. The ranking
    restricted to the subset is the ranked list with the other items removed (order kept); the result
    is Hit@k of that list. `subset_size` is the number of gallery items in the subset.

    If the restricted list has fewer than k entries although the subset has more items than the list
    covers, the ranking was cut too short to know the answer: raises `RankingTooShortError`.
    """
    h, m = np.asarray(hits, dtype=bool), np.asarray(keep, dtype=bool)
    if h.shape != m.shape or h.ndim != 1:
        raise ValueError("hits and keep must be 1-D of the same length")
    kept = h[m]
    if len(kept) < k and subset_size > len(kept):
        raise RankingTooShortError(
            f"query {query_id!r}: only {len(kept)} of its {len(hits)} ranked ids fall in a gallery subset of "
            f"{subset_size} items, fewer than the {k} needed for Top-{k} on that subset; write longer rankings "
            f"with --k (a gallery fraction f needs about 2*{k}/f ranked ids), or leave the gallery-size curve out"
        )
    return int(kept[:k].any()) if k >= 1 else hit_at_k(kept, k)


# --- asked@k (protocol 1: what a shopper sees first) -------------------------------------------------
ASKED_K = 10


def asked_at_k(has_requested: Sequence[Sequence[bool]], k: int = ASKED_K) -> float:
    """asked@k of one query: the share of its top k ranked items whose catalogue value of a manipulated
    attribute equals the requested value, averaged over its manipulated attributes. `has_requested[a][j]`: does
    the (j+1)-th ranked item have the value requested for manipulated attribute a. A list shorter than k counts
    its missing places as misses (the shopper sees fewer than k items)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not len(has_requested):
        raise ValueError("asked@k needs at least one manipulated attribute")
    return float(np.mean([np.count_nonzero(np.asarray(h[:k], dtype=bool)) / k for h in has_requested]))


def precision_at_k(relevant: Sequence[bool], k: int) -> float:
    """P@k of one query: the share of its top k ranked items that are relevant. A list shorter than k counts its
    missing places as misses (the shopper sees fewer than k items)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(np.count_nonzero(np.asarray(relevant[:k], dtype=bool))) / k


# --- NDCG (protocol 1, AMNet) ---------------------------------------------------------------------
def dcg_at_k(rels: Sequence[float], k: int) -> float:
    """DCG@k = sum over j = 1..min(k, len(rels)) of (2^rel(j) - 1) / log2(j + 1)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    r = np.asarray(rels[:k], dtype=np.float64)
    if r.size == 0:
        return 0.0
    return float(np.sum((np.power(2.0, r) - 1.0) / np.log2(np.arange(2, r.size + 2))))


def idcg_at_k(gallery_rels: Sequence[float], k: int) -> float:
    """IDCG@k = DCG@k of the best possible ranking of this gallery: all gallery items' relevances sorted
    in descending order. Not the DCG of an all-ones list (which would assume k perfect matches exist)."""
    r = np.asarray(gallery_rels, dtype=np.float64)
    if r.size > k:
        r = np.partition(r, r.size - k)[r.size - k:]
    return dcg_at_k(np.sort(r)[::-1], k)


def ndcg_at_k(ranked_rels: Sequence[float], gallery_rels: Sequence[float], k: int) -> float:
    """NDCG@k = DCG@k(ranked_rels) / IDCG@k(gallery_rels) (PROTOCOLS.md section 1).

    `ranked_rels[j]` = rel of the (j+1)-th ranked gallery item = share of attributes in A on which it
    equals the target vector; `gallery_rels` = rel of every gallery item (the ranking's candidates).
    Returns 0.0 when IDCG@k is 0 (no gallery item shares any attribute with the target).
    """
    ideal = idcg_at_k(gallery_rels, k)
    return dcg_at_k(ranked_rels, k) / ideal if ideal > 0 else 0.0


# --- average precision (protocol 2) -----------------------------------------------------------------
def average_precision(relevant: Sequence[bool], n_relevant: int | None = None) -> float:
    """AP of one ranked candidate list = (1/R) * sum over relevant ranks j of precision@j.

    precision@j = (relevant items among the top j) / j; R = number of relevant candidates
    (`n_relevant`, default: the relevant items in the list, i.e. the list is the full candidate list).
    With `n_relevant` larger than the relevant items found, the missing ones contribute precision 0.
    The order of the list is the order given: equally-scored candidates are ranked as the rankings file
    lists them. Raises ValueError when R = 0 (AP is undefined without a relevant candidate).
    """
    rel = np.asarray(relevant, dtype=bool)
    found = int(rel.sum())
    R = found if n_relevant is None else int(n_relevant)
    if R <= 0:
        raise ValueError("average precision is undefined for a query with no relevant candidate")
    if found > R:
        raise ValueError(f"n_relevant={R} but the list holds {found} relevant items")
    if found == 0:
        return 0.0
    ranks = np.flatnonzero(rel) + 1  # 1-based ranks of relevant items
    precisions = np.arange(1, found + 1) / ranks
    return float(precisions.sum() / R)


def mean_average_precision(relevant_lists: Sequence[Sequence[bool]],
                           n_relevant: Sequence[int] | None = None) -> float:
    """MAP = mean over queries of `average_precision` (per attribute in protocol 2)."""
    if not relevant_lists:
        raise ValueError("no queries to score")
    if n_relevant is None:
        return float(np.mean([average_precision(r) for r in relevant_lists]))
    return float(np.mean([average_precision(r, n) for r, n in zip(relevant_lists, n_relevant, strict=True)]))


# --- triplets (protocol 2, Zappos50k) ----------------------------------------------------------------
def triplet_accuracy(sim_pos: Sequence[float], sim_neg: Sequence[float]) -> float:
    """Share of triplets (x, x+, x- | a) with sim(x, x+ | a) > sim(x, x- | a), strictly.

    Ties (sim_pos == sim_neg) count as wrong, so a method that scores everything equal gets 0, not 0.5.
    Scores must be finite numbers (NaN / inf raise ValueError: they are a bug, not a prediction).
    """
    p = np.asarray(sim_pos, dtype=np.float64)
    n = np.asarray(sim_neg, dtype=np.float64)
    if p.shape != n.shape or p.ndim != 1:
        raise ValueError(f"sim_pos and sim_neg must be 1-D of the same length, got {p.shape} and {n.shape}")
    if p.size == 0:
        raise ValueError("no triplets to score")
    if not (np.isfinite(p).all() and np.isfinite(n).all()):
        raise ValueError("triplet similarities must be finite numbers")
    return float(np.mean(p > n))


# --- category classification (protocol 3, Park et al.) ------------------------------------------------
def classification_top_k_accuracy(scores, labels, ks: Iterable[int] = CLASSIFICATION_K) -> dict[int, float]:
    """Top-k classification accuracy from a score matrix.

    `scores`: (n, C) array, higher = more likely; `labels`: (n,) true class indices in [0, C).
    The true class's rank = 1 + (classes scoring strictly higher) + (other classes scoring equal):
    ties rank against the true class. Top-k accuracy = share of samples whose true class ranks <= k.
    Returns {k: accuracy in [0, 1]}.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or y.ndim != 1 or s.shape[0] != y.shape[0]:
        raise ValueError(f"scores must be (n, C) and labels (n,), got {s.shape} and {y.shape}")
    if s.shape[0] == 0:
        raise ValueError("no samples to score")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= s.shape[1]:
        raise ValueError(f"labels must be integers in [0, {s.shape[1]})")
    true = s[np.arange(len(y)), y][:, None]
    rank = 1 + (s > true).sum(1) + (s == true).sum(1) - 1
    return {k: float(np.mean(rank <= k)) for k in ks}


def coarse_conditional(fine_labels, coarse_labels, n_fine: int, n_coarse: int) -> np.ndarray:
    """P(coarse | fine) as an (n_fine, n_coarse) row-stochastic matrix counted from paired labels (e.g. articleType
    -> subCategory on the training split); a fine class never seen spreads its mass evenly."""
    f, c = np.asarray(fine_labels, dtype=np.int64), np.asarray(coarse_labels, dtype=np.int64)
    if f.shape != c.shape or f.ndim != 1:
        raise ValueError(f"fine and coarse labels must be paired 1-d arrays, got {f.shape} and {c.shape}")
    if len(f) and (f.min() < 0 or f.max() >= n_fine or c.min() < 0 or c.max() >= n_coarse):
        raise ValueError(f"labels out of range (fine < {n_fine}, coarse < {n_coarse})")
    table = np.zeros((n_fine, n_coarse), np.float64)
    np.add.at(table, (f, c), 1.0)
    rows = table.sum(1, keepdims=True)
    return np.where(rows > 0, table / np.maximum(rows, 1), 1.0 / n_coarse)


def coarse_scores(fine_scores, conditional) -> np.ndarray:
    """Probabilities of a coarser category from a finer classifier's: P(coarse) = sum_fine P(fine) P(coarse | fine)
    (Park et al.'s Table 2 reports three category levels; one articleType classifier answers all three)."""
    s, m = np.asarray(fine_scores, dtype=np.float64), np.asarray(conditional, dtype=np.float64)
    if s.ndim != 2 or m.ndim != 2 or s.shape[1] != m.shape[0]:
        raise ValueError(f"fine scores (n, F) and conditional (F, C) do not match: {s.shape} and {m.shape}")
    return s @ m


# --- diverse part-based recommendation (protocol 4, Verma et al.) ----------------------------------------------
def round_robin(groups: Sequence[Sequence[str]], n: int | None = None) -> list[str]:
    """The groups read round-robin (first of each, then second, ...), each id once, cut at n: protocol 4's merged list."""
    out, seen = [], set()
    for rank in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if rank < len(g) and g[rank] not in seen:
                seen.add(g[rank])
                out.append(g[rank])
    return out if n is None else out[:n]


def coverage(ranked_categories: Sequence[str | None], garment_categories: Sequence[str], n: int | None = None) -> float:
    """Share of the query's garments whose category appears among the first n results (default N = 5 x garments);
    two garments of one category are covered by one result each."""
    if not garment_categories:
        raise ValueError("a coverage query needs at least one garment")
    n = 5 * len(garment_categories) if n is None else n
    pool = list(ranked_categories[:n])
    covered = 0
    for c in garment_categories:
        if c in pool:
            pool.remove(c)
            covered += 1
    return covered / len(garment_categories)


def purity_at_k(categories: Sequence[str | None], k: int = 5) -> float:
    """Share of a group's top k in its majority category (unlabelled results count against it); an empty group: 0."""
    top = list(categories[:k])
    if not top:
        return 0.0
    known = [c for c in top if c is not None and c != UNSPECIFIED]
    if not known:
        return 0.0
    return max(known.count(c) for c in set(known)) / len(top)


def part_relevance(results: Sequence[Mapping[str, str]], garment: Mapping[str, str], attributes: Sequence[str]) -> float:
    """Share of a part's results whose labels equal the query garment's on each of `attributes` the garment has
    labelled (e.g. its category, colour, pattern); a garment labelled on none of them: ValueError; no results: 0."""
    asked = [a for a in attributes if garment.get(a) not in (None, UNSPECIFIED)]
    if not asked:
        raise ValueError(f"the garment has none of {list(attributes)} labelled")
    if not results:
        return 0.0
    return float(np.mean([all(r.get(a) == garment[a] for a in asked) for r in results]))


def intra_list_diversity(vectors) -> float:
    """1 - mean pairwise cosine similarity of a list's items (rows of `vectors`); fewer than two items: 0."""
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    sim = x @ x.T
    n = len(x)
    return float(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))


def distinct_categories(categories: Sequence[str | None]) -> int:
    return len({c for c in categories if c is not None and c != UNSPECIFIED})


def mmr(relevance, vectors, n: int, lam: float) -> list[int]:
    """Maximal marginal relevance re-ranking (Carbonell & Goldstein 1998): repeatedly take the candidate maximising
    lam * relevance - (1 - lam) * max cosine similarity to those already taken; returns n candidate indices in order.
    Ties go to the earlier candidate."""
    rel = np.asarray(relevance, dtype=np.float64)
    x = np.asarray(vectors, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    sim = x @ x.T
    chosen: list[int] = []
    left = list(range(len(rel)))
    while left and len(chosen) < n:
        redundancy = sim[np.ix_(left, chosen)].max(1) if chosen else np.zeros(len(left))
        score = lam * rel[left] - (1 - lam) * redundancy
        chosen.append(left.pop(int(np.argmax(score))))
    return chosen


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1); 0 when the union is empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def multilabel_average_precision(scores, targets) -> dict[str, float]:
    """Multi-label classification (Verma et al.'s Table 1 layout): `scores` (n, L), `targets` (n, L) 0/1.
    AP_all: class-agnostic AP, every (image, label) pair ranked by its score in one list; mAP: the mean over labels
    (those with a positive image) of each label's AP over the images. Ties keep the input order (stable sort)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(targets).astype(bool)
    if s.shape != y.shape or s.ndim != 2:
        raise ValueError(f"scores and targets must be (n, L) of the same shape, got {s.shape} and {y.shape}")
    if not y.any():
        raise ValueError("no positive (image, label) pair to score")
    flat = np.argsort(-s.reshape(-1), kind="stable")
    ap_all = average_precision(y.reshape(-1)[flat])
    aps = [average_precision(y[np.argsort(-s[:, j], kind="stable"), j]) for j in range(s.shape[1]) if y[:, j].any()]
    return {"AP_all": ap_all, "mAP": float(np.mean(aps))}
