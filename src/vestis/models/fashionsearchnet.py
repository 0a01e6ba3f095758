"""`fashionsearchnet`: FashionSearchNet (Ak, Kassim, Lim, Tham, CVPR 2018 "Learning attribute representations
with localization for flexible fashion search"; ECCV-W 2018 "FashionSearchNet: fashion search with attribute
manipulation"), and its ablation `fashionsearchnet_noloc` ("FashionSearchNet w/o Loc.").

Pipeline on cached trunk maps (the trunk itself is frozen and cached, see DESIGN.md):

1. Attribute activation maps (AAM). Two extra 3x3 conv layers (the paper adds two after conv5) on the
   trunk map chosen by `level`, global average pooling, one linear classifier per attribute, trained with
   the multi-attribute classification loss L_C (eq. 1, `losses.multi_attribute_ce`). The AAM of attribute a
   is the class activation map M_ac = sum_k w_a(k, c) f_k of the class c with the highest confidence among
   the attribute's known values (eq. 2; "unspecified" is a state, not a visual class, so its map would
   localise nothing).
   `level`: the stride-32 map is only 5 x 4 cells at 160 x 128, too coarse to localise a collar or a shoe, so
   the default "fuse" reduces it with a 1x1 conv, upsamples it x2 and concatenates the stride-16 map (10 x 8,
   112 channels): semantic channels at the stride-16 grid. Measured (validation slice of the train split of
   fashion-product-images, single-attribute Top-30): fuse 0.744, s16 0.718, s32 0.693 - the 112 mid-level
   channels of s16 alone lose on the non-visual attributes (usage, pattern), s32 loses resolution. On the
   synthetic catalogue's garment boxes the s16 AAMs localise best (IoU 0.53-0.62 at threshold 0.5 vs fuse
   0.47-0.52), so "s16" is the choice when the boxes themselves matter more than retrieval.
2. Localisation (`layers.box_from_map`), `box_mode`:
   - "minmax" (the default, what the README's figures were measured with): the AAM is min-max normalised on
     the feature grid, cells above `threshold` (default 0.2, i.e. 20 % of the range, the paper's value; 0.35
     and 0.5 measured no better) are segmented and an integer cell box is fitted to the largest connected
     region. The CAM's weights are signed, so a map with negative cells lifts cells of zero evidence above
     the threshold: the boxes grow towards the whole map.
   - "paper" (the papers' localisation, CAM's protocol): the AAM is clamped at 0, upsampled bilinearly to
     the input resolution (feature grid x stride), pixels above `threshold` x its maximum are segmented
     there, and the box of the largest region goes to roi_align as a fractional box in cells (no inset:
     the ROI grid spans the box's own extent). Measured (`vestis synth -n 1500 --seed 1`, default config
     but one 100-step L_G epoch, `vestis localisation` on the 341 gallery items, minmax -> paper): colour
     mean IoU 0.456 -> 0.465 (IoU >= 0.5: 39.1 % -> 39.4 %; the whole picture 0.389), sleeve 0.066 -> 0.070;
     box area colour 0.85 -> 0.82, sleeve 0.91 -> 0.73 of the picture. Box fitting costs ~10x more (0.27 s vs
     0.026 s for 128 x 7 random 10 x 8 maps, one thread).
3. Attribute-specific representations. ROI-align of the extra conv features inside each attribute's box
   (`layers.roi_features`, a roi x roi grid) into that attribute's fully connected layer fc_10_a; the
   representation r_a(x) is fc_10_a's output, L2-normalised. Trained with the soft-triplet ranking loss
   (eqs. 3-5, `losses.soft_triplet`, on triplet_scale * r_a) over in-batch triplets - anchor and positive share
   the attribute's state, the negative is a random batch item with another state - together with L_C on the
   GAP classifiers and on a classifier per r_a. The boxes follow the current AAMs (recomputed every step,
   not differentiated). `finetune=False` freezes the conv layers after stage 1 and trains only fc_10_a on
   cached conv outputs and boxes (about 4x cheaper per epoch; 0.744 vs 0.765 validation Top-30).
   `localize=False` (the registered subclass `fashionsearchnet_noloc`) pools the whole map instead of the
   AAM box: the same network and training, without localisation.
4. Manipulation. After training, the prototype of each state of each attribute is the mean of r_a over the
   training images with that state (buffer `prototypes`); a manipulation {a: v} replaces the query's block a
   with the prototype of v, re-normalised to unit length; several attributes at once replace several blocks.
5. Global representation (eq. 6) and ranking loss L_G (eq. 7). For a manipulated attribute a* the global
   representation of a (manipulated) representation r = [r_1; ...; r_A] is
        y_{a*}(r) = W_{a*} (Lambda_{a*} r),    Lambda_{a*} = diag(lambda_{1,a*} 1_D, ..., lambda_{A,a*} 1_D)
   with learned importance weights lambda_{a,a*} > 0 (exp of a parameter, initialised to 1) and a learned
   projection W_{a*} (A*D x A*D, initialised to the identity, weight decay pulling it back to it); one more
   slot (a* = "none") serves queries without manipulation. L_G is the soft-triplet loss (eqs. 3-5) on the
   dissimilarity -<y_{a*}(q~), y_{a*}(g)>, over triplets whose anchor q~ is a training item with a* changed
   to another value (block replaced by the prototype), whose positive is a training item identical in ALL
   attributes to that target, and whose negative is an item that is not: a random one (the paper) or, with
   probability `global_hard`, a near miss identical to the target but in one attribute (half the time the
   manipulated one). Each step draws a* uniformly, then a valid anchor for it. It trains after step 4 on the
   frozen training representations (about a minute). Measured: lambda = 1, W = I (no L_G) 0.689; random
   negatives drawn over all candidates 0.646 (it learned to favour articleType and hurt pattern); balanced
   slots with random negatives 0.732; with global_hard 0.5 0.744. The learned lambda_{a*, a*} end up
   largest: a query weighs the attribute it changed most.

Realising eq. 6 in ONE index (metric "ip"). The gallery vector must not depend on the query's a*, so
    gallery  g = [r_1(x); ...; r_A(x)]                                              (A*D numbers)
    query    q = Lambda_{a*} W_{a*}^T W_{a*} Lambda_{a*} q~      (q~: the query's blocks, manipulated ones replaced)
    <q, g>   = <W_{a*} Lambda_{a*} q~, W_{a*} Lambda_{a*} g> = <y_{a*}(q~), y_{a*}(g)>
exactly: the inner-product index ranks the gallery by the similarity of the eq.-6 global representations,
and L_G trains that same similarity (training and search agree). Why not the paper's Euclidean distance:
||y(q~) - y(g)||^2 = ||y(q~)||^2 - 2 <y(q~), y(g)> + ||W_{a*} Lambda_{a*} g||^2, and the last term depends on
a*, so no single a*-independent gallery vector reproduces it. With W = I the two coincide: every block is
unit length, so <q, g> = <Lambda q~, Lambda g> = sum_a lambda_a^2 (1 - ||q~_a - g_a||^2 / 2) ranks exactly as
the paper's ||y(q~) - y(g)||^2 = sum_a lambda_a^2 ||q~_a - g_a||^2 (tested). Several manipulated attributes M at once: the
similarity is the mean of the per-attribute ones, q = mean_{a* in M} Lambda_{a*} W^T_{a*} W_{a*} Lambda_{a*} q~
(linear in g, so still exact in one index). `attribute_query(maps, a)` puts r_a alone in block a (zeros
elsewhere): <q, g> = cos(r_a(query), r_a(item)), the attribute-specific similarity.

Training schedule (`fit`): `epochs_cls` (2) epochs of L_C alone (the AAMs must mean something before they
place boxes), then `epochs` (5) epochs of L_C + soft-triplet with AAM boxes, prototypes, then `global_epochs`
(4 x 200 steps) of L_G; AdamW with one-cycle schedules (`train.fit_loop`). `explain(maps)` returns one
`Explanation` per item: each attribute's AAM, predicted value (None where "unspecified" is likelier) and box in
feature-map cells; `vestis.overlay.render_overlay` draws it over the photo.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vestis.errors import VestisError
from vestis.losses import soft_triplet
from vestis.models.base import Maps, SearchModel, register
from vestis.models.explanation import Explanation, attribute_explanations
from vestis.models.layers import (BOX_MODES, AttributeClassifiers, boxes_from_maps, class_activation_maps, gap, l2n,
                                  roi_features, value_means)
from vestis.models.loop import LoopConfig, TrainData, batch_maps, data_batches, fit_loop, seed_everything

LEVELS = ("fuse", "s16", "s32up", "s32")
EMBED_BATCH = 512


def holdout_mask(ids: Sequence[str], share: float) -> np.ndarray:
    """A stable pseudo-random `share` of the items (crc32 of the id), True where held out."""
    if share <= 0:
        return np.zeros(len(ids), bool)
    return np.array([zlib.crc32(f"fsn-holdout:{i}".encode()) % 10000 < share * 10000 for i in ids], bool)


def _conv_bn(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


@register
class FashionSearchNet(SearchModel):
    name = "fashionsearchnet"
    levels = ("s16", "s32")
    metric = "ip"
    quick_config = {"reduce": 16, "width": 16, "dim": 8, "epochs_cls": 1, "epochs": 1, "batch_size": 32,
                    "global_epochs": 1, "global_steps": 10, "global_batch": 32}
    supports_manipulation = True
    default_config = {
        # architecture
        "level": "fuse", "reduce": 128, "width": 128, "dim": 64, "roi": 3, "dropout": 0.2,
        # localisation
        # box_mode: "paper" (clamp, upsample to the input, threshold x max; the papers' localisation) or
        # "minmax" (the default: min-max on the feature grid, what the README's figures were measured with)
        "localize": True, "threshold": 0.2, "connectivity": 2, "box_mode": "minmax",
        # attribute representations (L_C + soft triplet)
        "epochs_cls": 2, "epochs": 5, "batch_size": 128, "lr": 2e-3, "weight_decay": 1e-4,
        "triplet_weight": 1.0, "triplet_scale": 4.0, "rep_cls_weight": 1.0, "finetune": True,
        # global representation (eqs. 6-7)
        "global_epochs": 4, "global_steps": 200, "global_batch": 512, "global_lr": 3e-3, "global_decay": 1e-2,
        "global_hard": 0.5, "global_holdout": 0.0, "global_projection": True,
        "seed": 0,
    }

    @classmethod
    def levels_for(cls, config):
        return {"s16": ("s16",), "s32": ("s32",)}.get(config["level"], cls.levels)

    def __init__(self, schema, channels, config=None):
        super().__init__(schema, channels, config)
        c = self.config
        if c["level"] not in LEVELS:
            raise VestisError(f"model {self.name}: level must be one of {', '.join(LEVELS)}, got {c['level']!r}")
        if c["box_mode"] not in BOX_MODES:
            raise VestisError(f"model {self.name}: box_mode must be one of {', '.join(BOX_MODES)}, "
                              f"got {c['box_mode']!r}")
        if not 0.0 <= float(c["threshold"]) < 1.0:
            raise VestisError(f"model {self.name}: threshold must be in [0, 1), got {c['threshold']}")
        self.attributes = list(schema.attributes)
        self.n_states = [len(schema.values(a)) + 1 for a in self.attributes]  # + "unspecified"
        A, D, K = len(self.attributes), c["dim"], c["width"]
        if c["level"] == "s16":
            cin = self.channels["s16"]
            self.reduce32 = None
        else:
            self.reduce32 = _conv_bn(self.channels["s32"], c["reduce"], 1)
            cin = c["reduce"] + (self.channels["s16"] if c["level"] == "fuse" else 0)
        self.extra = nn.Sequential(_conv_bn(cin, K, 3), _conv_bn(K, K, 3))  # the two conv layers after "conv5"
        self.classifiers = AttributeClassifiers(K, self.n_states)  # on GAP: L_C and the AAMs
        self.drop = nn.Dropout(c["dropout"])
        self.fc10 = nn.ModuleList(nn.Linear(K * c["roi"] ** 2, D) for _ in range(A))
        self.rep_classifiers = nn.ModuleList(nn.Linear(D, n) for n in self.n_states)
        offsets = np.concatenate([[0], np.cumsum(self.n_states)])
        self.offsets = [int(o) for o in offsets]
        self.register_buffer("prototypes", torch.zeros(int(offsets[-1]), D))  # mean r_a per state, all attributes
        self.register_buffer("prototype_counts", torch.zeros(int(offsets[-1])))
        # eq. 6: one slot per manipulated attribute a*, plus slot A for queries without manipulation
        self.log_lambda = nn.Parameter(torch.zeros(A + 1, A))
        self.global_delta = nn.Parameter(torch.zeros(A + 1, A * D, A * D))  # W_{a*} = I + delta

    # --- network ------------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        """Input pixels per cell of the AAM / ROI grid (16 at every level but "s32")."""
        return 32 if self.config["level"] == "s32" else 16

    def features(self, maps: Maps) -> torch.Tensor:
        """The extra conv layers' output (N, K, H, W): what the classifiers pool and the ROIs read."""
        lv = self.config["level"]
        if lv == "s16":
            x = maps["s16"].float()
        else:
            x = self.reduce32(maps["s32"].float())
            if lv in ("fuse", "s32up"):
                s16 = maps["s16"]
                x = F.interpolate(x, size=s16.shape[-2:], mode="bilinear", align_corners=False)
                if lv == "fuse":
                    x = torch.cat([x, s16.float()], dim=1)
        return self.extra(x)

    def logits(self, feats: torch.Tensor) -> list[torch.Tensor]:
        return self.classifiers(gap(feats))

    def aams(self, feats: torch.Tensor, logits: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Attribute activation maps (N, A, H, W) of each attribute's most confident known value, and those
        value codes (N, A) (eq. 2)."""
        maps, classes = [], []
        for a, (head, lg) in enumerate(zip(self.classifiers.heads, logits)):
            c = lg[:, :-1].argmax(-1)  # known values only: the last class is "unspecified"
            maps.append(class_activation_maps(feats, head.weight, c))
            classes.append(c)
        return torch.stack(maps, 1), torch.stack(classes, 1)

    def boxes(self, feats: torch.Tensor, logits: list[torch.Tensor]) -> torch.Tensor:
        """(N, A, 4) boxes in cells: the AAM boxes, or the whole map when localisation is off."""
        n, _, h, w = feats.shape
        if not self.config["localize"]:
            return torch.tensor([0.0, 0.0, w, h]).expand(n, len(self.attributes), 4).clone()
        with torch.no_grad():
            m, _ = self.aams(feats, logits)
        return self.fit_boxes(m, self.config["threshold"])

    def fit_boxes(self, aams: torch.Tensor, threshold: float) -> torch.Tensor:
        """Boxes (..., 4) in cells fitted to AAMs (..., H, W) by `box_mode` (fractional under "paper")."""
        return boxes_from_maps(aams, threshold, self.config["connectivity"], mode=self.config["box_mode"],
                               scale=self.stride)

    def raw_representations(self, feats: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
        """fc_10_a outputs (N, D) per attribute, from ROI-pooled features inside each attribute's box."""
        out = []
        for a, fc in enumerate(self.fc10):
            pooled = roi_features(feats, boxes[:, a], self.config["roi"], inset=self.config["box_mode"] != "paper")
            out.append(fc(self.drop(pooled.flatten(1))))
        return out

    def representations(self, maps: Maps) -> torch.Tensor:
        """r_a for every attribute: (N, A, D), each block L2-normalised."""
        feats = self.features(maps)
        raw = self.raw_representations(feats, self.boxes(feats, self.logits(feats)))
        return l2n(torch.stack(raw, 1))

    # --- training -----------------------------------------------------------------------------
    def _triplet_loss(self, reps: list[torch.Tensor], labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Soft-triplet loss per attribute over in-batch triplets (anchor, same state, other state)."""
        losses = []
        s = self.config["triplet_scale"]
        n = labels.shape[0]
        eye = torch.eye(n, dtype=torch.bool)
        for a, r in enumerate(reps):
            y = labels[:, a]
            lab = y >= 0  # NO_LOSS rows (a mixed-in catalogue without this attribute) take no part
            both = lab[:, None] & lab[None, :]
            same = (y[:, None] == y[None, :]) & ~eye & both
            diff = (y[:, None] != y[None, :]) & both
            ok = same.any(1) & diff.any(1)
            if not ok.any():
                continue
            pos = torch.multinomial(same[ok].float(), 1, generator=gen).squeeze(1)
            neg = torch.multinomial(diff[ok].float(), 1, generator=gen).squeeze(1)
            e = s * l2n(r) if s else r
            losses.append(soft_triplet(e[ok], e[pos], e[neg]))
        return torch.stack(losses).mean() if losses else reps[0].sum() * 0

    def fit(self, data: TrainData, progress: bool = True) -> dict:
        c = self.config
        labels = torch.from_numpy(data.labels.astype(np.int64))
        levels = self.levels
        history: dict = {}
        # items held out of stages 1-2 for L_G (whose weights must fit representations of unseen images)
        held = holdout_mask(data.ids, c["global_holdout"] if c["global_epochs"] > 0 else 0.0)
        fit_rows = np.flatnonzero(~held)

        def batches(r):  # balanced per domain in a mixed run
            yield from data_batches(data, c["batch_size"], r, fit_rows)
        # stage 1: L_C alone, so the AAMs mean something before they place boxes
        if c["epochs_cls"] > 0:
            cfg = LoopConfig(epochs=c["epochs_cls"], batch_size=c["batch_size"], lr=c["lr"],
                             weight_decay=c["weight_decay"], seed=c["seed"])
            stage1 = [*([self.reduce32] if self.reduce32 is not None else []), self.extra, self.classifiers]

            def step_cls(idx):
                return data.attribute_ce(self.logits(self.features(batch_maps(data, idx, levels))), idx, labels), {}

            h = fit_loop([p for m in stage1 for p in m.parameters()], data, step_cls, cfg, desc=f"{self.name} L_C",
                         progress=progress, modules=[self], batches=batches)
            history["cls_loss"] = h["loss"]
            history["seconds_cls"] = h["seconds"]
        # stage 2: L_C + soft-triplet on the attribute representations pooled inside the AAM boxes
        gen = torch.Generator().manual_seed(c["seed"])
        cfg = LoopConfig(epochs=c["epochs"], batch_size=c["batch_size"], lr=c["lr"], weight_decay=c["weight_decay"],
                         seed=c["seed"] + 1)
        rep_params = [p for n, p in self.named_parameters() if n not in ("log_lambda", "global_delta")]

        def step_rep(idx):
            y = labels[idx]
            feats = self.features(batch_maps(data, idx, levels))
            logits = self.logits(feats)
            reps = self.raw_representations(feats, self.boxes(feats, logits))
            lc = data.attribute_ce(logits, idx, labels)
            lr = data.attribute_ce([h(r) for h, r in zip(self.rep_classifiers, reps)], idx, labels)
            tri = self._triplet_loss(reps, y, gen)
            return lc + c["rep_cls_weight"] * lr + c["triplet_weight"] * tri, {"L_C": lc, "L_C_rep": lr, "triplet": tri}

        if c["epochs"] > 0 and c["finetune"]:
            h = fit_loop(rep_params, data, step_rep, cfg, desc=f"{self.name} L_C+triplet", progress=progress,
                         modules=[self], batches=batches)
        elif c["epochs"] > 0:  # conv layers frozen after stage 1: cache their output and the boxes once
            self.eval()
            feats, boxes = self._train_features(data, levels)
            head = [*self.fc10, *self.rep_classifiers]

            def step_frozen(idx):
                y = labels[idx]
                reps = self.raw_representations(feats[idx].float(), boxes[idx])
                lr = data.attribute_ce([h(r) for h, r in zip(self.rep_classifiers, reps)], idx, labels)
                tri = self._triplet_loss(reps, y, gen)
                return c["rep_cls_weight"] * lr + c["triplet_weight"] * tri, {"L_C_rep": lr, "triplet": tri}

            h = fit_loop([p for m in head for p in m.parameters()], data, step_frozen, cfg, batches=batches,
                         desc=f"{self.name} triplet", progress=progress, modules=[self.drop, *head])
            del feats
        if c["epochs"] > 0:
            history.update({k: v for k, v in h.items() if k != "seconds"})
            history["seconds_rep"] = h["seconds"]
        # prototypes: the mean representation of the training images of every state
        self.eval()
        reps = self._train_representations(data)
        self.set_prototypes(reps, data.labels)
        # stage 3: eq. 6 weights with the global ranking loss L_G (eq. 7) on the frozen representations
        if c["global_epochs"] > 0:
            held = held & (np.arange(len(data)) < data.n_primary)  # L_G needs whole label vectors
            rows = np.flatnonzero(held) if held.any() else np.arange(data.n_primary)
            h = self.fit_global(reps[rows], data.labels[rows], progress=progress)
            history["L_G"] = h["loss"]
            history["seconds_global"] = h["seconds"]
        self.eval()
        history["seconds"] = [sum(history.get(k, [0.0])[0] for k in ("seconds_cls", "seconds_rep", "seconds_global"))]
        return history

    @torch.no_grad()
    def _train_features(self, data: TrainData, levels) -> tuple[torch.Tensor, torch.Tensor]:
        feats, boxes = [], []
        for i in range(0, len(data), EMBED_BATCH):
            idx = np.arange(i, min(i + EMBED_BATCH, len(data)))
            f = self.features(batch_maps(data, idx, levels))
            boxes.append(self.boxes(f, self.logits(f)))
            feats.append(f.half())
        return torch.cat(feats), torch.cat(boxes)

    @torch.no_grad()
    def _train_representations(self, data: TrainData) -> torch.Tensor:
        out = []
        for i in range(0, len(data), EMBED_BATCH):
            idx = np.arange(i, min(i + EMBED_BATCH, len(data)))
            out.append(self.representations(batch_maps(data, idx, self.levels)))
        return torch.cat(out)

    @torch.no_grad()
    def set_prototypes(self, reps: torch.Tensor, labels: np.ndarray) -> None:
        """prototype(a, state) = mean of r_a over the items with that state (zeros where there is none)."""
        means, counts = value_means(reps, np.asarray(labels), self.n_states)
        self.prototypes.copy_(means)
        self.prototype_counts.copy_(counts)

    def prototype(self, attribute: str, value: str) -> torch.Tensor:
        """The stored mean representation (D,) of `value` of `attribute` (schema errors for unknown ones)."""
        self.schema.check_value(attribute, value)
        a = self.attributes.index(attribute)
        return self.prototypes[self.offsets[a] + self.schema.index(attribute, value)]

    def global_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda (A+1, A), W (A+1, A*D, A*D)); slot A is "no manipulation"."""
        eye = torch.eye(self.global_delta.shape[-1], dtype=self.global_delta.dtype)
        return self.log_lambda.exp(), eye + self.global_delta

    def _expand_lambda(self, lam: torch.Tensor) -> torch.Tensor:
        return lam.repeat_interleave(self.config["dim"], dim=-1)  # per-block scalars -> per-dimension

    def global_query(self, q: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Lambda_s W_s^T W_s Lambda_s q for each row's slot s: (N, A*D) query vectors whose inner product
        with a gallery vector g is <y_s(q), y_s(g)> (eq. 6)."""
        if not torch.is_grad_enabled():  # search: one precomputed (symmetric) matrix per slot
            M = self._query_matrices()
            out = torch.empty_like(q)
            for s in slots.unique().tolist():
                rows = slots == s
                out[rows] = q[rows] @ M[s]
            return out
        lam, W = self.global_weights()
        out = torch.empty_like(q)
        for s in slots.unique().tolist():
            rows = slots == s
            ls = self._expand_lambda(lam[s])
            y = (q[rows] * ls) @ W[s].T
            out[rows] = (y @ W[s]) * ls
        return out

    def _query_matrices(self) -> torch.Tensor:
        """(A+1, A*D, A*D) matrices Lambda_s W_s^T W_s Lambda_s, recomputed only when lambda or W change
        (tensor version counters: optimiser steps and load_state_dict bump them); saves ~0.5 ms a query."""
        key = (id(self.log_lambda), self.log_lambda._version, id(self.global_delta), self.global_delta._version)
        if getattr(self, "_qm_key", None) != key:
            with torch.no_grad():
                lam, W = self.global_weights()
                ls = self._expand_lambda(lam)  # (A+1, A*D)
                self._qm = ls[:, :, None] * (W.transpose(1, 2) @ W) * ls[:, None, :]
            self._qm_key = key
        return self._qm

    def fit_global(self, reps: torch.Tensor, labels: np.ndarray, progress: bool = True) -> dict:
        """Train lambda and W (eq. 6) with L_G (eq. 7): soft-triplet on -<y(q~), y(g)>. The anchor is a training
        item with one attribute a* changed (its block replaced by the new value's prototype; slot "none": no
        change), the positive an item identical in every attribute to that target. The negative is an item
        that is not: a random one, or with probability `global_hard` a near miss - identical to the target but
        in one attribute (half the time the manipulated one, i.e. still its old value) - the confusions the
        ranking has to resolve. Every step draws the slot a* uniformly, then an anchor valid for it."""
        c = self.config
        A = len(self.attributes)
        labels = np.asarray(labels)
        n = len(labels)
        rng = seed_everything(c["seed"] + 2)
        keys = [tuple(r) for r in labels.tolist()]
        groups: dict[tuple, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        members = {k: np.array(v) for k, v in groups.items()}
        # near[b][target without b] -> the items that agree with a target everywhere except (maybe) at b
        near: list[dict[tuple, np.ndarray]] = []
        for b in range(A):
            d: dict[tuple, list[int]] = {}
            for i, k in enumerate(keys):
                d.setdefault(k[:b] + k[b + 1:], []).append(i)
            near.append({k: np.array(v) for k, v in d.items()})
        # candidate manipulations per slot: (anchor, new value) whose target vector exists among the items
        slots_cand: list[np.ndarray] = []
        for a in range(A):
            unk = self.n_states[a] - 1
            present: dict[tuple, set[int]] = {}
            for k in members:
                present.setdefault(k[:a] + k[a + 1:], set()).add(k[a])
            cand = [(i, v) for i, k in enumerate(keys) if k[a] != unk
                    for v in present.get(k[:a] + k[a + 1:], ()) if v != k[a] and v != unk]
            slots_cand.append(np.array(cand, dtype=np.int64).reshape(-1, 2))
        slots_cand.append(np.array([(i, -1) for i, k in enumerate(keys) if len(members[k]) > 1], np.int64).reshape(-1, 2))
        usable = [s for s, cs in enumerate(slots_cand) if len(cs)]
        if not usable:
            return {"loss": [], "seconds": [0.0]}
        protos = l2n(self.prototypes.detach().clone())
        reps = reps.detach()
        flat = reps.flatten(1)

        def batches(r):
            for _ in range(c["global_steps"]):
                yield r.choice(usable, c["global_batch"])

        def negative(t: np.ndarray, slot: int) -> int:
            if rng.random() < c["global_hard"]:
                b = slot if slot < A and rng.random() < 0.5 else int(rng.integers(0, A))
                pool = near[b].get(tuple(t[:b].tolist()) + tuple(t[b + 1:].tolist()))
                if pool is not None:
                    pool = pool[labels[pool, b] != t[b]]
                    if len(pool):
                        return int(rng.choice(pool))
            while True:
                j = int(rng.integers(0, n))
                if not (labels[j] == t).all():
                    return j

        def step(slots):
            anchors = np.empty(len(slots), np.int64)
            vals = np.empty(len(slots), np.int64)
            for j, s in enumerate(slots):
                anchors[j], vals[j] = slots_cand[s][rng.integers(0, len(slots_cand[s]))]
            target = labels[anchors].copy()
            manip = slots < A
            target[manip, slots[manip]] = vals[manip]
            pos = np.empty(len(slots), np.int64)
            neg = np.empty(len(slots), np.int64)
            for j, (t, i0) in enumerate(zip(target, anchors)):
                m = members[tuple(t.tolist())]
                p = int(rng.choice(m))
                if p == i0 and len(m) > 1:  # slot "none": another item than the anchor itself
                    p = int(m[(np.flatnonzero(m == i0)[0] + 1 + rng.integers(0, len(m) - 1)) % len(m)])
                pos[j] = p
                neg[j] = negative(t, int(slots[j]))
            q = reps[anchors].clone()
            for j in np.flatnonzero(manip):
                q[j, slots[j]] = protos[self.offsets[slots[j]] + vals[j]]
            qv = self.global_query(q.flatten(1), torch.from_numpy(slots))
            sp = (qv * flat[pos]).sum(-1)
            sn = (qv * flat[neg]).sum(-1)
            # soft-triplet (eqs. 3-5) with d = -similarity: 2 softmax(d+, d-)[0]^2
            loss = 2 * torch.sigmoid(sn - sp).pow(2).mean()
            return loss, {"acc": (sp > sn).float().mean()}

        cfg = LoopConfig(epochs=c["global_epochs"], lr=c["global_lr"], weight_decay=c["global_decay"], seed=c["seed"] + 2)
        params = [self.log_lambda, self.global_delta] if c["global_projection"] else [self.log_lambda]
        return fit_loop(params, slots_cand, step, cfg, batches=batches,
                        desc=f"{self.name} L_G", progress=progress)

    # --- protocol -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.attributes) * self.config["dim"]

    @torch.no_grad()
    def embed(self, maps: Maps, space: str = "main") -> torch.Tensor:
        """Gallery vectors: [r_1; ...; r_A], unit blocks (N, A*D)."""
        if space != "main":
            return super().embed(maps, space)
        return self.representations(maps).flatten(1)

    def manipulate(self, reps: torch.Tensor, manipulations: Sequence[Mapping[str, str]]) -> torch.Tensor:
        """Replace the blocks of the manipulated attributes with their values' prototypes (unit length). A
        value no training image had has a zero prototype: its block then expresses no preference."""
        out = reps.clone()
        for i, m in enumerate(manipulations):
            for attr, value in m.items():
                out[i, self.attributes.index(attr)] = l2n(self.prototype(attr, value))
        return out

    @torch.no_grad()
    def embed_query(self, maps: Maps, manipulations=None) -> torch.Tensor:
        reps = self.representations(maps)
        manipulations = self.check_manipulations(manipulations, reps.shape[0])
        q = self.manipulate(reps, manipulations).flatten(1)
        A = len(self.attributes)
        out = torch.zeros_like(q)
        slot_lists = [[self.attributes.index(a) for a in m] or [A] for m in manipulations]
        for depth in range(max(len(s) for s in slot_lists)):
            rows = torch.tensor([depth < len(s) for s in slot_lists])
            slots = torch.tensor([s[depth] for s in slot_lists if depth < len(s)], dtype=torch.long)
            out[rows] += self.global_query(q[rows], slots)
        return out / torch.tensor([len(s) for s in slot_lists], dtype=q.dtype)[:, None]

    @torch.no_grad()
    def attribute_embed(self, maps: Maps, attribute: str) -> torch.Tensor:
        self.schema.check_attribute(attribute)
        return self.representations(maps)[:, self.attributes.index(attribute)]

    @torch.no_grad()
    def attribute_query(self, maps: Maps, attribute: str) -> torch.Tensor:
        """r_a alone in block a: the inner product with a gallery vector is cos(r_a(query), r_a(item))."""
        self.schema.check_attribute(attribute)
        a = self.attributes.index(attribute)
        reps = self.representations(maps)
        out = torch.zeros_like(reps)
        out[:, a] = reps[:, a]
        return out.flatten(1)

    @torch.no_grad()
    def predict_attributes(self, maps: Maps) -> list[torch.Tensor]:
        """Per attribute, (N, values + 1) probabilities from the GAP classifiers; the last is "unspecified"."""
        return [F.softmax(lg, -1) for lg in self.logits(self.features(maps))]

    @torch.no_grad()
    def explain(self, maps: Maps, threshold: float | None = None) -> list[Explanation]:
        """One Explanation per item: per attribute, the AAM (of the most confident known value) as the heatmap,
        that value and its probability, the box fitted to the AAM in feature-map cells (`render_overlay` maps it
        onto the original photo through the trunk's letterbox), and the box actually pooled (the whole map
        without localisation). Where "unspecified" is likelier than that value the label is None and there is
        no box. `threshold` re-fits the boxes at another share of the maximum, for display (default: the
        model's)."""
        threshold = self.config["threshold"] if threshold is None else float(threshold)
        feats = self.features(maps)
        logits = self.logits(feats)
        m, classes = self.aams(feats, logits)
        return attribute_explanations(
            self.attributes, [self.schema.values(a) for a in self.attributes], m, classes,
            [F.softmax(lg, -1) for lg in logits], self.fit_boxes(m, threshold),
            stride=self.stride, model=self.name, method="aam", threshold=threshold,
            pooled_boxes=self.boxes(feats, logits))


@register
class FashionSearchNetNoLoc(FashionSearchNet):
    """The paper's "FashionSearchNet w/o Loc." ablation: the same network and training, but each attribute's
    representation pools the whole feature map instead of its AAM box."""

    name = "fashionsearchnet_noloc"
    default_config = {**FashionSearchNet.default_config, "localize": False}
