"""`attribute_baseline`: FashionSearchNet's "Att. Based" baseline.

Per-attribute classifiers on pooled trunk features predict the query's attributes; the requested
values are substituted; gallery items are ranked by agreement with that target, visual similarity
breaking ties. Both parts live in one vector so any inner-product index ranks exactly this way:
  gallery = [s_a(v) for every attribute a and state v] ++ eps * visual
  query   = [one-hot(target_a)]                          ++ eps * visual
  <q, g>  = sum_a s_a(target_a) + eps^2 cos(visual)
`scoring` picks s: "log" (default) s = log p, so the first term is the log-likelihood that the item
has exactly the target vector - what a hit requires - assuming attributes independent given the
image; "soft" s = p, the expected number of agreeing attributes; "hard" s = one-hot of the argmax,
an exact count of agreements (eps^2 < 1 then makes visual similarity a pure tie-breaker).
Gallery vectors get one more coordinate, sqrt(B^2 - |g|^2) for a bound B on |g|, and queries a 0 there:
inner products are unchanged, but every gallery vector has the same norm B, which turns the maximum
inner-product search into a nearest-neighbour search that graph and IVF indexes answer well (HNSW
recall@30 on the fashion-product-images gallery: 0.98, `vestis bench search --items 8767`; README).
The visual part is the pooled trunk feature projected on its top `visual_dim` principal components
(fitted on the training images): a tie-breaker does not need 1280 dimensions, and a ~300-d vector
keeps a 200k-item index small and fast.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vestis.errors import VestisError
from vestis.models.base import Maps, Probe, Request, SearchModel, Space, attribute_space, register
from vestis.models.explanation import Explanation, attribute_explanations
from vestis.models.layers import AttributeClassifiers, averages_as_maps, l2n, pool_maps
from vestis.models.loop import LoopConfig, TrainData, fit_loop, pooled_features


def drop_other_domains(pooled: torch.Tensor, other: torch.Tensor, p: float) -> torch.Tensor:
    """Training only: dropout at rate p on the pooled features of the rows from a second domain (`other`, a bool
    per row: a `--mix` catalogue's photos, `--shopper-views`). A mixed run revisits its few thousand photos about a
    hundred times (balanced batches), and the head learnt them by heart; the first catalogue's rows are left as they are,
    since the same dropout on every row cost 4.5 points of packshot Top-30 (README, consumer-to-shop)."""
    if not bool(other.any()):
        return pooled
    out = pooled.clone()
    out[other] = F.dropout(pooled[other], p, training=True)
    return out


PROB_FLOOR = 1e-6
LOG_FLOOR = math.log(PROB_FLOOR)


@register
class AttributeBaseline(SearchModel):
    name = "attribute_baseline"
    levels = ("s32",)
    supports_manipulation = True
    quick_config = {"epochs": 2, "hidden": 32, "batch_size": 32}
    # mix_dropout: measured on held-out photos, then both seeds of the query split (README, consumer-to-shop);
    # it changes nothing in a run of one catalogue
    default_config = {"hidden": 512, "dropout": 0.3, "mix_dropout": 0.5, "epochs": 15, "batch_size": 256,
                      "lr": 2e-3, "weight_decay": 1e-4, "seed": 0, "visual_weight": 0.1, "visual_dim": 64,
                      "scoring": "log"}

    def __init__(self, schema, channels, config=None):
        super().__init__(schema, channels, config)
        c = self.channels["s32"]
        h = self.config["hidden"]
        self.trunk_head = nn.Sequential(nn.Linear(c, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(self.config["dropout"])) if h else nn.Identity()
        self.n_states = [len(schema.values(a)) + 1 for a in schema.attributes]
        self.classifiers = AttributeClassifiers(h or c, self.n_states)
        d = self.config["visual_dim"] or c
        self.register_buffer("visual_mean", torch.zeros(c))
        self.register_buffer("visual_basis", torch.eye(c)[:, :d].clone())

    def logits(self, maps: Maps) -> list[torch.Tensor]:
        return self.logits_from_pooled(pool_maps(maps, ("s32",)))

    def logits_from_pooled(self, pooled: torch.Tensor) -> list[torch.Tensor]:
        return self.classifiers(self.trunk_head(pooled))

    def predict_attributes(self, maps: Maps) -> list[torch.Tensor]:
        """Per attribute, (N, values + 1) probabilities; the last column is "unspecified"."""
        return [F.softmax(lg, dim=-1) for lg in self.logits(maps)]

    def fit(self, data: TrainData, progress: bool = True) -> dict:
        cfg = LoopConfig(epochs=self.config["epochs"], batch_size=self.config["batch_size"], lr=self.config["lr"],
                         weight_decay=self.config["weight_decay"], seed=self.config["seed"])
        labels = torch.from_numpy(data.labels.astype(np.int64))
        pooled = pooled_features(data, ("s32",))
        if self.config["visual_dim"]:
            self.visual_mean.copy_(pooled.mean(0))
            sample = pooled[torch.randperm(len(pooled), generator=torch.Generator().manual_seed(0))[:20000]]
            _, _, v = torch.linalg.svd(sample - self.visual_mean, full_matrices=False)
            r = min(self.config["visual_dim"], len(v))  # fewer training items than dimensions: pad with zeros
            self.visual_basis.zero_()
            self.visual_basis[:, :r].copy_(v[:r].T)

        mix_dropout = self.config["mix_dropout"]
        other = torch.from_numpy(data.domains != 0) if data.mixed and mix_dropout > 0 else None

        def step(idx):
            x = pooled[idx]
            if other is not None:
                x = drop_other_domains(x, other[idx], mix_dropout)
            return data.attribute_ce(self.logits_from_pooled(x), idx, labels), {}

        return fit_loop(self.parameters(), data, step, cfg, desc="attribute_baseline", progress=progress, modules=[self])

    def query_summary(self, maps: Maps) -> Maps:
        """Every query-side read of this model is the global average of the stride-32 map (`pool_maps`: the
        classifiers, the visual part, the "visual" space), so that average as a 1 x 1 map is read exactly as the
        whole map (the mean of one cell is the cell)."""
        return averages_as_maps(maps, ("s32",))

    def _visual(self, maps: Maps) -> torch.Tensor:
        return self.config["visual_weight"] * l2n((pool_maps(maps, ("s32",)) - self.visual_mean) @ self.visual_basis)

    @property
    def dim(self) -> int:
        return sum(self.n_states) + self.visual_basis.shape[1] + 1

    @torch.no_grad()
    def embed(self, maps: Maps, space: str = "main") -> torch.Tensor:
        for a in self.schema.attributes:
            if space == attribute_space(a):
                return self.value_probabilities(maps, a)
        if space != "main":
            return super().embed(maps, space)
        probs = self.predict_attributes(maps)
        scoring = self.config["scoring"]
        if scoring == "log":
            probs = [p.clamp_min(PROB_FLOOR).log() for p in probs]
        elif scoring == "hard":
            probs = [F.one_hot(p.argmax(-1), p.shape[-1]).float() for p in probs]
        elif scoring != "soft":
            raise VestisError(f"scoring must be log, soft or hard, got {scoring!r}")
        g = torch.cat([*probs, self._visual(maps)], dim=-1)
        return torch.cat([g, (self._norm_bound() ** 2 - g.pow(2).sum(-1, keepdim=True)).clamp_min(0).sqrt()], dim=-1)

    def _norm_bound(self) -> float:
        """An upper bound on a gallery vector's norm: every log-probability lies in [log 1e-6, 0], every
        probability in [0, 1] (at most 1 per attribute in squares), and the visual part has norm visual_weight."""
        if self.config["scoring"] == "log":
            sq = sum(self.n_states) * LOG_FLOOR ** 2
        else:
            sq = len(self.n_states)
        return float((sq + self.config["visual_weight"] ** 2) ** 0.5)

    @torch.no_grad()
    def embed_query(self, maps: Maps, manipulations=None, probabilities=None) -> torch.Tensor:
        """`probabilities`: these maps' `attribute_probabilities`, where the caller has them (not computed again)."""
        n = next(iter(maps.values())).shape[0]
        manipulations = self.check_manipulations(manipulations, n)
        probs = [probabilities[a] for a in self.schema.attributes] if probabilities is not None \
            else self.predict_attributes(maps)
        # the one-hot targets written into one numpy block (exact 0 / 1: a few array writes, not torch ops per
        # attribute); argmax as torch's: the first of equal maxima
        hot = np.zeros((n, sum(p.shape[-1] for p in probs)), np.float32)
        rows, off = np.arange(n), 0
        for attr, p in zip(self.schema.attributes, probs):
            target = p.numpy().argmax(-1)
            for i, m in enumerate(manipulations):
                if attr in m:
                    target[i] = self.schema.index(attr, m[attr])
            hot[rows, off + target] = 1.0
            off += p.shape[-1]
        return torch.cat([torch.from_numpy(hot), self._visual(maps), torch.zeros(n, 1)], dim=-1)

    # --- similarity with respect to one attribute (PROTOCOLS.md section 2) -------------------------
    def spaces(self) -> dict[str, Space]:
        """"main", "visual", and per attribute `attr_<a>`: the predicted distribution over its known values."""
        out = super().spaces()
        for a, n in zip(self.schema.attributes, self.n_states):
            out[attribute_space(a)] = Space(n - 1, "ip", members="known", attribute=a)
        return out

    def value_probabilities(self, maps: Maps, attribute: str) -> torch.Tensor:
        """(N, values) P(value | image, the value is known): the candidates and a query all have a known value."""
        p = self.predict_attributes(maps)[self.schema.attributes.index(attribute)][:, :-1]
        return p / p.sum(-1, keepdim=True).clamp_min(PROB_FLOOR)

    def plan(self, maps: Maps, request: Request) -> list[Probe]:
        """`attribute:<a>` ranks candidates by the probability that they share the query's value,
        sum_v p_q(v) p_c(v): the inner product of the two predicted distributions, in the attribute's own space."""
        if request.mode.startswith("attribute:"):
            attr = request.mode.split(":", 1)[1]
            self.schema.check_attribute(attr)
            with torch.inference_mode():
                return [Probe(attribute_space(attr), self.value_probabilities(maps, attr).numpy(), group=attr)]
        if request.mode == "manipulate" and request.probabilities is not None:
            with torch.inference_mode():
                return [Probe("main", self.embed_query(maps, request.manipulations, request.probabilities).numpy())]
        return super().plan(maps, request)

    def explain(self, maps: Maps, threshold: float = 0.2) -> list[Explanation]:
        """Grad-CAM (Selvaraju et al. 2017) of each attribute's most confident known value on the stride-32 map.

        The classifiers read the global average pool p of the map f, so d logit / d f(k, h, w) = g(k) / HW with
        g = d logit / d p, the same at every cell, and Grad-CAM's map is relu(sum_k g(k) f_k): the class
        activation map of the head linearised at this image. With `hidden: 0` the head is one linear layer, g
        is its weight row and this is exactly CAM (Zhou et al. 2016); with the default hidden layer (BN, ReLU)
        it is that first-order approximation, which is why the method is reported as "grad-cam". One Explanation
        per item; where "unspecified" is likelier than that value the region's label is None and it has no box."""
        from vestis.models.layers import boxes_from_maps

        f = maps["s32"].detach().float().clone().requires_grad_(True)
        was_training = self.training
        self.eval()
        try:
            with torch.enable_grad():
                logits = self.logits({"s32": f})
                cams, classes, probs = [], [], []
                for lg in logits:
                    c = lg[:, :-1].argmax(-1)  # known values only: the last class is "unspecified"
                    (g,) = torch.autograd.grad(lg.gather(1, c[:, None]).sum(), f, retain_graph=True)
                    w = g.sum(dim=(2, 3))  # (N, K): d logit / d pooled, up to the 1/HW factor
                    cams.append(torch.relu(torch.einsum("nk,nkhw->nhw", w, f.detach())))
                    classes.append(c)
                    probs.append(F.softmax(lg.detach(), -1))
        finally:
            self.train(was_training)
        aam = torch.stack(cams, 1)
        attrs = list(self.schema.attributes)
        return attribute_explanations(
            attrs, [self.schema.values(a) for a in attrs], aam, torch.stack(classes, 1), probs,
            boxes_from_maps(aam, threshold), stride=32, model=self.name,
            method="grad-cam" if self.config["hidden"] else "cam", threshold=threshold)
