"""`agmlan`: attribute-specific similarity (Xiao & Yamasaki, "Attribute-Guided Multi-Level Attention Network
for Fine-Grained Fashion Retrieval"), with the CSN (Veit et al.) and ASEN-style (Ma et al.) variants from the same
code paths (`csn` and `asen` are this class with other defaults; the ablations are config flags).

What it answers: "items whose neckline is like this one's", "the same colour as this, whatever the category" -
`mode="attribute:<name>"` ranks one space per attribute (`attr_<name>`, members "known": the gallery items with a
known value of the attribute, PROTOCOLS.md section 2's candidates).

The network, on cached trunk maps (s8 20x16, s16 10x8, s32 5x4 at 160x128):
1. Hierarchical features (`features: hierarchical`). The paper adds a pooled shallower map to a deeper one and
   concatenates the sum with the deeper map. Here both pairs the cache has: [pool(s8') + s16', s16'] on the s16
   grid and [pool(s16'') + s32', s32'] upsampled to it, where ' and '' are 1x1 conv + BN + ReLU projections
   (the levels' channel counts differ). `features: last` (ASEN / CSN) reads the s32 map alone, on its own grid.
2. Branch 1, attribute classification on the pooled hierarchical features. DEVIATION: the paper's target is
   the type of attribute a triplet is about, which carries no information on a catalogue where every item has
   every attribute; `branch1: values` is per-attribute value cross-entropy (values + "unspecified", as
   every vestis classifier), `branch1: type` the paper's target (for catalogues where an image is labelled for one
   attribute only, such as FashionAI; `auto`, the default, picks it when no training image has two known
   attributes, else `values`), `branch1: off` the "w/o branch 1" ablation: the classifiers then train on
   detached features, so the run still predicts attributes but branch 1 shapes nothing else.
3. Branch 2, multi-level attention, per attribute a with a learned embedding e_a:
   - p(a) = sigma(W_a e_a) * W_a e_a (self-gated);
   - SA (`sa`): channel-wise mean and max of the features, a conv, a sigmoid, multiplying the features.
     DEVIATION: the paper says 1x1 and the public code uses 7x7, too wide for a 10x8 grid; 3x3 here;
   - ASA (`asa`): tanh(BN(1x1 conv(features))), dot product with p(a) per cell, softmax over the cells,
     attention-weighted sum pooling of the features (without ASA: average pooling);
   - ACA (`aca`): FC -> ReLU -> FC -> sigmoid on [p(a), pooled], gating the pooled channels;
   - one FC (shared by the attributes) to `dim`.
4. Masked embedding (`mask`): learned m_a = ReLU(beta_a) (`learned`), CSN's fixed disjoint blocks (`disjoint`) or
   none, gating the embedding, then L2 normalisation: cosine similarity is the inner product the index searches.
5. Loss: the triplet ranking loss on cosine similarity with margin 0.2 on (x, x+, x- | a), plus branch 1's loss,
   combined with learned uncertainty weights 0.5 e^(-s) L + 0.5 s, with s in the optimiser (the public code
   forgets to optimise its weights). `csn_reg`: CSN's regularisers, the L2 norm of the unmasked embedding and the
   L1 norm of the masks (weights 5e-3 and 5e-4 as in CSN's code). DEVIATION for CSN: it uses cosine similarity of
   the masked, normalised embeddings like the others (CSN itself uses Euclidean distance), so the comparison
   isolates the architectures.
6. Triplets: train split only, redrawn every epoch: the attribute uniformly, then two distinct known values
   uniformly (values with at least two items can be the anchor's); anchor and positive share one, the negative has
   the other. The batch's features are computed once, and every valid triplet inside the batch whose anchor is a
   drawn anchor (for every attribute with known values, any row as positive or negative) adds to the loss: T x 3T
   x 3T per attribute rather than (3T)^3, which on 2 cores cost more than the network itself.
   `triplet_reduce: nonzero` averages over those still violating the margin (pytorch-metric-learning's
   AvgNonZero), `all` over all of them.

Spaces: `attr_<a>` per attribute; "main" the concatenation of every attribute's embedding / sqrt(A) (the mean of
the per-attribute cosines: `same_item`); "visual" as every model. `explain` shows each attribute's attention map:
the weight each cell has in that attribute's pooled features (ASA x SA; uniform x SA without ASA).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vestis.errors import VestisError
from vestis.models.base import Embedding, Maps, Probe, Request, SearchModel, Space, attribute_space, register
from vestis.models.explanation import Explanation, attribute_explanations
from vestis.models.layers import AttributeClassifiers, boxes_from_maps, gap, l2n
from vestis.models.loop import LoopConfig, TrainData, batch_maps, fit_loop

FEATURES = ("hierarchical", "last")
MASKS = ("learned", "disjoint", "none")
BRANCH1 = ("auto", "values", "type", "off")
REDUCE = ("nonzero", "all")
CSN_EMBED_L2, CSN_MASK_L1 = 5e-3, 5e-4  # CSN's code


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def _floating(x: torch.Tensor) -> torch.Tensor:
    """float32 for the cache's float16 maps; float64 stays (gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


class HierarchicalFeatures(nn.Module):
    """Step 1: the trunk levels -> one feature map. "hierarchical": [pool(s8') + s16', s16'] and
    [pool(s16'') + s32', s32'] (upsampled) on the s16 grid; "last": a projection of s32 on its grid."""

    def __init__(self, channels: dict, mode: str, low: int, high: int):
        super().__init__()
        self.mode = mode
        if mode == "hierarchical":
            self.s8 = conv_bn_relu(channels["s8"], low)
            self.s16_low = conv_bn_relu(channels["s16"], low)
            self.s16_high = conv_bn_relu(channels["s16"], high)
            self.s32 = conv_bn_relu(channels["s32"], high)
            self.out_channels = 2 * low + 2 * high
            self.stride = 16
        else:
            self.s32 = conv_bn_relu(channels["s32"], 2 * high)
            self.out_channels = 2 * high
            self.stride = 32

    def forward(self, maps: Maps) -> torch.Tensor:
        if self.mode == "last":
            return self.s32(_floating(maps["s32"]))
        s8, s16, s32 = (_floating(maps[lv]) for lv in ("s8", "s16", "s32"))
        grid = s16.shape[-2:]
        mid = self.s16_low(s16)
        fine = torch.cat([F.adaptive_avg_pool2d(self.s8(s8), grid) + mid, mid], 1)
        top = self.s32(s32)
        coarse = torch.cat([F.adaptive_avg_pool2d(self.s16_high(s16), top.shape[-2:]) + top, top], 1)
        coarse = F.interpolate(coarse, size=grid, mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], 1)


@register
class AGMLAN(SearchModel):
    name = "agmlan"
    levels = ("s8", "s16", "s32")
    quick_config = {"low": 8, "high": 8, "attention": 8, "attr_embed": 8, "dim": 8, "epochs": 2,
                    "triplets_per_batch": 16}
    default_config = {
        "features": "hierarchical", "low": 32, "high": 64,  # step 1: projection widths of the two level pairs
        "attr_embed": 32, "attention": 64,                  # e_a and p(a) sizes
        "sa": True, "asa": True, "aca": True, "aca_hidden": 64,
        "mask": "learned", "dim": 64,                        # per-attribute embedding size
        "branch1": "auto", "csn_reg": False,
        "margin": 0.2, "triplet_reduce": "nonzero", "uncertainty": True,
        # 30 epochs at 2e-3: on the synthetic catalogue, 6 epochs at 1e-3 left it 13 points of MAP below the
        # attribute-probability baseline and these settings 6 points above (README, protocol 2)
        "epochs": 30, "triplets_per_batch": 32, "lr": 2e-3, "weight_decay": 1e-4, "seed": 0,
    }

    def __init__(self, schema, channels, config=None):
        super().__init__(schema, channels, config)
        c = self.config
        for key, allowed in (("features", FEATURES), ("mask", MASKS), ("branch1", BRANCH1),
                             ("triplet_reduce", REDUCE)):
            if c[key] not in allowed:
                raise VestisError(f"model {self.name}: {key} must be one of {', '.join(allowed)}, got {c[key]!r}")
        lacking = [lv for lv in ("s8", "s16", "s32") if lv not in self.channels]
        if c["features"] == "hierarchical" and lacking:
            raise VestisError(f"model {self.name}: hierarchical features read s8, s16 and s32; the features lack "
                              f"{lacking}; re-extract with --levels s8,s16,s32 or use features: last")
        self.attributes = list(schema.attributes)
        names = [attribute_space(a) for a in self.attributes]
        if len(set(names)) != len(names):
            raise VestisError(f"model {self.name}: attributes {self.attributes} give clashing space names {names}")
        n_attr = len(self.attributes)
        self.backbone = HierarchicalFeatures(self.channels, c["features"], c["low"], c["high"])
        cf = self.backbone.out_channels
        self.n_states = [len(schema.values(a)) + 1 for a in self.attributes]
        self.classifiers = AttributeClassifiers(cf, self.n_states)  # branch 1 (values + "unspecified")
        self.type_classifier = nn.Linear(cf, n_attr)  # branch 1, the paper's target
        self.attr_embedding = nn.Embedding(n_attr, c["attr_embed"])
        self.attr_proj = nn.Linear(c["attr_embed"], c["attention"])  # W_a
        self.sa_conv = nn.Conv2d(2, 1, 3, padding=1)
        self.asa_conv = nn.Sequential(nn.Conv2d(cf, c["attention"], 1, bias=False), nn.BatchNorm2d(c["attention"]))
        self.aca = nn.Sequential(nn.Linear(c["attention"] + cf, c["aca_hidden"]), nn.ReLU(),
                                 nn.Linear(c["aca_hidden"], cf), nn.Sigmoid())
        self.fc = nn.Linear(cf, c["dim"])
        # masks: learned beta (init near 1, as CSN's masks), or fixed disjoint blocks of the embedding
        self.mask_beta = nn.Parameter(1.0 + 0.1 * torch.randn(n_attr, c["dim"], generator=torch.Generator().manual_seed(c["seed"])))
        disjoint = torch.zeros(n_attr, c["dim"])
        for a, block in enumerate(np.array_split(np.arange(c["dim"]), n_attr)):
            disjoint[a, block] = 1.0
        self.register_buffer("disjoint_masks", disjoint)
        self.log_vars = nn.Parameter(torch.zeros(2))  # uncertainty weights s of the triplet and branch-1 losses
        if c["mask"] != "learned":
            self.mask_beta.requires_grad_(False)

    # --- the network ---------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        return self.backbone.stride

    def features(self, maps: Maps) -> torch.Tensor:
        return self.backbone(maps)

    def spatial_gate(self, feats: torch.Tensor) -> torch.Tensor:
        """SA: (N, 1, H, W) in (0, 1), or ones without it."""
        if not self.config["sa"]:
            return feats.new_ones(feats.shape[0], 1, *feats.shape[-2:])
        stats = torch.cat([feats.mean(1, keepdim=True), feats.amax(1, keepdim=True)], 1)
        return torch.sigmoid(self.sa_conv(stats))

    def attribute_keys(self, attrs: torch.Tensor) -> torch.Tensor:
        """p(a) = sigma(W_a e_a) * W_a e_a for attribute indices (S,) -> (S, attention)."""
        w = self.attr_proj(self.attr_embedding(attrs))
        return torch.sigmoid(w) * w

    def attend(self, feats: torch.Tensor, attrs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch 2 up to the embedding for every row and each attribute in `attrs` (S,): returns the unmasked
        embeddings (N, S, dim) and each cell's weight in the pooled features (N, S, H, W): ASA's softmax x SA's gate."""
        n, cf, h, w = feats.shape
        spatial = self.spatial_gate(feats)
        x = feats * spatial
        keys = self.attribute_keys(attrs)  # (S, C_att)
        if self.config["asa"]:
            g = torch.tanh(self.asa_conv(x)).flatten(2)  # (N, C_att, HW)
            alpha = torch.softmax(torch.einsum("nck,sc->nsk", g, keys), dim=-1)  # softmax over the cells
        else:
            alpha = x.new_full((n, len(attrs), h * w), 1.0 / (h * w))
        pooled = torch.einsum("nsk,nck->nsc", alpha, x.flatten(2))  # (N, S, Cf)
        if self.config["aca"]:
            gate = self.aca(torch.cat([keys.expand(n, -1, -1), pooled], -1))
            pooled = pooled * gate
        return self.fc(pooled), alpha.reshape(n, len(attrs), h, w) * spatial

    def masks(self, attrs: torch.Tensor) -> torch.Tensor | None:
        mode = self.config["mask"]
        if mode == "learned":
            return F.relu(self.mask_beta[attrs])
        if mode == "disjoint":
            return self.disjoint_masks[attrs]
        return None

    def embed_attributes(self, feats: torch.Tensor, attrs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised masked embeddings (N, S, dim), unmasked embeddings, attention maps)."""
        z, alpha = self.attend(feats, attrs)
        m = self.masks(attrs)
        return l2n(z * m if m is not None else z), z, alpha

    def logits(self, feats: torch.Tensor) -> list[torch.Tensor]:
        return self.classifiers(gap(feats))

    # --- training ------------------------------------------------------------------------------
    def fit(self, data: TrainData, progress: bool = True) -> dict:
        c = self.config
        t = c["triplets_per_batch"]
        cfg = LoopConfig(epochs=c["epochs"], batch_size=3 * t, lr=c["lr"], weight_decay=c["weight_decay"],
                         seed=c["seed"])
        labels = torch.from_numpy(data.labels.astype(np.int64))
        sampler = TripletSampler(data.labels, [len(self.schema.values(a)) for a in self.attributes])
        if not sampler.attributes:
            raise VestisError(f"model {self.name}: no attribute has two known values with an anchor and positive in "
                              "the training split, so no triplet can be drawn")
        steps = max(1, len(data) // (3 * t))
        known = ((data.labels >= 0) & (data.labels < np.array(sampler.n_values)[None, :])).sum(1)
        branch1 = c["branch1"] if c["branch1"] != "auto" else ("type" if known.max(initial=0) <= 1 else "values")

        def batches(rng):
            for _ in range(steps):
                yield sampler.draw(t, rng)

        all_attrs = torch.arange(len(self.attributes))
        anchors = torch.arange(0, 3 * t, 3)  # the drawn anchors (rows [x, x+, x-] * T)

        def step(idx):
            feats = self.features(batch_maps(data, idx, self.levels))
            y = labels[idx]
            emb, z, _ = self.embed_attributes(feats, all_attrs)
            trip = batch_all_triplet(emb, y, sampler.n_values, c["margin"], c["triplet_reduce"], anchors)
            logs = {"triplet": trip}
            loss = trip
            if branch1 == "values":
                cls = data.attribute_ce(self.logits(feats), idx, labels)
            elif branch1 == "type":  # the paper's target: which attribute each anchor's triplet is about
                cls = F.cross_entropy(self.type_classifier(gap(feats)[0::3]),
                                      torch.from_numpy(sampler.last_attributes))
            else:
                cls = None
            if cls is not None:
                logs["cls"] = cls
                if c["uncertainty"]:
                    s = self.log_vars
                    loss = 0.5 * torch.exp(-s[0]) * trip + 0.5 * s[0] + 0.5 * torch.exp(-s[1]) * cls + 0.5 * s[1]
                else:
                    loss = trip + cls
            if branch1 != "values":  # the classifiers still learn, on detached features (predictions only)
                loss = loss + data.attribute_ce(self.classifiers(gap(feats.detach())), idx, labels)
            if c["csn_reg"]:
                m = self.masks(all_attrs)
                reg = CSN_EMBED_L2 * z.norm(dim=-1).mean() + (CSN_MASK_L1 * m.abs().sum(-1).mean() if m is not None else 0)
                loss = loss + reg
                logs["reg"] = reg
            return loss, logs

        history = fit_loop(self.parameters(), data, step, cfg, batches=batches, desc=self.name, progress=progress,
                           modules=[self])
        history["uncertainty_s"] = [float(v) for v in self.log_vars.detach()]
        history["branch1"] = branch1
        return history

    # --- the gallery side ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.config["dim"] * len(self.attributes)

    def spaces(self) -> dict[str, Space]:
        out = super().spaces()
        for a in self.attributes:
            out[attribute_space(a)] = Space(self.config["dim"], "ip", members="known", attribute=a)
        return out

    @torch.no_grad()
    def embed(self, maps: Maps, space: str = "main") -> torch.Tensor:
        index = {attribute_space(a): i for i, a in enumerate(self.attributes)}
        if space == "main" or space in index:
            return self._space_vectors(self._all_attributes(maps), space, index)
        return super().embed(maps, space)

    def _all_attributes(self, maps: Maps) -> torch.Tensor:
        """(N, A, dim) every attribute's embedding: one space is a slice of it, so that an attribute's vectors are
        bit for bit the same whether asked alone or with the others (the attention's batched products round
        differently for one attribute than for all)."""
        emb, _, _ = self.embed_attributes(self.features(maps), torch.arange(len(self.attributes)))
        return emb

    def _space_vectors(self, emb: torch.Tensor, space: str, index: dict) -> torch.Tensor:
        return emb.flatten(1) / math.sqrt(len(self.attributes)) if space == "main" else emb[:, index[space]]

    @torch.no_grad()
    def embed_spaces(self, maps: Maps, names) -> dict[str, Embedding]:
        """"main" and the per-attribute spaces from one computation of the hierarchical features and one attention
        pass over the attributes (`embed` computes both once per space: 1 + A times an item for an index)."""
        index = {attribute_space(a): i for i, a in enumerate(self.attributes)}
        mine = [n for n in names if n == "main" or n in index]
        emb = self._all_attributes(maps) if mine else None
        res = {n: Embedding(self._space_vectors(emb, n, index)) for n in mine}
        rest = [n for n in names if n not in res]
        return {**res, **super().embed_spaces(maps, rest)} if rest else res

    # --- the query side ------------------------------------------------------------------------
    def plan(self, maps: Maps, request: Request) -> list[Probe]:
        if request.mode.startswith("attribute:"):
            attr = request.mode.split(":", 1)[1]
            self.schema.check_attribute(attr)
            space = attribute_space(attr)
            return [Probe(space, self.embed(maps, space).numpy(), group=attr)]
        return super().plan(maps, request)

    # --- attributes and explanations ---------------------------------------------------------
    @torch.no_grad()
    def predict_attributes(self, maps: Maps) -> list[torch.Tensor]:
        return [F.softmax(lg, -1) for lg in self.logits(self.features(maps))]

    @torch.no_grad()
    def attention_maps(self, maps: Maps, feats: torch.Tensor | None = None) -> torch.Tensor:
        """(N, A, H, W): each cell's weight in each attribute's pooled features (ASA x SA), normalised to sum 1;
        `feats`: the maps' features, where the caller has them."""
        feats = self.features(maps) if feats is None else feats
        _, weight = self.attend(feats, torch.arange(len(self.attributes)))
        return weight / weight.flatten(2).sum(-1).clamp_min(1e-12)[..., None, None]

    @torch.no_grad()
    def explain(self, maps: Maps, threshold: float = 0.2) -> list[Explanation]:
        """Per attribute, its attention map, the box fitted to it at `threshold` of its maximum (upsampled to the
        input, as the paper-style boxes of `layers.box_from_map`), and branch 1's predicted value."""
        feats = self.features(maps)
        heat = self.attention_maps(maps, feats)
        probs = [F.softmax(lg, -1) for lg in self.logits(feats)]
        classes = torch.stack([p[:, :-1].argmax(-1) for p in probs], 1)
        return attribute_explanations(
            self.attributes, [self.schema.values(a) for a in self.attributes], heat, classes, probs,
            boxes_from_maps(heat, threshold, mode="paper", scale=self.stride), stride=self.stride, model=self.name,
            method="attention", threshold=threshold)


@register
class ASEN(AGMLAN):
    """ASEN-style (Ma et al.): attribute-aware spatial and channel attention (ASA + ACA) on the last map only; no
    spatial attention, no mask, no branch 1 (its classifiers train on detached features, for predictions)."""

    name = "asen"
    levels = ("s32",)
    default_config = {**AGMLAN.default_config, "features": "last", "sa": False, "mask": "none", "branch1": "off"}


@register
class CSN(AGMLAN):
    """Conditional Similarity Networks (Veit et al.): one embedding of the pooled last map, gated by a learned mask
    per attribute (`mask: disjoint` for CSN's fixed masks), with CSN's embedding-L2 and mask-L1 regularisers; no
    attention, no branch 1."""

    name = "csn"
    levels = ("s32",)
    default_config = {**AGMLAN.default_config, "features": "last", "sa": False, "asa": False, "aca": False,
                      "mask": "learned", "branch1": "off", "csn_reg": True}


class TripletSampler:
    """Step 6: triplets (x, x+, x- | a) from the training labels, drawn as the paper draws them: the attribute
    uniformly, then two distinct known values uniformly (the anchor's among values with two or more items).
    `draw` returns the batch's rows as [x, x+, x-] * T (and keeps the attributes in `last_attributes`)."""

    def __init__(self, labels: np.ndarray, n_values: list[int]):
        self.members: list[list[np.ndarray]] = []  # rows per (attribute, value); codes >= n or < 0 carry no value
        self.anchor_values: list[list[int]] = []  # values with two or more rows
        self.present_values: list[list[int]] = []  # values with a row
        self.attributes = []
        for a, n in enumerate(n_values):
            by_value = [np.flatnonzero(labels[:, a] == v) for v in range(n)]
            self.members.append(by_value)
            self.anchor_values.append([v for v in range(n) if len(by_value[v]) >= 2])
            self.present_values.append([v for v in range(n) if len(by_value[v])])
            if self.anchor_values[-1] and len(self.present_values[-1]) >= 2:
                self.attributes.append(a)
        self.n_values = list(n_values)
        self.last_attributes = np.zeros(0, np.int64)

    def draw(self, t: int, rng: np.random.Generator) -> np.ndarray:
        rows, attrs = [], []
        for _ in range(t):
            a = self.attributes[int(rng.integers(len(self.attributes)))]
            by_value = self.members[a]
            pos = self.anchor_values[a][int(rng.integers(len(self.anchor_values[a])))]
            others = [v for v in self.present_values[a] if v != pos]
            neg = others[int(rng.integers(len(others)))]
            x, xp = rng.choice(by_value[pos], 2, replace=False)
            rows += [int(x), int(xp), int(rng.choice(by_value[neg]))]
            attrs.append(a)
        self.last_attributes = np.array(attrs, np.int64)
        return np.array(rows)


def batch_all_triplet(emb: torch.Tensor, labels: torch.Tensor, n_known: list[int], margin: float,
                      reduce: str = "nonzero", anchors: torch.Tensor | None = None) -> torch.Tensor:
    """The triplet ranking loss on cosine similarity, max(0, m - s(x, x+) + s(x, x-)), over every valid triplet of
    the batch for every attribute: emb (N, A, D) unit vectors, labels (N, A) codes (>= n_known[a]: unspecified;
    negative: no label; neither is ever in a triplet); `anchors` (rows) limits the anchors (default: every row), positives and negatives are
    any row. reduce "nonzero": the mean over triplets with a positive loss; "all": over all valid ones."""
    n = len(labels)
    anchors = torch.arange(n) if anchors is None else torch.as_tensor(anchors)
    known = ((labels >= 0) & (labels < torch.as_tensor(n_known)[None, :])).T  # (A, N); < 0: no label (a mixed run)
    y = labels.T
    both = known[:, anchors, None] & known[:, None, :]  # (A, anchors, N)
    same = (y[:, anchors, None] == y[:, None, :]) & both
    pos = same & (anchors[:, None] != torch.arange(n)[None, :])[None]
    neg = both & ~same
    s = torch.einsum("nad,mad->anm", emb[anchors], emb)  # (A, anchors, N)
    loss = F.relu(margin - s[:, :, :, None] + s[:, :, None, :])  # (A, anchor, positive, negative)
    valid = pos[:, :, :, None] & neg[:, :, None, :]
    loss = torch.where(valid, loss, torch.zeros((), dtype=loss.dtype))
    count = (loss > 0).sum() if reduce == "nonzero" else valid.sum()
    return loss.sum() / count.clamp_min(1)
