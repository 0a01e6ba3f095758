"""`amnet`: AMNet (Zhao, Feng, Wu, Yan, "Memory-Augmented Attribute Manipulation Networks for Interactive
Fashion Search", CVPR 2017) as a head on cached trunk feature maps.

The four components of the paper:
1. Representation learner: the (cached, shared) trunk maps of the reference, positive and negative image,
   pooled, then fully connected layers giving the representation r (Q dims). Gallery vectors are r.
2. Memory block: M, C x Q prototype attribute representations, one row per known value of every
   attribute (C = sum of the attributes' value counts; "unspecified" has no row: nothing is ever
   manipulated from or to it). Initialised as in section 3.4: a multi-attribute classifier (FC branches on
   r) is trained first, then row (a, v) = the mean r of the training images whose attribute a is v.
   Read with the normalised manipulation indicator h' (eq. 1): t = sum_i h'(i) M(i, :), learnt by
   back-propagation (eq. 2): dL/dM(i, :) = h'(i) dL/dt, so only the addressed rows change.
3. Attribute manipulator: r' = W [r, t] + b (eq. 3), one learnt FC layer on the concatenation.
4. Losses: the classification branches applied to r' with the reference's labels after the manipulation
   (eq. 4, L_a), the triplet ranking loss max(0, m + d(r', r+) - d(r', r-)) on <ref, pos, neg> with pos
   having exactly the target attribute vector (eq. 5, L_t, squared Euclidean), L = lam L_a + (1 - lam) L_t
   (eq. 6); m = 0.5, lam = 0.2; SGD with momentum. Eq. 4 sums the attributes' classification losses;
   `cls_reduction` = "sum" (the default) does that; "mean" (the old default) averages them, which weighs L_a
   A times less against L_t (with lam = 0.2 and 6 attributes, 6x). It sets L_a of phase 2 only; phase 1 (the
   classifier that initialises M) takes the mean either way. Measured on fashion-product-images (README,
   "The papers' settings"): the paper's "binary" + "sum" gave Top-30 66.4 % against 66.3 % for the old
   "signed" + "mean", and asked@10 0.565 against 0.535, so the paper's values are the defaults.

The indicator h (section 3.2), `indicator`:
- "binary" (the paper, the default): 1 at each desired value, 0 elsewhere; the controller normalises it (eq. 1),
  h' = h / sum_i h(i), and t = sum_i h'(i) M(i): one manipulation reads t = M(new), two read
  (M(new_a) + M(new_b)) / 2. The current value plays no part.
- "signed" (the old default, kept as an option): +1 at each desired value
  and minus the weight of the value it replaces ("remove the old value, add the new one"; the -1/0/+1
  encoding of later attribute-manipulation code such as ADDE), so one manipulation reads a difference of
  prototypes. Training takes the reference's labelled current value (-1 at it). At query time the current
  value is not given (the query may be any image), so `current` says what stands in for it:
  "probabilities" (default since session 8): -p(v) at every known value v, p the branches' probabilities over
  the attribute's known values; then h(new) = 1 - p(new), so a confident "already blue" leaves little to do but
  never cancels outright, and an unsure classifier spreads the subtraction instead of betting on one value.
  Measured with "sum": Top-30 69.6 % against 68.3 % for "argmax" (README, "The papers' settings");
  "argmax": -1 at the classification branches' most likely known value. When that IS the requested value the
  +1 and -1 cancel, h = 0 and the query is not manipulated at all (tested).
Several attributes may be manipulated at once. `indicator_norm` sets the normalisation of eq. 1: "l1"
(the paper's), h' = h / sum_i |h(i)| (for "binary", exactly the paper's h / sum h); under "signed" one
manipulation then reads (M(new) - M(old)) / 2 and two a quarter of each difference; "l2" (h / ||h||) and
"none" (h' = h, the default, see below) are the alternatives. A query without manipulation has h = 0, so t = 0 and r' = W [r, 0] + b:
the manipulator is always applied, as in the paper's network (identity triplets, `p_identity`, train that
case: pos = another item with the reference's exact vector).

Deviations and choices, each a config switch: the trunk is frozen (cached maps; the paper fine-tunes its
dual-path CNN), so r = FC(BN(FC(BN(pooled s32 + s16 maps)))); the classification branches also classify r
of the reference, positive and negative (`cls_all`, keeping the gallery representation attribute-
discriminative); the manipulator starts as r' = r + M(new) - M(old) for one manipulation under "signed",
r' = r + M(new) under "binary" (identity on r, `init_identity`; without memory the indicator block starts at
zero); weight decay is applied to every parameter but the memory, so memory rows that are never addressed
never move (eq. 2); training rows are mined from the training labels (ManipulationMiner). Measured on a
validation slice of the train split of fashion-product-images (runs/tune-amnet), two settings beat the
paper's: `normalize` (compare unit-length r and r'; unnormalised squared distances made the triplet term
swamp the classifier) and `indicator_norm="none"` (with a linear manipulator, "l1" scales one change by 1/2
and each of two by 1/4, which no single W fits, and slows the memory's gradient by the same factors). They are
the defaults: trained with the paper's two settings on the whole train split, the model collapsed (its
classifier's loss rose from 0.14 to 7.8 in the triplet phase; protocol-1 Top-30 7.1 %, session 6).

Ablations (paper section 5.3), as config switches of this class with thin registered subclasses:
`amnet_no_memory` (memory=False: the normalised indicator h' itself is concatenated with r instead of
t) and `amnet_no_ranking` (lam=1: no triplet ranking loss).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vestis.errors import VestisError
from vestis.losses import multi_attribute_ce, triplet_margin
from vestis.models.base import Maps, SearchModel, register
from vestis.models.layers import POOLS, AttributeClassifiers, averages_as_maps, l2n, pool_maps, value_means
from vestis.models.loop import LoopConfig, TrainData, fit_loop, pooled_features

NORMS = ("l1", "l2", "none")
INDICATORS = ("signed", "binary")
CURRENTS = ("argmax", "probabilities")
REDUCTIONS = ("mean", "sum")
# "signed": one manipulation reads (M(new) - M(old)) / gain; "binary" reads M(new) under every norm
INIT_GAIN = {"l1": 2.0, "l2": 2 ** 0.5, "none": 1.0}


def normalise_indicator(h: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """h' of eq. 1. "l1": h / sum |h| (for a binary h, the paper's controller h / sum h); "l2": h / ||h||;
    "none": h. Rows of h that are all zero (no manipulation) stay zero."""
    if norm == "none":
        return h
    d = h.abs().sum(-1, keepdim=True) if norm == "l1" else h.norm(dim=-1, keepdim=True)
    return h / d.clamp_min(1e-12)


class MemoryBlock(nn.Module):
    """M (C x Q) and its read t = h' M (eq. 1). Written by back-propagation (eq. 2): the gradient of row i is
    h'(i) dL/dt, zero for rows the indicator does not address."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.memory = nn.Parameter(torch.zeros(rows, dim))

    def forward(self, h_norm: torch.Tensor) -> torch.Tensor:
        return h_norm @ self.memory


# --- training triplets --------------------------------------------------------------------------------
class ManipulationMiner:
    """Samples AMNet training rows (ref, pos, neg, new code per attribute or -1) from training labels.

    A manipulation of the reference is sampled only if some training item has exactly the resulting
    attribute vector (that item is the positive): the manipulated attributes' current values are known,
    the new values are known and differ (PROTOCOLS.md section 1, the rules of the query files). Draws are
    balanced like the query files: first the kind (identity with `p_identity`, two attributes with
    `p_two`, else one), then the attribute (pair) uniformly, then a valid (reference, target) uniformly.
    Negatives (any item whose vector differs from the target): with `p_neg_original` an item with the
    reference's own vector (possibly the reference itself: "the manipulation must move away from where it
    started"), with `p_neg_partial` an item that has a manipulated attribute's new value (but differs
    elsewhere: "keep the other attributes"), with `p_neg_near` an item whose vector differs from the target
    in exactly one attribute (a near miss: the exact-match protocol counts it as a miss), else a random
    item. Identity rows draw near-miss or random negatives.
    Lookups are vectorised over attribute-vector keys (mixed-radix integers of the code tuples).
    """

    def __init__(self, labels: np.ndarray, n_values: list[int], p_identity: float = 0.1, p_two: float = 0.3,
                 p_neg_original: float = 0.4, p_neg_partial: float = 0.3, p_neg_near: float = 0.0,
                 max_pairs: int = 30_000_000):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n_values = np.asarray(n_values, dtype=np.int64)
        self.n, self.A = self.labels.shape
        self.p_identity, self.p_two = float(p_identity), float(p_two)
        self.p_neg_original, self.p_neg_partial = float(p_neg_original), float(p_neg_partial)
        self.p_neg_near = float(p_neg_near)
        radix = self.n_values + 1
        self.strides = np.concatenate([[1], np.cumprod(radix[:-1])]).astype(np.int64)
        self.keys = self.labels @ self.strides
        self.order = np.argsort(self.keys, kind="stable")
        self.uniq, self.start, self.count = np.unique(self.keys[self.order], return_index=True, return_counts=True)
        self.group = np.searchsorted(self.uniq, self.keys)                     # item -> its vector group
        self.rank = np.empty(self.n, np.int64)                                  # item -> position in its group
        self.rank[self.order] = np.arange(self.n) - self.start[self.group[self.order]]
        self.ucodes = self.labels[self.order[self.start]]                       # (U, A) codes of each group
        # per attribute: items sorted by value, for "has value v of attribute a"
        self.by_value = []
        for a in range(self.A):
            o = np.argsort(self.labels[:, a], kind="stable")
            s = np.searchsorted(self.labels[o, a], np.arange(self.n_values[a] + 2))
            self.by_value.append((o, s))
        self.combos: dict[int, list[tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]]] = {1: [], 2: []}
        for k in (1, 2):
            for combo in itertools.combinations(range(self.A), k):
                src, dst = self._pairs(list(combo), max_pairs)
                if len(src):
                    w = np.cumsum(self.count[src]).astype(np.float64)  # uniform over reference *items*
                    self.combos[k].append((combo, src, dst, w))
        self.identity_items = np.flatnonzero(self.count[self.group] >= 2)
        # near misses: groups one valid single-attribute change away (CSR over groups)
        src = np.concatenate([c[1] for c in self.combos[1]] or [np.zeros(0, np.int64)])
        dst = np.concatenate([c[2] for c in self.combos[1]] or [np.zeros(0, np.int64)])
        o = np.argsort(src, kind="stable")
        self.near_dst = dst[o]
        self.near_ptr = np.searchsorted(src[o], np.arange(len(self.uniq) + 1))

    def _pairs(self, cols: list[int], max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
        """Ordered pairs of vector groups (src, dst) equal outside `cols` and validly different on `cols`."""
        rest = self.uniq - (self.ucodes[:, cols] * self.strides[cols]).sum(1)
        srt = np.argsort(rest, kind="stable")
        _, gs, gc = np.unique(rest[srt], return_index=True, return_counts=True)
        keep = gc >= 2
        gs, gc = gs[keep], gc[keep]
        sq = gc * gc
        total = int(sq.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if total > max_pairs:
            raise VestisError(f"amnet: {total} candidate manipulations for attributes {cols}; too many to list")
        g = np.repeat(np.arange(len(gs)), sq)
        o = np.arange(total) - np.repeat(np.cumsum(sq) - sq, sq)
        src = srt[gs[g] + o // gc[g]]
        dst = srt[gs[g] + o % gc[g]]
        cs, cd, nv = self.ucodes[src][:, cols], self.ucodes[dst][:, cols], self.n_values[cols]
        ok = ((cs < nv) & (cd < nv) & (cs != cd)).all(1)
        return src[ok], dst[ok]

    def _member(self, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.order[self.start[groups] + (rng.random(len(groups)) * self.count[groups]).astype(np.int64)]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3 + A) int64 rows: ref, pos, neg, then per attribute the new code or -1 (not manipulated)."""
        rows = np.full((n, 3 + self.A), -1, np.int64)
        target_key = np.zeros(n, np.int64)
        u = rng.random(n)
        kinds = np.where(u < self.p_identity, 0, np.where(u < self.p_identity + self.p_two, 2, 1))
        if not self.combos[2]:
            kinds[kinds == 2] = 1
        if not self.combos[1]:
            kinds[kinds == 1] = 0
        if not len(self.identity_items):
            kinds[kinds == 0] = 1 if self.combos[1] else 2
        if not len(self.identity_items) and not self.combos[1] and not self.combos[2]:
            raise VestisError("amnet: no training item has a manipulation partner or a duplicate attribute vector; "
                              "nothing to train the manipulation on")
        # identity rows: pos = another item with the reference's exact vector
        ii = np.flatnonzero(kinds == 0)
        if len(ii):
            ref = self.identity_items[rng.integers(len(self.identity_items), size=len(ii))]
            g = self.group[ref]
            j = (rng.random(len(ii)) * (self.count[g] - 1)).astype(np.int64)
            j = j + (j >= self.rank[ref])
            rows[ii, 0], rows[ii, 1] = ref, self.order[self.start[g] + j]
            target_key[ii] = self.keys[ref]
        for k in (1, 2):
            ik = np.flatnonzero(kinds == k)
            if not len(ik):
                continue
            which = rng.integers(len(self.combos[k]), size=len(ik))
            for c, (combo, src, dst, w) in enumerate(self.combos[k]):
                ic = ik[which == c]
                if not len(ic):
                    continue
                p = np.minimum(np.searchsorted(w, rng.random(len(ic)) * w[-1], side="right"), len(w) - 1)
                rows[ic, 0] = self._member(src[p], rng)
                rows[ic, 1] = self._member(dst[p], rng)
                for a in combo:
                    rows[ic, 3 + a] = self.ucodes[dst[p], a]
                target_key[ic] = self.uniq[dst[p]]
        rows[:, 2] = self._negatives(rows, kinds, target_key, rng)
        return rows

    def _negatives(self, rows: np.ndarray, kinds: np.ndarray, target_key: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
        n = len(rows)
        neg = rng.integers(self.n, size=n)
        u = rng.random(n)
        c1 = self.p_neg_original
        c2 = c1 + self.p_neg_partial
        c3 = c2 + self.p_neg_near
        orig = (kinds > 0) & (u < c1)
        if orig.any():
            neg[orig] = self._member(self.group[rows[orig, 0]], rng)
        part = np.flatnonzero((kinds > 0) & (u >= c1) & (u < c2))
        if len(part):
            new = rows[part, 3:]
            # one manipulated attribute per row, uniformly
            score = np.where(new >= 0, rng.random(new.shape), -1.0)
            a = score.argmax(1)
            v = new[np.arange(len(part)), a]
            for att in np.unique(a):
                sel = a == att
                o, s = self.by_value[att]
                lo, hi = s[v[sel]], s[v[sel] + 1]
                neg[part[sel]] = o[lo + (rng.random(sel.sum()) * (hi - lo)).astype(np.int64)]
        near = np.flatnonzero(((u >= c2) & (u < c3)) | ((kinds == 0) & (u < c3 - c2)))
        if len(near):
            g = np.searchsorted(self.uniq, target_key[near])  # target groups exist (the positive is in them)
            lo, hi = self.near_ptr[g], self.near_ptr[g + 1]
            has = hi > lo
            pick = self.near_dst[lo[has] + (rng.random(has.sum()) * (hi - lo)[has]).astype(np.int64)]
            neg[near[has]] = self._member(pick, rng)
        for _ in range(20):  # a negative must differ from the target vector
            bad = np.flatnonzero(self.keys[neg] == target_key)
            if not len(bad):
                break
            neg[bad] = rng.integers(self.n, size=len(bad))
        return neg

    def batches(self, n: int, batch_size: int, rng: np.random.Generator):
        rows = self.sample(n, rng)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield rows[i:i + batch_size]


# --- the model ----------------------------------------------------------------------------------------
@register
class AMNet(SearchModel):
    name = "amnet"
    levels = ("s16", "s32")  # `levels` in the config picks among these
    metric = "l2"
    quick_config = {"hidden": 32, "dim": 16, "pre_epochs": 2, "epochs": 1, "batch_size": 32}
    supports_manipulation = True
    forced: dict = {}  # config a registered variant fixes (the ablations)
    default_config = {
        # representation learner: pooled trunk maps -> FC -> r (Q = dim)
        "levels": ["s32", "s16"], "pool": "avg", "hidden": 1024, "dim": 512, "dropout": 0.2,
        # the paper's choices (the ablations flip `memory` and `lam`), except `normalize` and
        # indicator_norm="none": with the paper's unnormalised vectors and "l1" the triplet term swamps the
        # classifier and training collapses on fashion-product-images (Top-30 7.1 %, README), so the two settings
        # that measured better became the defaults; {"normalize": false, "indicator_norm": "l1"} is the paper's
        "memory": True, "lam": 0.2, "margin": 0.5, "squared": True, "indicator_norm": "none",
        "normalize": True, "cls_all": True, "init_identity": True, "init_gain": 0.0,
        # the indicator h and L_a's reduction over attributes: the paper's "binary" and "sum" (measured no
        # worse than the old "signed" + "mean"; README); `current` applies to "signed" only (probabilities: what
        # the issue asks of the signed form, and measured better than the arg-max)
        "indicator": "binary", "current": "probabilities", "cls_reduction": "sum",
        # phase 1 (section 3.4): the multi-attribute classifier whose representations initialise M
        "pre_epochs": 25, "pre_lr": 0.1,
        # phase 2: joint training on <ref, pos, neg> triplets, SGD with momentum 0.9
        "epochs": 8, "triplets_per_epoch": 0, "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4,
        "p_identity": 0.1, "p_two": 0.3, "p_neg_original": 0.3, "p_neg_partial": 0.2, "p_neg_near": 0.3,
        "seed": 0, "threads": 1,
    }

    @classmethod
    def levels_for(cls, config):
        return tuple(config["levels"])  # in the configured order: the pooled vectors are concatenated in it

    def __init__(self, schema, channels, config=None):
        for k, v in self.forced.items():
            if k in (config or {}) and config[k] != v:
                raise VestisError(f"model {self.name} fixes {k}={v!r}; use model 'amnet' to set it")
        super().__init__(schema, channels, {**(config or {}), **self.forced})
        cfg = self.config
        if cfg["pool"] not in POOLS:
            raise VestisError(f"model {self.name}: pool must be one of {POOLS}, got {cfg['pool']!r}")
        if cfg["indicator_norm"] not in NORMS:
            raise VestisError(f"model {self.name}: indicator_norm must be one of {NORMS}, "
                              f"got {cfg['indicator_norm']!r}")
        for key, allowed in (("indicator", INDICATORS), ("current", CURRENTS), ("cls_reduction", REDUCTIONS)):
            if cfg[key] not in allowed:
                raise VestisError(f"model {self.name}: {key} must be one of {allowed}, got {cfg[key]!r}")
        if not 0.0 <= cfg["lam"] <= 1.0:
            raise VestisError(f"model {self.name}: lam must be in [0, 1], got {cfg['lam']}")
        self.n_values = [len(schema.values(a)) for a in schema.attributes]
        self.n_rows = sum(self.n_values)
        d_in = sum(self.channels[lv] for lv in self.levels) * (2 if cfg["pool"] == "avgmax" else 1)
        q, hid = cfg["dim"], cfg["hidden"]
        self.rep = nn.Sequential(nn.BatchNorm1d(d_in), nn.Linear(d_in, hid), nn.BatchNorm1d(hid), nn.ReLU(),
                                 nn.Dropout(cfg["dropout"]), nn.Linear(hid, q))
        self.classifiers = AttributeClassifiers(q, [n + 1 for n in self.n_values])
        self.memory = MemoryBlock(self.n_rows, q) if cfg["memory"] else None
        cond = q if cfg["memory"] else self.n_rows
        self.manipulator = nn.Linear(q + cond, q)
        if cfg["init_identity"]:
            with torch.no_grad():
                w = torch.zeros(q, q + cond)
                w[:, :q] = torch.eye(q)
                if cfg["memory"]:  # one manipulation: r' = r + M(new) - M(old) ("signed"), r + M(new) ("binary")
                    gain = 1.0 if cfg["indicator"] == "binary" else INIT_GAIN[cfg["indicator_norm"]]
                    w[:, q:] = (cfg["init_gain"] or gain) * torch.eye(q)
                self.manipulator.weight.copy_(w)
                self.manipulator.bias.zero_()
        self.register_buffer("offsets", torch.tensor(np.concatenate([[0], np.cumsum(self.n_values)[:-1]]),
                                                     dtype=torch.long), persistent=False)
        self.register_buffer("value_counts", torch.tensor(self.n_values, dtype=torch.long), persistent=False)

    # --- the network -------------------------------------------------------------------------------------
    def represent(self, maps: Maps) -> torch.Tensor:
        """r: the representation learner on pooled trunk maps."""
        return self.rep(pool_maps(maps, self.levels, self.config["pool"]))

    def query_summary(self, maps: Maps) -> Maps | None:
        """With average pooling (the default) every query-side read of AMNet is the global average of its levels
        (`represent`, and s32 for the "visual" space), so those averages as 1 x 1 maps are read exactly as the whole
        maps; "avgmax" also reads the maxima, which one cell cannot hold (None)."""
        if self.config["pool"] != "avg":
            return None
        return averages_as_maps(maps, (*self.levels, "s32"))

    def _out(self, r: torch.Tensor) -> torch.Tensor:
        return l2n(r) if self.config["normalize"] else r

    def indicator(self, current: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        """Raw indicator h (N, C). new: (N, A) codes, -1 where the attribute is not manipulated; +1 at each
        manipulated attribute's new value. Under "binary" that is all (`current` is ignored). Under "signed"
        the current value is subtracted: `current` (N, A) integer codes put -1 at that code (a code of
        "unspecified", or -1, subtracts nothing), or (N, C) float weights in memory-row layout (e.g.
        `current_distribution`) subtract those weights from every row of a manipulated attribute."""
        new = torch.as_tensor(new, dtype=torch.long)
        h = torch.zeros(len(new), self.n_rows)
        mask = new >= 0
        h.scatter_add_(1, self.offsets + new.clamp_min(0), mask.float())
        if self.config["indicator"] == "binary":
            return h
        current = torch.as_tensor(current)
        if current.is_floating_point():
            rows = torch.repeat_interleave(mask, self.value_counts, dim=1)  # (N, C): rows of manipulated attributes
            return h - current.to(h.dtype) * rows
        current = current.long()
        known = mask & (current >= 0) & (current < self.value_counts)
        cur = torch.minimum(current.clamp_min(0), self.value_counts - 1)
        h.scatter_add_(1, self.offsets + cur, -known.float())
        return h

    def manipulate(self, r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """r' = W [r, t] + b with t = h' M (or, without memory, W [r, h'] + b)."""
        hn = normalise_indicator(h, self.config["indicator_norm"])
        cond = self.memory(hn) if self.memory is not None else hn
        return self.manipulator(torch.cat([r, cond], dim=-1))

    def classify(self, r: torch.Tensor) -> list[torch.Tensor]:
        """The M attribute classification branches: per attribute, logits over its values + unspecified."""
        return self.classifiers(r)

    def current_values(self, r: torch.Tensor) -> torch.Tensor:
        """(N, A) predicted codes among each attribute's known values (the classification branches on r)."""
        return torch.stack([lg[:, :n].argmax(-1) for lg, n in zip(self.classify(r), self.n_values)], dim=1)

    def current_distribution(self, r: torch.Tensor) -> torch.Tensor:
        """(N, C) in memory-row layout: per attribute, the branches' probabilities over its known values
        (softmax over those logits only; "unspecified" has no row), the stand-in for the current value under
        `current` = "probabilities"."""
        return torch.cat([F.softmax(lg[:, :n], dim=-1) for lg, n in zip(self.classify(r), self.n_values)], dim=1)

    def query_indicator(self, r: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """h for queries: the current value is not given, so the classification branches' reading of r
        stands in for it (`current`); "binary" needs none."""
        if self.config["indicator"] == "binary":
            return self.indicator(None, new)
        if self.config["current"] == "probabilities":
            return self.indicator(self.current_distribution(r), new)
        return self.indicator(self.current_values(r), new)

    def new_codes(self, manipulations: list[dict]) -> torch.Tensor:
        new = torch.full((len(manipulations), len(self.n_values)), -1, dtype=torch.long)
        attrs = self.schema.attributes
        for i, m in enumerate(manipulations):
            for a, v in m.items():
                new[i, attrs.index(a)] = self.schema.index(a, v)
        return new

    def predict_attributes(self, maps: Maps) -> list[torch.Tensor]:
        """Per attribute, (N, values + 1) probabilities of r's classification branches (last: unspecified)."""
        return [F.softmax(lg, dim=-1) for lg in self.classify(self.represent(maps))]

    # --- protocol ----------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.config["dim"]

    @torch.no_grad()
    def embed(self, maps: Maps, space: str = "main") -> torch.Tensor:
        if space != "main":
            return super().embed(maps, space)
        return self._out(self.represent(maps))

    @torch.no_grad()
    def embed_query(self, maps: Maps, manipulations=None) -> torch.Tensor:
        n = next(iter(maps.values())).shape[0]
        manipulations = self.check_manipulations(manipulations, n)
        r = self.represent(maps)
        h = self.query_indicator(r, self.new_codes(manipulations))
        return self._out(self.manipulate(r, h))

    # --- training ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_memory(self, pooled: torch.Tensor, labels: torch.Tensor) -> None:
        """Section 3.4: each memory row = the mean representation of the training images with that value."""
        if self.memory is None:
            return
        was = self.training
        self.eval()
        reps = torch.cat([self.rep(pooled[i:i + 4096]) for i in range(0, len(pooled), 4096)])
        self.memory.memory.copy_(value_means(reps, labels, self.n_values)[0])
        self.train(was)

    def training_loss(self, x: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """L = lam L_a + (1 - lam) L_t (eq. 6) for rows (ref, pos, neg, new code per attribute or -1) of a
        ManipulationMiner; x: pooled trunk features of the training items, labels: their codes."""
        cfg = self.config
        lam = float(cfg["lam"])
        ref, pos, neg, new = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3:]
        b = len(rows)
        idx = torch.cat([ref, pos, neg])
        r = self.rep(x[idx])
        cur = labels[ref]
        r_m = self.manipulate(r[:b], self.indicator(cur, new))
        target = torch.where(new >= 0, new, cur)  # eq. 4: the reference's labels follow the manipulation
        red = cfg["cls_reduction"]
        l_a = multi_attribute_ce(self.classify(r_m), target, reduction=red)
        if cfg["cls_all"]:
            l_a = (l_a + multi_attribute_ce(self.classify(r), labels[idx], reduction=red)) / 2
        loss, logs = lam * l_a, {"cls": l_a}
        if lam < 1:
            out = self._out(torch.cat([r_m, r[b:]]))
            anchor, positive, negative = out[:b], out[b:2 * b], out[2 * b:]
            l_t = triplet_margin(anchor, positive, negative, cfg["margin"], squared=cfg["squared"])
            loss = loss + (1 - lam) * l_t
            logs["triplet"] = l_t
        return loss, logs

    def fit(self, data: TrainData, progress: bool = True) -> dict:
        """Phase 1 (classifier), memory initialisation, phase 2 (triplets). `threads` intra-op threads while
        training (0: leave torch's setting): these heads are small, and on a busy 2-core machine one thread
        trained 4x faster than two (0.085 s vs 0.35 s per 128-triplet step)."""
        prev = torch.get_num_threads()
        if self.config["threads"]:
            torch.set_num_threads(int(self.config["threads"]))
        try:
            return self._fit(data, progress)
        finally:
            torch.set_num_threads(prev)

    def _fit(self, data: TrainData, progress: bool) -> dict:
        cfg = self.config
        if len(data) < 2:
            raise VestisError("amnet needs at least two training items")
        labels = torch.from_numpy(data.labels.astype(np.int64))
        x = pooled_features(data, tuple(self.levels), self.config["pool"])
        history: dict = {}
        # phase 1: the multi-attribute classifier (representation learner + classification branches)
        if cfg["pre_epochs"] > 0:
            bs = min(cfg["batch_size"] * 2, len(data))

            def pre_step(idx):
                return data.attribute_ce(self.classify(self.rep(x[idx])), idx, labels), {}

            pre = LoopConfig(epochs=cfg["pre_epochs"], batch_size=bs, lr=cfg["pre_lr"],
                             weight_decay=cfg["weight_decay"], seed=cfg["seed"], optimizer="sgd")
            h1 = fit_loop(list(self.rep.parameters()) + list(self.classifiers.parameters()), data, pre_step, pre,
                          desc=f"{self.name}: classifier", progress=progress, modules=[self])
            history.update({f"pre_{k}": v for k, v in h1.items()})
        # memory initialisation from the classifier's representations
        self.init_memory(x, labels)
        # phase 2: joint training on triplets
        if cfg["epochs"] > 0:
            # the triplet phase needs whole label vectors: the first catalogue's rows (they come first)
            miner = ManipulationMiner(data.labels[:data.n_primary], self.n_values, cfg["p_identity"], cfg["p_two"],
                                      cfg["p_neg_original"], cfg["p_neg_partial"], cfg["p_neg_near"])
            n_trip = int(cfg["triplets_per_epoch"] or data.n_primary)
            bs = min(cfg["batch_size"], n_trip)
            decay = [p for n, p in self.named_parameters() if not n.startswith("memory.")]
            wd = float(cfg["weight_decay"])

            others = torch.from_numpy(np.flatnonzero(data.domains != 0)) if data.mixed else None
            gen = torch.Generator().manual_seed(int(cfg["seed"]))

            def step(rows):
                loss, logs = self.training_loss(x, torch.from_numpy(rows), labels)
                if others is not None:  # a mixed run: the triplets hold whole label vectors (the first catalogue's
                    # rows), so the other catalogue's rows keep their classification loss beside them, as many per step
                    pick = others[torch.randint(len(others), (len(rows),), generator=gen)].numpy()
                    l_mix = data.attribute_ce(self.classify(self.rep(x[pick])), pick, labels, reduction=cfg["cls_reduction"])
                    loss = loss + l_mix
                    logs["cls_mix"] = l_mix
                if wd:  # weight decay on all but the memory: unaddressed rows never move (eq. 2)
                    loss = loss + 0.5 * wd * sum(p.pow(2).sum() for p in decay)
                return loss, logs

            loop = LoopConfig(epochs=cfg["epochs"], batch_size=bs, lr=cfg["lr"], weight_decay=0.0,
                              seed=cfg["seed"], optimizer="sgd")
            h2 = fit_loop(self.parameters(), data, step, loop, batches=lambda rng: miner.batches(n_trip, bs, rng),
                          desc=self.name, progress=progress, modules=[self])
            history.update(h2)
        if "seconds" in history:
            history["triplet_seconds"] = history.pop("seconds")
        # "seconds": the whole fit (classifier + triplet phases), as the CLI reports it
        history["seconds"] = [sum(history.get("pre_seconds", [0.0])) + sum(history.get("triplet_seconds", [0.0]))]
        self.eval()
        return history


@register
class AMNetNoMemory(AMNet):
    """Ablation "AMNet w/o memory block": the normalised indicator h' is concatenated with r instead of t."""

    name = "amnet_no_memory"
    forced = {"memory": False}
    default_config = {**AMNet.default_config, **forced}


@register
class AMNetNoRanking(AMNet):
    """Ablation "AMNet w/o ranking loss": lam = 1, the attribute classification loss alone."""

    name = "amnet_no_ranking"
    forced = {"lam": 1.0}
    default_config = {**AMNet.default_config, **forced}
