"""Score a run: query file + rankings file + catalogue (for labels) -> a report dict.

`evaluate` computes everything the protocols of the query file's lines need (PROTOCOLS.md):

- manipulation (protocol 1): Top-k accuracy k = 1, 5, 10, 20, 30, 40, 50; per-attribute Top-30 with
  per-attribute counts; NDCG@k k = 10, 20, 30, 50; the gallery-size curve (Top-20 on nested random
  gallery subsets of 10 / 25 / 50 / 100 %); each for all queries and split by the number of
  manipulated attributes ("single", "two");
- attribute (protocol 2): per-attribute MAP and their mean;
- triplet (protocol 2): per-attribute triplet accuracy and their mean;
- same_item (protocol 3): Recall@k k = 1, 5, 10, 20, 30, 40, 50;
- diverse (protocol 4): coverage, intra-list diversity and distinct categories of the first N = 5 x garments ids
  of `ranked` (the groups round-robin, or a flat baseline's list); for grouped rows also purity@5, part relevance,
  groups per query, the share of groups naming no garment of the photo, and each group's box against its garment's.

Rules it enforces (each violation raises an `EvalError` subclass with a message naming the query):
- every query of the query file has a rankings line, and the rankings file has no other queries;
- a ranking never contains the query's own item, and a query item never belongs to the gallery;
- ranked ids are gallery ids; a "ranked" list holds at least min(50, candidates) ids (protocol 2: all
  candidates);
- each query agrees with the catalogue (its target equals the query item's labels with the
  manipulations applied; a triplet's x+ shares x's value and x- does not; ...), so a query file
  generated from another version of the catalogue is caught instead of silently mis-scored.
Queries that cannot be scored are counted in `report["skipped"]` by reason and left out of every
metric: rows marked {"skipped": reason} by the run, and queries whose target no longer exists in the
gallery (possible only with a `gallery_ids` smaller than the gallery split, e.g. missing images).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from vestis.catalog import UNSPECIFIED, Catalog
from vestis.eval import metrics
from vestis.eval.errors import EvalError, QueryFileError, RankingsError, RankingTooShortError
from vestis.eval.queries import PROTOCOLS, diverse_garments, file_sha256, read_queries
from vestis.eval.rankings import index_rows, read_rankings, required_length

PROTOCOL_VERSIONS = {
    "manipulation": "vestis-manipulation/1",
    "attribute": "vestis-attribute/1",
    "triplet": "vestis-attribute/1",
    "same_item": "vestis-same-item/1",
    "consumer_to_shop": "vestis-consumer-to-shop/1",
    "diverse": "vestis-diverse/1",
}
PART_K = 10  # part relevance reads a group's first 10 results
PURITY_K = 5
C2S_K = 10  # P@10: what a shopper sees first
GALLERY_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
CURVE_K = 20
PER_ATTRIBUTE_K = 30
GROUP_NAMES = {1: "single", 2: "two"}



def _answered(row: dict, qid, protocol: str, field: str, skipped) -> dict | None:
    """A rankings row that answers its query (it holds `field`), or None for a row the searcher skipped (counted
    in `skipped` by its reason)."""
    if "skipped" in row:
        skipped[row["skipped"]] += 1
        return None
    if field not in row:
        raise RankingsError(f"query {qid!r} ({protocol}): its rankings line needs \"{field}\"")
    return row

def _group_name(n: int) -> str:
    return GROUP_NAMES.get(n, f"{n}-attribute")


def _kdict(d: Mapping[int, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in d.items()}


# --- shared checks ---------------------------------------------------------------------------------
class _Gallery:
    def __init__(self, catalog: Catalog, ids: Sequence[str], split: str):
        self.catalog, self.ids, self.split = catalog, list(ids), split
        self.index = {g: i for i, g in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise EvalError("gallery ids list an item twice")
        for g in self.ids:
            if g not in catalog:
                raise EvalError(f"gallery id {g!r} is not in the catalogue")
        if not self.ids:
            raise EvalError(f"the gallery (split {split!r}) is empty")

    def positions(self, q: dict, ranked: Sequence[str], *, keep_unknown: bool = False) -> np.ndarray:
        """Ranked ids -> gallery positions, after the query-not-in-gallery check."""
        qid, item = q["query_id"], q.get("item_id")
        metrics.check_query_not_ranked(qid, item, ranked)
        pos = []
        for r in ranked:
            p = self.index.get(r)
            if p is None:
                where = f"split {self.catalog.split_of(r)!r}" if r in self.catalog else "not in the catalogue"
                raise RankingsError(f"query {qid!r}: ranked id {r!r} is not a gallery item ({where}); rankings "
                                    f"must rank items of the gallery (split {self.split!r}) only")
            pos.append(p)
        return np.asarray(pos, dtype=np.int64)

    def check_query_item(self, q: dict) -> None:
        item = q.get("item_id")
        if item is None:
            return
        if item not in self.catalog:
            raise QueryFileError(f"query {q['query_id']!r}: item {item!r} is not in the catalogue "
                                 f"({self.catalog.name or 'unnamed'}); wrong catalogue for this query file?")
        if item in self.index:
            raise EvalError(f"query {q['query_id']!r}: query item {item!r} is in the gallery it searches "
                            f"(split {self.split!r}); the query never sits in its gallery")


def _ranked(q: dict, row: dict, n_candidates: int) -> list[str] | None:
    """The row's ranked list (None when skipped), checked to be long enough."""
    if "skipped" in row:
        return None
    if "ranked" not in row:
        raise RankingsError(f"query {q['query_id']!r} ({q['_protocol']}): its rankings line needs \"ranked\"")
    need = required_length(n_candidates)
    if len(row["ranked"]) < need:
        raise RankingTooShortError(f"query {q['query_id']!r}: ranked list has {len(row['ranked'])} ids, needs at "
                                   f"least {need} (min(50, {n_candidates} candidates)); write longer rankings with --k")
    return row["ranked"]


# --- protocol 1 --------------------------------------------------------------------------------------
def _manipulation(queries: list[dict], rows: dict[str, dict], catalog: Catalog, gallery: _Gallery,
                  attributes: Sequence[str] | None, fractions: Sequence[float], seed: int, curve_k: int,
                  skipped: Counter) -> dict:
    A = list(attributes) if attributes is not None else list(queries[0].get("target") or {})
    if not A:
        raise QueryFileError(f"query {queries[0]['query_id']!r}: a manipulation query needs a \"target\" over "
                             "the attribute set")
    # integer codes per attribute ("unspecified" is an ordinary code)
    codes: list[dict[str, int]] = [{} for _ in A]

    def code(i: int, v: str) -> int:
        return codes[i].setdefault(v, len(codes[i]))

    gvec = [metrics.attribute_vector(catalog[g].attributes, A) for g in gallery.ids]
    G = np.array([[code(i, v) for i, v in enumerate(vec)] for vec in gvec], dtype=np.int32).reshape(len(gvec), len(A))
    by_vector: dict[tuple, list[int]] = defaultdict(list)
    for p, vec in enumerate(gvec):
        by_vector[vec].append(p)

    fractions = sorted(float(f) for f in fractions)
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"gallery fractions must be in (0, 1], got {f}")
    n_gal = len(gallery.ids)
    # nested subsets: one seeded permutation, the subset for f is its first round(f * n) items
    position = np.empty(n_gal, dtype=np.int64)
    position[np.random.default_rng(seed).permutation(n_gal)] = np.arange(n_gal)
    sizes = {f: max(1, int(np.floor(f * n_gal + 0.5))) for f in fractions}
    subsets = {f: position < sizes[f] for f in fractions}

    per_query = []
    for q in queries:
        qid = q["query_id"]
        target = q.get("target")
        if not isinstance(target, dict) or set(target) != set(A):
            raise QueryFileError(f"query {qid!r}: target must give every attribute of the attribute set "
                                 f"{A} (got {sorted(target or {})})")
        manips = q.get("manipulations") or {}
        if not manips:
            raise QueryFileError(f"query {qid!r}: a manipulation query needs at least one manipulation")
        t = tuple(target[a] for a in A)
        for a, v in manips.items():
            if a not in A:
                raise QueryFileError(f"query {qid!r}: manipulated attribute {a!r} is not in the attribute set {A}")
            if v == UNSPECIFIED or target[a] != v:
                raise QueryFileError(f"query {qid!r}: manipulation {a}={v!r} must be a known value and agree with "
                                     f"the target ({target[a]!r})")
        gallery.check_query_item(q)
        if "item_id" in q:
            current = metrics.attribute_vector(catalog[q["item_id"]].attributes, A)
            for a, v in manips.items():
                cur = current[A.index(a)]
                if cur == UNSPECIFIED or cur == v:
                    raise QueryFileError(f"query {qid!r}: invalid manipulation {a}: {cur!r} -> {v!r} (the current "
                                         "value must be known and differ from the new one)")
            expected = tuple(v if a not in manips else manips[a] for a, v in zip(A, current))
            if expected != t:
                raise QueryFileError(f"query {qid!r}: target {dict(zip(A, t))} is not item {q['item_id']!r}'s labels "
                                     f"{dict(zip(A, current))} with {manips} applied; query file made from another "
                                     "catalogue?")
        targets = by_vector.get(t)
        if not targets:
            skipped["no target in gallery"] += 1
            continue
        ranked = _ranked(q, rows[qid], n_gal)
        if ranked is None:
            skipped[rows[qid]["skipped"]] += 1
            continue
        pos = gallery.positions(q, ranked)
        tcode = np.array([codes[i].get(v, -1) for i, v in enumerate(t)], dtype=np.int32)
        match = G[pos] == tcode if len(pos) else np.zeros((0, len(A)), dtype=bool)
        hits = match.all(1)
        rels = match.mean(1)
        gallery_rels = (G == tcode).mean(1)
        rec = {"query_id": qid, "n": len(manips),
               "attribute": q.get("attribute") or "+".join(a for a in A if a in manips),
               "hits": hits[: max(metrics.TOP_K)].tolist(),
               "ndcg": {k: metrics.ndcg_at_k(rels, gallery_rels, k) for k in metrics.NDCG_K},
               "asked": metrics.asked_at_k([match[:, A.index(a)] for a in manips], metrics.ASKED_K),
               "curve": {}}
        tpos = np.asarray(targets)
        kept_target = tpos[np.argmin(position[tpos])]  # the target a subset keeps when it lost all of them
        for f in fractions:
            in_subset = subsets[f]
            extra = 0
            if not in_subset[tpos].any():
                in_subset = in_subset.copy()
                in_subset[kept_target] = True
                extra = 1
            rec["curve"][f] = metrics.filtered_hit_at_k(hits, in_subset[pos], sizes[f] + extra, curve_k, qid)
        per_query.append(rec)

    def summarise(recs: list[dict]) -> dict:
        out = {"n": len(recs)}
        if not recs:
            return out
        out["top_k"] = _kdict(metrics.top_k_accuracy([r["hits"] for r in recs], metrics.TOP_K))
        out["ndcg"] = {str(k): float(np.mean([r["ndcg"][k] for r in recs])) for k in metrics.NDCG_K}
        out[f"asked_at_{metrics.ASKED_K}"] = float(np.mean([r["asked"] for r in recs]))
        by_attr: dict[str, list] = defaultdict(list)
        for r in recs:
            by_attr[r["attribute"]].append(r)
        order = {a: i for i, a in enumerate(A)}
        keys = sorted(by_attr, key=lambda k: (k.count("+"), [order.get(p, len(A)) for p in k.split("+")], k))
        out["per_attribute"] = {k: {"n": len(by_attr[k]), f"top_{PER_ATTRIBUTE_K}":
                                    metrics.top_k_accuracy([r["hits"] for r in by_attr[k]], [PER_ATTRIBUTE_K])[PER_ATTRIBUTE_K]}
                                for k in keys}
        if fractions:
            out["gallery_size_curve"] = {
                "k": curve_k, "seed": seed,
                "points": [{"fraction": f, "gallery_size": sizes[f],
                            "top_k": float(np.mean([r["curve"][f] for r in recs]))} for f in fractions],
            }
        return out

    groups = {"all": summarise(per_query)}
    for n in sorted({r["n"] for r in per_query}):
        groups[_group_name(n)] = summarise([r for r in per_query if r["n"] == n])
    return {"version": PROTOCOL_VERSIONS["manipulation"], "attributes": A, "gallery_size": n_gal,
            "n_queries": len(queries), "n_scored": len(per_query), "groups": groups}


# --- protocol 2 --------------------------------------------------------------------------------------
def _attribute_order(queries: list[dict], attributes: Sequence[str] | None, catalog: Catalog) -> list[str]:
    seen = list(dict.fromkeys(q.get("attribute") for q in queries))
    for q, a in ((q, q.get("attribute")) for q in queries):
        if not isinstance(a, str):
            raise QueryFileError(f"query {q['query_id']!r}: needs an \"attribute\"")
    if attributes is None:
        order = {a: i for i, a in enumerate(catalog.schema.attributes)}
        return sorted(seen, key=lambda a: (order.get(a, len(order)), a))
    extra = [a for a in seen if a not in attributes]
    if extra:
        raise QueryFileError(f"queries use attributes {extra} outside the attribute set {list(attributes)}")
    return [a for a in attributes if a in seen]


def _attribute_map(queries: list[dict], rows: dict[str, dict], catalog: Catalog, gallery: _Gallery,
                   attributes: Sequence[str] | None, skipped: Counter) -> dict:
    attrs = _attribute_order(queries, attributes, catalog)
    gvals = {a: [catalog[g].attributes.get(a) for g in gallery.ids] for a in attrs}
    n_cand = {a: sum(v is not None for v in gvals[a]) for a in attrs}
    value_count = {a: Counter(v for v in gvals[a] if v is not None) for a in attrs}
    aps: dict[str, list[float]] = defaultdict(list)
    for q in queries:
        qid, a = q["query_id"], q["attribute"]
        gallery.check_query_item(q)
        value = (q.get("target") or {}).get(a)
        if "item_id" in q:
            own = catalog[q["item_id"]].attributes.get(a)
            if own is None:
                raise QueryFileError(f"query {qid!r}: item {q['item_id']!r} has no known value of {a!r}")
            if value is not None and value != own:
                raise QueryFileError(f"query {qid!r}: target {a}={value!r} but the item's label is {own!r}; query "
                                     "file made from another catalogue?")
            value = own
        if value is None or value == UNSPECIFIED:
            raise QueryFileError(f"query {qid!r}: needs a known value of {a!r} (target or item label)")
        R = value_count[a].get(value, 0)
        if R == 0:
            skipped["no relevant candidate in gallery"] += 1
            continue
        row = _answered(rows[qid], qid, "attribute", "ranked", skipped)
        if row is None:
            continue
        pos = gallery.positions(q, row["ranked"])
        vals = [gvals[a][p] for p in pos if gvals[a][p] is not None]  # drop items with a unspecified
        if len(vals) < n_cand[a]:
            raise RankingTooShortError(
                f"query {qid!r}: ranks {len(vals)} of the {n_cand[a]} candidates (gallery items with a known "
                f"{a!r}); protocol 2 (MAP) needs rankings of every candidate - write them with --k 0 / --k all")
        aps[a].append(metrics.average_precision([v == value for v in vals], n_relevant=R))
    per = {a: {"n": len(aps[a]), "map": float(np.mean(aps[a]))} for a in attrs if aps[a]}
    out = {"version": PROTOCOL_VERSIONS["attribute"], "attributes": attrs, "n_queries": len(queries),
           "n_scored": sum(len(v) for v in aps.values()), "n_candidates": n_cand, "per_attribute": per}
    if per:
        out["mean"] = float(np.mean([p["map"] for p in per.values()]))
        out["mean_over_queries"] = float(np.mean([x for v in aps.values() for x in v]))
    return out


def _triplets(queries: list[dict], rows: dict[str, dict], catalog: Catalog, attributes: Sequence[str] | None,
              skipped: Counter) -> dict:
    attrs = _attribute_order(queries, attributes, catalog)
    pos_s: dict[str, list[float]] = defaultdict(list)
    neg_s: dict[str, list[float]] = defaultdict(list)
    splits = set()
    for q in queries:
        qid, a = q["query_id"], q["attribute"]
        ids = [q.get("item_id"), q.get("positive_id"), q.get("negative_id")]
        if not all(isinstance(i, str) for i in ids):
            raise QueryFileError(f"query {qid!r}: a triplet needs \"item_id\", \"positive_id\" and \"negative_id\"")
        for i in ids:
            if i not in catalog:
                raise QueryFileError(f"query {qid!r}: item {i!r} is not in the catalogue")
            splits.add(catalog.split_of(i))
        vx, vp, vn = (catalog[i].attributes.get(a) for i in ids)
        if vx is None or vp != vx or vn is None or vn == vx:
            raise QueryFileError(f"query {qid!r}: not a valid triplet for {a!r} in this catalogue "
                                 f"(x={vx!r}, x+={vp!r}, x-={vn!r}); x+ must share x's known value, x- must have "
                                 "another known value")
        row = rows[qid]
        if "skipped" in row:
            skipped[row["skipped"]] += 1
            continue
        if "scores" not in row:
            raise RankingsError(f"query {qid!r} (triplet): its rankings line needs \"scores\": [sim_pos, sim_neg]")
        pos_s[a].append(row["scores"][0])
        neg_s[a].append(row["scores"][1])
    per = {a: {"n": len(pos_s[a]), "accuracy": metrics.triplet_accuracy(pos_s[a], neg_s[a])} for a in attrs if pos_s[a]}
    out = {"version": PROTOCOL_VERSIONS["triplet"], "attributes": attrs, "n_queries": len(queries),
           "n_scored": sum(p["n"] for p in per.values()), "item_splits": sorted(splits), "per_attribute": per}
    if per:
        out["mean"] = float(np.mean([p["accuracy"] for p in per.values()]))
        out["overall"] = metrics.triplet_accuracy([x for a in per for x in pos_s[a]], [x for a in per for x in neg_s[a]])
    return out


# --- protocol 3 --------------------------------------------------------------------------------------
def _same_item(queries: list[dict], rows: dict[str, dict], catalog: Catalog, gallery: _Gallery,
               views: str | None, skipped: Counter) -> dict:
    ginst = [catalog[g].instance_id for g in gallery.ids]
    by_inst: dict[str, int] = Counter(i for i in ginst if i)
    hit_lists = []
    for q in queries:
        qid = q["query_id"]
        inst = (q.get("target") or {}).get("instance_id")
        gallery.check_query_item(q)
        if "item_id" in q:
            own = catalog[q["item_id"]].instance_id
            if inst is not None and own != inst:
                raise QueryFileError(f"query {qid!r}: target instance {inst!r} but item {q['item_id']!r} has "
                                     f"instance {own!r}")
            inst = inst or own
        if not inst:
            raise QueryFileError(f"query {qid!r}: needs a target instance_id")
        if not by_inst.get(inst):
            skipped["no same-instance image in gallery"] += 1
            continue
        ranked = _ranked(q, rows[qid], len(gallery.ids))
        if ranked is None:
            skipped[rows[qid]["skipped"]] += 1
            continue
        pos = gallery.positions(q, ranked)
        hit_lists.append([ginst[p] == inst for p in pos[: max(metrics.TOP_K)]])
    out = {"version": PROTOCOL_VERSIONS["same_item"], "gallery_size": len(gallery.ids), "n_queries": len(queries),
           "n_scored": len(hit_lists), "views": views}
    if hit_lists:
        out["recall_at_k"] = _kdict(metrics.recall_at_k(hit_lists, metrics.TOP_K))
    return out


# --- consumer-to-shop ----------------------------------------------------------------------------------
def _consumer_to_shop(queries: list[dict], rows: dict[str, dict], catalog: Catalog, gallery: _Gallery,
                      skipped: Counter) -> dict:
    """P@10 = share of the top 10 gallery items whose value of the query's `attribute` is in its target set
    (the photo's category mapped onto the gallery's values); per category (the query's "category"), the mean over
    queries and the mean over categories."""
    per_cat: dict[str, list[float]] = defaultdict(list)
    for q in queries:
        qid, a = q["query_id"], q.get("attribute")
        accepted = (q.get("target") or {}).get(a) if isinstance(a, str) else None
        if accepted is None:
            raise QueryFileError(f"query {qid!r}: a consumer-to-shop query needs \"attribute\" and a target set for it")
        accepted = {accepted} if isinstance(accepted, str) else set(accepted)
        gallery.check_query_item(q)
        ranked = _ranked(q, rows[qid], len(gallery.ids))
        if ranked is None:
            skipped[rows[qid]["skipped"]] += 1
            continue
        pos = gallery.positions(q, ranked[:C2S_K])
        rel = [catalog[gallery.ids[p]].attributes.get(a) in accepted for p in pos]
        per_cat[str(q.get("category", "all"))].append(metrics.precision_at_k(rel, C2S_K))
    cats = sorted(per_cat)
    out = {"version": PROTOCOL_VERSIONS["consumer_to_shop"], "k": C2S_K, "gallery_size": len(gallery.ids),
           "n_queries": len(queries), "n_scored": sum(len(v) for v in per_cat.values()),
           "per_category": {c: {"n": len(per_cat[c]), "precision": float(np.mean(per_cat[c]))} for c in cats}}
    if cats:
        out["precision"] = float(np.mean([x for c in cats for x in per_cat[c]]))
        out["precision_macro"] = float(np.mean([out["per_category"][c]["precision"] for c in cats]))
        out["min_category"] = min(out["per_category"][c]["precision"] for c in cats)
    return out


# --- protocol 4: diverse part-based suggestions ---------------------------------------------------------
def _diverse(queries: list[dict], rows: dict[str, dict], catalog: Catalog, gallery: _Gallery, item_vectors,
             skipped: Counter) -> dict:
    """PROTOCOLS.md section 4 from the rankings rows alone (plus the gallery's labels and, for intra-list diversity,
    `item_vectors(ids) -> (n, d)`, the global embedding; None leaves ILD out). A row with `groups` is scored as
    groups too; a flat row (a baseline's plain top-N) only as a list. The list is the first N = 5 x garments ids of
    `ranked` (the groups read round-robin); a flat list shorter than N (and than the gallery) is an error."""
    lists = {"coverage": [], "ild": [], "distinct": [], "length": [], "ids": []}
    purity, groups_per, garments_per, false_groups, n_groups, box_iou = [], [], [], 0, 0, []
    relevance: dict[str, list[float]] = defaultdict(list)
    n_grouped = 0
    for q in queries:
        qid = q["query_id"]
        attr, target, boxes = diverse_garments(q)
        garments = target[attr]
        gallery.check_query_item(q)
        row = _answered(rows[qid], qid, "diverse", "ranked", skipped)
        if row is None:
            continue
        n = 5 * len(garments)
        ranked = row["ranked"][:n]
        grouped = "groups" in row
        if not grouped and len(ranked) < min(n, len(gallery.ids)):
            raise RankingTooShortError(f"query {qid!r}: a flat diverse list needs N = 5 x {len(garments)} garments "
                                       f"= {n} ids, the row has {len(ranked)}")
        gallery.positions(q, row["ranked"])  # gallery ids only, never the query's own item
        cats = [catalog[i].attributes.get(attr) for i in ranked]
        lists["coverage"].append(metrics.coverage(cats, garments, n))
        lists["distinct"].append(metrics.distinct_categories(cats))
        lists["length"].append(len(ranked))
        lists["ids"].append(ranked)
        if not grouped:
            continue
        n_grouped += 1
        groups_per.append(len(row["groups"]))
        garments_per.append(len(garments))
        for g in row["groups"]:
            gallery.positions(q, g["ranked"])
            n_groups += 1
            purity.append(metrics.purity_at_k([catalog[i].attributes.get(attr) for i in g["ranked"]], PURITY_K))
            mine = [j for j, c in enumerate(garments) if c == g["label"]]
            if not mine:
                false_groups += 1
                continue
            hits = [catalog[i].attributes for i in g["ranked"][:PART_K]]
            garment = {a: v[mine[0]] for a, v in target.items()}
            relevance[attr].append(metrics.part_relevance(hits, garment, [attr]))
            for a in target:
                if a != attr and garment.get(a) not in (None, UNSPECIFIED):
                    relevance[f"{attr}+{a}"].append(metrics.part_relevance(hits, garment, [attr, a]))
            if boxes is not None and g.get("box") is not None:
                box_iou.append(max(metrics.box_iou(g["box"], boxes[j]) for j in mine))

    if item_vectors is not None and lists["ids"]:  # one look-up for every list's items
        union = list(dict.fromkeys(i for ids in lists["ids"] for i in ids))
        vec = dict(zip(union, item_vectors(union)))
        lists["ild"] = [metrics.intra_list_diversity(np.stack([vec[i] for i in ids])) if ids else 0.0
                        for ids in lists["ids"]]

    def mean(xs):
        return float(np.mean(xs)) if len(xs) else None

    out = {"version": PROTOCOL_VERSIONS["diverse"], "gallery_size": len(gallery.ids), "n_queries": len(queries),
           "n_scored": len(lists["coverage"]), "n_grouped": n_grouped, "list": "first 5 x garments of ranked",
           "coverage": mean(lists["coverage"]), "ild": mean(lists["ild"]), "distinct_categories": mean(lists["distinct"]),
           "list_length": mean(lists["length"])}
    if n_grouped:
        out.update({"groups_per_query": mean(groups_per), "garments_per_query": mean(garments_per),
                    "false_group_share": false_groups / max(1, n_groups), f"purity@{PURITY_K}": mean(purity),
                    "part_relevance": {k: mean(v) for k, v in relevance.items()}, "part_k": PART_K,
                    "group_box_iou": mean(box_iou)})
    return out


def classification_report(scores, labels, class_names: Sequence[str] | None = None,
                          ks: Iterable[int] = metrics.CLASSIFICATION_K) -> dict:
    """Category classification (protocol 3, Park et al. Table 2) from a score matrix (n, C) and true
    class indices (n,): {"n", "n_classes", "classes", "top_k": {"1": ..., "3": ..., "5": ...}}.
    Put it in a same-item report as report["classification"]."""
    s = np.asarray(scores)
    return {"n": int(s.shape[0]), "n_classes": int(s.shape[1]) if s.ndim == 2 else 0,
            "classes": list(class_names) if class_names is not None else None,
            "top_k": _kdict(metrics.classification_top_k_accuracy(scores, labels, ks))}


# --- entry point ---------------------------------------------------------------------------------------
def _labels(rows) -> str:
    """Whether the run read catalogue labels (rows written by `vestis search` say so): "off" (vision only, the
    papers' protocol), "on" (catalogue-aware), "mixed", or "not recorded" (rankings from another tool)."""
    seen = {r.get("labels") for r in rows if "ranked" in r}
    if seen <= {"off"} and seen:
        return "off"
    if seen == {"on"}:
        return "on"
    return "not recorded" if seen <= {None} else "mixed"


def evaluate(queries: str | Path | Sequence[dict], rankings: str | Path | Sequence[Mapping] | Mapping[str, Mapping],
             catalog: Catalog, attributes: Sequence[str] | None = None, *, protocol: str | None = None,
             query_split: str = "query", gallery_split: str = "gallery", gallery_ids: Iterable[str] | None = None,
             gallery_fractions: Sequence[float] = GALLERY_FRACTIONS, seed: int = 0, curve_k: int = CURVE_K,
             views: str | None = None, item_vectors=None,
             query_sha256: str | None = None, query_file: str | None = None) -> dict:
    """Score a rankings file against a query file (PROTOCOLS.md); returns the report dict.

    `queries` / `rankings`: file paths, or already-read lists (rankings also as {query_id: row}).
    `attributes`: protocol 1's attribute set A (default: the keys of the first query's target; every
    target must cover exactly A); for protocol 2 the order of the per-attribute tables.
    `protocol`: for query lines without a "protocol" key. `gallery_ids`: the gallery actually searched
    (default: every item of `gallery_split`). `gallery_fractions`, `seed`: the gallery-size curve (nested
    subsets drawn from one seeded permutation of the gallery; pass () to skip it - it needs rankings
    of about 2 * 20 / min(fraction) ids); `curve_k`: its Top-k (20, as AMNet). `views`: for same-item reports, what the multi-view data is
    ("real multi-view", "synthetic multi-view" or "augmented single photos").

    The report: {"protocol", "protocol_versions", "dataset", "catalog_source", "splits": {"query",
    "gallery"}, "query_file", "query_sha256", "n_queries", "n_scored", "skipped": {reason: count}, "run":
    None, "machine": None} plus one section per protocol present ("manipulation", "attribute", "triplet",
    "same_item"). The caller fills "run" (a name or a dict with "name") and "machine" (`machine_info()`).
    """
    if isinstance(queries, (str, Path)):
        query_file = query_file or Path(queries).name
        query_sha256 = file_sha256(queries)
        queries = read_queries(queries)
    queries = [dict(q) for q in queries]
    if not queries:
        raise QueryFileError("the query file holds no queries")
    rows = read_rankings(rankings) if isinstance(rankings, (str, Path)) else index_rows(rankings)
    if protocol is not None and protocol not in PROTOCOLS:
        raise QueryFileError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")

    by_protocol: dict[str, list[dict]] = defaultdict(list)
    for q in queries:
        p = q.get("protocol") or protocol
        if p is None:
            raise QueryFileError(f"query {q['query_id']!r} names no protocol; pass protocol=...")
        q["_protocol"] = p
        by_protocol[p].append(q)
    qids = [q["query_id"] for q in queries]
    if len(set(qids)) != len(qids):
        raise QueryFileError("query ids are not unique")
    missing = [i for i in qids if i not in rows]
    if missing:
        raise RankingsError(f"the rankings file has no line for {len(missing)} of {len(qids)} queries "
                            f"(e.g. {', '.join(map(repr, missing[:5]))}); every query needs a line - write "
                            "{\"query_id\": ..., \"skipped\": reason} for a query the run could not answer")
    extra = set(rows) - set(qids)
    if extra:
        raise RankingsError(f"the rankings file has {len(extra)} lines for queries not in the query file (e.g. "
                            f"{', '.join(map(repr, sorted(extra)[:5]))}); rankings of another query file?")

    needs_gallery = any(p in by_protocol for p in ("manipulation", "attribute", "same_item", "consumer_to_shop",
                                                   "diverse"))
    gallery = None
    if needs_gallery:
        ids = list(gallery_ids) if gallery_ids is not None else catalog.split(gallery_split).ids()
        gallery = _Gallery(catalog, ids, gallery_split)

    skipped: Counter = Counter()
    report: dict = {}
    if "manipulation" in by_protocol:
        report["manipulation"] = _manipulation(by_protocol["manipulation"], rows, catalog, gallery, attributes,
                                               gallery_fractions, seed, curve_k, skipped)
    if "attribute" in by_protocol:
        report["attribute"] = _attribute_map(by_protocol["attribute"], rows, catalog, gallery, attributes, skipped)
    if "triplet" in by_protocol:
        report["triplet"] = _triplets(by_protocol["triplet"], rows, catalog, attributes, skipped)
    if "same_item" in by_protocol:
        report["same_item"] = _same_item(by_protocol["same_item"], rows, catalog, gallery, views, skipped)
    if "consumer_to_shop" in by_protocol:
        report["consumer_to_shop"] = _consumer_to_shop(by_protocol["consumer_to_shop"], rows, catalog, gallery, skipped)
    if "diverse" in by_protocol:
        report["diverse"] = _diverse(by_protocol["diverse"], rows, catalog, gallery, item_vectors, skipped)

    versions = {p: PROTOCOL_VERSIONS[p] for p in PROTOCOLS if p in by_protocol}
    head = {
        "protocol": " + ".join(dict.fromkeys(versions.values())),
        "protocol_versions": versions,
        "dataset": catalog.name,
        "catalog_source": catalog.source,
        "splits": {"query": query_split, "gallery": gallery_split},
        "query_file": query_file,
        "query_sha256": query_sha256,
        "n_queries": len(queries),
        "n_scored": sum(s["n_scored"] for s in report.values()),
        "skipped": dict(skipped),
        "labels": _labels(rows.values()),
        "run": None,
        "machine": None,
    }
    return {**head, **report}
