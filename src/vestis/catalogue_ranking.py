"""Catalogue-aware ranking (labels on, the product default): the catalogue's own labels as constraints and
preferences, the run's model as the order within and across them.

For a query with target distributions t_a (a manipulated attribute: all mass on the requested value; any other:
the query's catalogue label when the query is a catalogue item, else the model's prediction from the photo,
"unspecified" included), a gallery item g scores

    score(g) = sum_a  sum_v e_g,a(v) log max(t_a(v), 1e-6)   +   w * sim_model(q, g)

where e_g,a is g's catalogue label as a one-hot where the catalogue labels it, and the model's predicted
distribution for g where it does not (so an unlabelled attribute or item is unknown, not a mismatch). For a
labelled item the first term is the log-likelihood that g's labels equal a target drawn from t, the quantity a
Top-k hit needs; for an unlabelled one it is that log-likelihood's expectation under the model's belief.
sim_model is the run's own similarity ("main" space), scaled to [-1, 1] for inner products (w/2 times the
negated squared distance, on the same scale, for "l2" models): within items of equal label likelihood it is the
order, and `w` (`LABEL_WEIGHT`) sets how far it can reach across them. The requested values are also hard
constraints: the search runs with the filter {a: [requested value, "unspecified"]} inside the index (not a
post-filter over a short list), so a labelled item of another value is never shown while an unlabelled one can
still rank by its predicted value.

Both parts live in one vector per item, so any inner-product index (exact, HNSW with filters) ranks exactly by
this score:
    gallery g = [e_g,a for every attribute] ++ g_main / G ++ [-|g_main / G|^2 / 2 for l2] ++ [sqrt(B^2 - |.|^2)]
    query   q = [log t_a for every attribute] ++ w * q_main / |q_main| (ip) or w * [q_main / G, 1] (l2) ++ [0]
G is the largest "main" norm in the gallery; the last coordinate gives every gallery vector the norm B, which
turns the maximum inner-product search into a nearest-neighbour search graph indexes answer well (as in
`attribute_baseline`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from vestis.catalog.schema import UNSPECIFIED

SPACE = "labels"  # the index space that holds the label vectors
LABEL_WEIGHT = 1.0  # w: how much the run's similarity (in [-1, 1]) counts against label log-likelihoods (README: sweep)
PROB_FLOOR = 1e-6


def label_blocks(schema, attributes: Sequence[Mapping[str, str]], predicted: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, sum of value counts + 1) rows: per attribute of `schema`, the catalogue label's one-hot where the item's
    attributes give a known value, else the model's predicted distribution `predicted[a]` (N, values + 1)."""
    blocks = []
    for a in schema.attributes:
        values = schema.values(a)
        p = np.asarray(predicted[a], dtype=np.float32).copy()
        code = {v: i for i, v in enumerate(values)}
        for i, attrs in enumerate(attributes):
            j = code.get(attrs.get(a))
            if j is not None:
                p[i] = 0.0
                p[i, j] = 1.0
        blocks.append(p)
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(attributes), 0), np.float32)


def gallery_vectors(blocks: np.ndarray, main: np.ndarray, metric: str) -> tuple[np.ndarray, dict]:
    """The gallery side: label blocks ++ the scaled model vectors (++ the l2 term) ++ the norm-equalising
    coordinate. Returns (vectors, scale) with scale = {"main_norm": G, "bound": B}, which queries need."""
    g_norm = float(np.linalg.norm(main, axis=1).max(initial=0.0)) or 1.0
    x = _unbounded(blocks, main, metric, g_norm)
    bound = float(np.sqrt((x ** 2).sum(1).max(initial=0.0))) * 1.0001 + 1e-6
    return _bounded(x, bound), {"main_norm": g_norm, "bound": bound}


def scaled_gallery_vectors(blocks: np.ndarray, main: np.ndarray, metric: str, scale: Mapping[str, float]) -> np.ndarray:
    """`gallery_vectors` for a few items of an existing gallery, with that gallery's `scale` (an attribute update:
    the rows change, the other items' vectors and the queries' scale stay). A row that would outgrow the bound B
    (a main vector longer than G cannot occur for a stored item; label blocks are at most one-hot) gets a last
    coordinate of 0: its inner products stay exact."""
    return _bounded(_unbounded(blocks, main, metric, scale["main_norm"]), scale["bound"])


def _unbounded(blocks, main, metric, g_norm) -> np.ndarray:
    m = main / g_norm
    parts = [blocks, m]
    if metric == "l2":
        parts.append(-0.5 * (m ** 2).sum(1, keepdims=True))
    return np.concatenate(parts, axis=1).astype(np.float32)


def _bounded(x: np.ndarray, bound: float) -> np.ndarray:
    sq = (x ** 2).sum(1)
    return np.concatenate([x, np.sqrt(np.maximum(bound ** 2 - sq, 0))[:, None]], axis=1).astype(np.float32)


def set_hit_probabilities(t: np.ndarray, sets: Sequence[Sequence[int]]) -> np.ndarray:
    """A photo's target for an attribute it was trained on through a mapping with set-valued targets: value v
    scores the probability that an item of value v is acceptable for the photo, sum over the sets S containing v
    of P(S), where P(S) is the predicted mass of S's values, a value shared by n sets counted 1/n in each (so the
    P(S) sum to the mass on the union). The run learnt only P(S) from photos (its loss is on the set's summed
    probability), so how it splits a set's mass among the set's values is arbitrary: a hat photo predicted
    "Hat" with 0.999 and "Caps" with 0.001 makes both values of the hat set equally welcome. Values in no set
    keep their predicted mass. `t`: (values + 1,), "unspecified" last; `sets`: value indices."""
    t = np.asarray(t, dtype=np.float32)
    share = np.zeros(len(t), np.float32)
    for s in sets:
        share[list(s)] += 1.0
    out = t.copy()
    inside = share > 0
    out[inside] = 0.0
    for s in sets:
        s = list(s)
        out[s] += float((t[s] / share[s]).sum())
    return out


def targets(schema, predicted: Mapping[str, np.ndarray] | None, manipulations: Sequence[Mapping[str, str]],
            known: Sequence[Mapping[str, str] | None], photo_preferences: Collection[str] | None = None,
            shopper: Sequence[bool] | None = None,
            photo_sets: Mapping[str, Sequence[Sequence[str]]] | None = None) -> list[dict[str, np.ndarray]]:
    """Per query row, {attribute: t_a (values + 1,)}: the requested value for a manipulated attribute, the query's
    catalogue label (`known[i]`, for a catalogue item) for the others where it has one, else the model's
    prediction (uniform where the model predicts nothing for the attribute).

    `photo_preferences`: for a photo (a row without catalogue labels), the only attributes whose prediction
    becomes a preference; the others are uniform (no preference). A run trained on shoppers' photos through a
    mapping (`vestis train --mix`) predicts the mapped attribute on photos and the others from packshots alone,
    and those out-of-domain guesses cost more than they give (README, "Consumer-to-shop"). None: every attribute.
    `shopper[i]`: whether row i is such a photo (a packshot on studio white is in the domain every head learnt);
    None: every row without catalogue labels. `photo_sets`: {attribute: the mapping's sets of values}; for such a
    photo, that attribute's prediction becomes `set_hit_probabilities` (None: the per-value prediction)."""
    index_sets = {a: [[schema.values(a).index(v) for v in vs if v in schema.values(a)] for vs in sets]
                  for a, sets in (photo_sets or {}).items() if a in schema.attributes}
    out = []
    for i, manip in enumerate(manipulations):
        row = {}
        photo = shopper[i] if shopper is not None else (not known or known[i] is None)
        for a in schema.attributes:
            values = schema.values(a)
            value = manip.get(a) or ((known[i] or {}).get(a) if known else None)
            if value is not None and value in values:
                t = np.zeros(len(values) + 1, np.float32)
                t[values.index(value)] = 1.0
            elif predicted is not None and a in predicted and (
                    not photo or photo_preferences is None or a in photo_preferences):
                t = np.asarray(predicted[a][i], dtype=np.float32)
                if photo and a in index_sets:
                    t = set_hit_probabilities(t, index_sets[a])
            else:
                t = np.full(len(values) + 1, 1.0 / (len(values) + 1), np.float32)
            row[a] = t
        out.append(row)
    return out


def query_vectors(schema, target_rows: Sequence[Mapping[str, np.ndarray]], main: np.ndarray, metric: str,
                  scale: Mapping[str, float], weight: float = LABEL_WEIGHT) -> np.ndarray:
    """The query side of `gallery_vectors` (see the module docstring)."""
    logs = np.stack([np.concatenate([np.log(np.maximum(t[a], PROB_FLOOR)) for a in schema.attributes])
                     for t in target_rows]).astype(np.float32)
    if metric == "l2":
        m = np.concatenate([main / scale["main_norm"], np.ones((len(main), 1), np.float32)], axis=1)
    else:
        m = main / np.maximum(np.linalg.norm(main, axis=1, keepdims=True), 1e-12)
    return np.concatenate([logs, weight * m, np.zeros((len(main), 1), np.float32)], axis=1).astype(np.float32)


def constraints(manipulation: Mapping[str, str]) -> dict[str, list[str]]:
    """The requested values as filters that still let items without a label for the attribute through."""
    return {a: [v, UNSPECIFIED] for a, v in manipulation.items()}


def target_vector(schema, target_row: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    """The most likely exact label vector of a target (its argmax per attribute; "unspecified" a state)."""
    out = []
    for a in schema.attributes:
        values = (*schema.values(a), UNSPECIFIED)
        out.append(values[int(np.argmax(target_row[a]))])
    return tuple(out)
