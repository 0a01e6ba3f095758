"""`parts`: diverse part-based suggestions - Verma, Anand, Arora, Rai, "Diversity in fashion recommendation using
semantic parsing" (ICIP 2018): one group of results per garment recognised in the photo, each similar to the query
in that garment's texture and labelled with what it is.

Pipeline on cached trunk maps:

1. Global features. The stride-8 map (20 x 16 cells at 160 x 128, 40 channels) and the stride-16 map (112
   channels) upsampled to its grid, concatenated and reduced by a 1x1 conv (`width` channels, BN, ReLU): the
   attention needs a grid fine enough to put a glimpse on a shoe; s32's 5 x 4 grid is too coarse
   (`fuse_s8=False`: the s16 grid alone).
2. Recurrent attention (Wang, Chen, Li, Xu, Lin, ICCV 2017, "Multi-label image recognition by recurrently
   discovering attentional regions", which the paper builds on). Step 0 looks at the whole map (the identity
   transform); an LSTM cell then runs `steps` steps, each taking the pooled features of the previous glimpse and
   predicting a spatial transformer's scale and translation (s_x, s_y, t_x, t_y), bounded (scale in
   (SCALE_MIN, SCALE_MAX) through a sigmoid, translation in (-1, 1) through tanh), rotation and shear fixed at 0,
   initialised to the identity (zero weights, biases giving s = 1, t = 0). `affine_grid` + `grid_sample`
   resample the attended region to a `glimpse` x `glimpse` grid. Every step scores the labels of its region;
   step 0's score is discarded; category-wise max pooling over steps 1..k is the multi-label prediction.
3. Texture encoding (Deep TEN, `layers.TextureEncoding`): each glimpse's cells are encoded against `codewords`
   (32, the paper's) learnable codewords, flattened and L2-normalised (Deep TEN's normalisation), projected to
   `dim` (256) and L2-normalised: the step's part descriptor, which is what the per-part space indexes. The
   step's classifier reads that descriptor (before its last normalisation) with the glimpse's average pool, so
   the classification loss trains the descriptor to tell garments apart.
4. Losses, weighted 1, 1 and 0.01 as in the paper (`loss`):
   - classification: the squared Euclidean distance, halved (Caffe's Euclidean loss), between the softmax of the
     max-pooled scores and the label vector normalised to sum 1 (images without a known label take no part);
   - localisation (Wang et al.'s): (max(s - 0.5, 0))^2 per scale, so no region outgrows half the image, plus
     `anchor_weight` x 1/2 ||t - anchor_k||^2 pulling step k toward its own anchor point so the steps spread out;
   - divergence: the soft IoU (sum of minima / sum of maxima) of consecutive steps' sampling masks (a
     sigmoid-edged box on the map's grid per step), so consecutive glimpses do not land on the same place.
   All three are torch operations: gradients reach the LSTM and the transformer head from each
   (tests/test_model_parts.py). The authors' public code computed the localisation loss in NumPy (no gradient).
   - ours (`similarity_weight`, 0.1; 0 leaves it out): a supervised contrastive loss on the part
     descriptors (`losses.supervised_contrastive`, `similarity_temperature`; a batch-hard triplet collapsed every
     descriptor to one point in tests/test_model_parts.py's data), so that they are trained for similarity and
     not only for classification (the classification-only descriptor has hubs: a few gallery parts nearest to every
     query). Each step stands for the garment of its image whose label it scores highest; two steps are a positive
     pair when their garments share the label and `similarity_attribute` (default: the schema's first of
     SIMILARITY_ATTRIBUTES, else the label alone; a garment whose value is unspecified takes no part): a single
     product's steps and a collage's steps on the same kind and colour of garment come together. (The collages
     record no source photo, so "the same garment" is this.) Chosen on the validation collages (README, protocol
     4): against the classification-only descriptor, coverage 0.974 -> 0.996, purity@5 0.982 -> 0.987, part
     relevance with the colour 0.174 -> 0.253, distinct items among the groups' first five 4.2 % -> 10.7 %.
5. Recommendation (`plan`, mode "diverse"): the per-part space "parts" holds one vector per (item, step k >= 1),
   each part row labelled (`Space.labels`, index attribute `part_label`) with the label among the ITEM's
   likeliest labels (`gallery_label_ratio`) that its step scores highest - so filtering on a label keeps exactly
   the items predicted to carry it, and their parts that look most like it. A query makes one group per predicted label: the step whose
   own softmax gives that label the highest probability gives the probe vector and the group's box (in trunk-input
   pixels), and the label's pooled probability its score; groups come in order of score, and the engine de-duplicates items across them.

Labels: the garment category - `label_attribute` (default the schema's "category", else "subCategory", else
"articleType"). Multi-label targets come from `TrainData.garment_labels`: an outfit's parts, or a single
garment's own labels.

Deviations from the paper, and why:
- The trunk is the frozen, cached one of every vestis method (DESIGN.md), not a fine-tuned VGG / ResNet; the
  attention runs on the stride-8 + stride-16 maps of 160 x 128 inputs.
- The LSTM's input is the previous glimpse's pooled features (Wang et al. feed the whole map's features each
  step); the step-0 glimpse is the whole map by construction, not a predicted transform.
- The predicted labels of an image are those whose pooled probability is at least `label_ratio` of the largest
  (the paper assigns the top-ranked labels; with the normalised-label target a 3-garment image scores about 1/3
  each, a single garment about 1). A query photo's at 0.1: a garment the model is unsure of (sandals, flip-flops
  beside shoes) still gets its group - coverage on real collages 0.91 at 0.3, 0.94 at 0.15, 0.96 at 0.1, at the
  price of more groups naming a garment the photo lacks (10 %, 18 %, 25 %); a gallery item's parts at
  `gallery_label_ratio` 0.3 (None: the query's).
- Part rows are labelled from the item's predicted labels (see 5.) instead of keeping all items' parts. Giving a
  gallery item's parts its likeliest label only (`gallery_label_ratio` 1.0; a catalogue item is one product) files
  more items under the right label (Bottomwear 0.55 -> 0.72 of the items filed under it on real collages) but lowered
  purity@5 (0.60 -> 0.54): its parts that show other garments then match the query too (README, protocol 4).
- A part row's score within its label's group is the descriptors' cosine + `confidence_weight` (2.0) x the item's
  probability of that label (one more coordinate of the part vectors, and 1 appended to the query's): the
  descriptor alone (the paper's ranking) put items the model is unsure of - photos of models, other categories
  filed under the label - first. On real collages (reduced configuration, label ratio 0.3): purity@5 0.60 ->
  0.98 at 0.5 (1.00 at 1.0), part relevance 0.47 -> 0.96 (0.99), with the colour 0.06 -> 0.19 (README, protocol 4);
  with the query's label ratio at 0.1, 1.0 gives purity@5 0.94 and coverage 0.950 (0.5: 0.90 and 0.96), and after
  12 epochs 0.955 and 0.960 (0.5: 0.93 and 0.96). 0 gives the paper's ranking. 2.0 was chosen on the validation
  collages (purity@5 0.977 at 1.0, 0.982 at 2.0, coverage the same).
- `anchor_weight` (1.0) and the anchors (the four quadrant centres and the middle, for `steps` = 5) are our
  choices (Wang et al. use anchors too; the paper we follow gives no weights): at 0.1 the steps barely left the
  identity start within a short training run (tests/test_model_parts.py's maps: scales still 0.9 after 32 steps).
- Cross-group de-duplication keeps an item in the group where it ranks best (`engine.dedupe_groups`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vestis.errors import VestisError
from vestis.losses import supervised_contrastive
from vestis.models.base import Embedding, Maps, Probe, Request, SearchModel, Space, register
from vestis.models.explanation import Explanation, Region
from vestis.models.layers import TextureEncoding, gap, l2n, texture_descriptor
from vestis.models.loop import LoopConfig, TrainData, batch_maps, fit_loop

LABEL_ATTRIBUTES = ("category", "subCategory", "articleType")
SIMILARITY_ATTRIBUTES = ("baseColour", "colour", "color")  # what a positive pair shares besides the label
SCALE_MIN, SCALE_MAX = 0.05, 1.95  # the scale bounds (1 = the whole map: the middle, where the sigmoid is steepest)
SCALE_LIMIT = 0.5  # the localisation loss penalises scales above it
MASK_EDGE = 0.05  # softness of the sampling masks' edges (normalised coordinates) in the divergence loss
SPACE = "parts"


def default_anchors(steps: int) -> list[tuple[float, float]]:
    """(t_x, t_y) in [-1, 1] per step: the four quadrant centres and the middle, repeated around the middle."""
    base = [(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5), (0.0, 0.0)]
    out = base[:steps]
    while len(out) < steps:  # more steps: a ring at radius 0.6
        a = 2 * math.pi * len(out) / steps
        out.append((round(0.6 * math.cos(a), 3), round(0.6 * math.sin(a), 3)))
    return out


def transform_matrices(params: torch.Tensor) -> torch.Tensor:
    """(..., 4) = (s_x, s_y, t_x, t_y) -> (..., 2, 3) affine matrices, rotation and shear 0."""
    sx, sy, tx, ty = params.unbind(-1)
    z = torch.zeros_like(sx)
    return torch.stack([torch.stack([sx, z, tx], -1), torch.stack([z, sy, ty], -1)], -2)


def sampling_masks(params: torch.Tensor, size: tuple[int, int], edge: float = MASK_EDGE) -> torch.Tensor:
    """(N, 4) transforms -> (N, H, W) soft masks of the region each samples on an H x W grid (cell centres in
    normalised coordinates, align_corners=False): ~1 inside [t - s, t + s] per axis, ~0 outside."""
    h, w = size
    ys = (torch.arange(h, dtype=params.dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=params.dtype) + 0.5) / w * 2 - 1
    sx, sy, tx, ty = (p[:, None] for p in params.unbind(-1))
    mx = torch.sigmoid((sx - (xs[None] - tx).abs()) / edge)  # (N, W)
    my = torch.sigmoid((sy - (ys[None] - ty).abs()) / edge)  # (N, H)
    return my[:, :, None] * mx[:, None, :]


def divergence_loss(params: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Mean soft IoU (sum of minima over sum of maxima: 1 for the same mask) of the sampling masks of consecutive
    steps; params (N, T, 4); 0 with fewer than two steps."""
    n, t = params.shape[:2]
    if t < 2:
        return params.sum() * 0
    m = sampling_masks(params.reshape(n * t, 4), size).reshape(n, t, -1)
    a, b = m[:, :-1], m[:, 1:]
    return (torch.minimum(a, b).sum(-1) / torch.maximum(a, b).sum(-1).clamp_min(1e-6)).mean()


def localisation_loss(params: torch.Tensor, anchors: torch.Tensor, anchor_weight: float) -> torch.Tensor:
    """Wang et al.'s: sum over steps of max(s - 0.5, 0)^2 per scale + anchor_weight / 2 ||t - anchor||^2, averaged
    over images; params (N, T, 4), anchors (T, 2)."""
    scale = F.relu(params[..., :2] - SCALE_LIMIT).pow(2).sum(-1)
    anchor = 0.5 * (params[..., 2:] - anchors.to(params.dtype)).pow(2).sum(-1)
    return (scale + anchor_weight * anchor).sum(-1).mean()


def classification_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1/2 ||softmax(scores) - targets / sum(targets)||^2 averaged over images with a target; (N, L) each."""
    known = targets.sum(-1) > 0
    if not known.any():
        return scores.sum() * 0
    y = targets[known] / targets[known].sum(-1, keepdim=True)
    return 0.5 * (F.softmax(scores[known], -1) - y).pow(2).sum(-1).mean()


def step_garments(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, T, L) the steps' scores, (N, G) each image's garments' label indices (-1: none) -> (N, T) the garment
    (index into G) whose label each step scores highest; -1 for an image without a known garment."""
    s = scores.gather(2, labels.clamp_min(0)[:, None, :].expand(-1, scores.shape[1], -1))
    s = s.masked_fill((labels < 0)[:, None, :], float("-inf"))
    best = s.argmax(-1)
    return best.masked_fill((labels < 0).all(-1)[:, None], -1)


def similarity_loss(out: dict, labels: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss on the steps' (1..T) unit part descriptors, grouped by the key of the garment
    each step stands for (`step_garments`, on the detached scores); steps whose garment has no key take no part."""
    g = step_garments(out["scores"][:, 1:].detach(), labels)
    key = keys.gather(1, g.clamp_min(0)).masked_fill(g < 0, -1).flatten()
    d = out["descriptors"][:, 1:].flatten(0, 1)
    keep = key >= 0
    if keep.sum() < 2:
        return d.sum() * 0
    return supervised_contrastive(d[keep], key[keep], temperature)


@register
class Parts(SearchModel):
    name = "parts"
    levels = ("s8", "s16")
    quick_config = {"epochs": 3, "width": 32, "hidden": 32, "codewords": 8, "dim": 32, "glimpse": 4, "steps": 3,
                    "batch_size": 32}
    default_config = {"label_attribute": None, "steps": 5, "width": 128, "hidden": 256, "glimpse": 8,
                      "codewords": 32, "dim": 256, "fuse_s8": True, "anchors": None, "anchor_weight": 1.0,
                      "loss_weights": [1.0, 1.0, 0.01], "label_ratio": 0.1, "gallery_label_ratio": 0.3,
                      "confidence_weight": 2.0, "similarity_weight": 0.1, "similarity_attribute": None,
                      "similarity_temperature": 0.1,
                      "epochs": 15, "batch_size": 64, "lr": 1e-3, "weight_decay": 1e-4, "seed": 0}

    def __init__(self, schema, channels, config=None):
        super().__init__(schema, channels, config)
        c = self.config
        attr = c["label_attribute"] or next((a for a in LABEL_ATTRIBUTES if a in schema), None)
        if attr is None:
            raise VestisError(f"model parts labels garments with a category attribute; the schema has none of "
                              f"{', '.join(LABEL_ATTRIBUTES)}: pass label_attribute (one of {', '.join(schema.attributes)})")
        schema.check_attribute(attr)
        c["label_attribute"] = attr
        self.labels = tuple(schema.values(attr))
        k = int(c["steps"])
        if k < 1:
            raise VestisError(f"model parts: steps must be at least 1, got {k}")
        anchors = c["anchors"] or default_anchors(k)
        if len(anchors) != k:
            raise VestisError(f"model parts: {len(anchors)} anchors for {k} steps")
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))
        w, hid = int(c["width"]), int(c["hidden"])
        fused = self.channels["s16"] + (self.channels["s8"] if c["fuse_s8"] else 0)
        self.reduce = nn.Sequential(nn.Conv2d(fused, w, 1), nn.BatchNorm2d(w), nn.ReLU())
        self.lstm = nn.LSTMCell(w, hid)
        self.where = nn.Linear(hid, 4)  # -> (s_x, s_y, t_x, t_y) before their bounds
        nn.init.zeros_(self.where.weight)
        s0 = math.log((1 - SCALE_MIN) / (SCALE_MAX - 1))  # the sigmoid bound gives s = 1 at this bias
        with torch.no_grad():
            self.where.bias.copy_(torch.tensor([s0, s0, 0.0, 0.0]))
        if c["similarity_attribute"] is None:
            c["similarity_attribute"] = next((a for a in SIMILARITY_ATTRIBUTES if a in schema), None)
        elif float(c["similarity_weight"]):
            schema.check_attribute(c["similarity_attribute"])
        self.encoding = TextureEncoding(w, int(c["codewords"]))
        self.project = nn.Linear(int(c["codewords"]) * w, int(c["dim"]))
        self.classifier = nn.Linear(int(c["dim"]) + w, len(self.labels))

    # --- the network ----------------------------------------------------------------------------
    def features(self, maps: Maps) -> torch.Tensor:
        x = maps["s16"].float()
        if self.config["fuse_s8"]:
            s8 = maps["s8"].float()
            x = torch.cat([s8, F.interpolate(x, size=s8.shape[-2:], mode="bilinear", align_corners=False)], 1)
        return self.reduce(x)

    def bounded(self, raw: torch.Tensor) -> torch.Tensor:
        scale = SCALE_MIN + (SCALE_MAX - SCALE_MIN) * torch.sigmoid(raw[..., :2])
        return torch.cat([scale, torch.tanh(raw[..., 2:])], -1)

    def glimpse(self, f: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        g = int(self.config["glimpse"])
        grid = F.affine_grid(transform_matrices(params), [len(f), f.shape[1], g, g], align_corners=False)
        return F.grid_sample(f, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def describe(self, region: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A glimpse (N, C, g, g) -> (its part descriptor before the last normalisation (N, dim), scores (N, L))."""
        e = self.encoding(region.flatten(2).transpose(1, 2))
        d = self.project(texture_descriptor(e))
        return d, self.classifier(torch.cat([d, gap(region)], -1))

    def forward(self, maps: Maps) -> dict[str, torch.Tensor]:
        """params (N, T+1, 4) with step 0 the identity; scores (N, T+1, L); descriptors (N, T+1, dim) unit
        length; the map size."""
        f = self.features(maps)
        n = len(f)
        params = [f.new_tensor([1.0, 1.0, 0.0, 0.0]).expand(n, 4)]
        region = self.glimpse(f, params[0])
        d, s = self.describe(region)
        descs, scores = [d], [s]
        state = None
        for _ in range(int(self.config["steps"])):
            state = self.lstm(gap(region), state)
            params.append(self.bounded(self.where(state[0])))
            region = self.glimpse(f, params[-1])
            d, s = self.describe(region)
            descs.append(d)
            scores.append(s)
        return {"params": torch.stack(params, 1), "scores": torch.stack(scores, 1),
                "descriptors": l2n(torch.stack(descs, 1)), "size": tuple(f.shape[-2:])}

    @staticmethod
    def pooled_scores(out: dict) -> torch.Tensor:
        """Category-wise max pooling over steps 1..T (step 0's score discarded): (N, L)."""
        return out["scores"][:, 1:].amax(1)

    def loss(self, out: dict, targets: torch.Tensor, garments: tuple[torch.Tensor, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict]:
        """The paper's three losses; with `similarity_weight` and `garments` (`garment_keys` of the batch) also
        the part descriptors' contrastive loss."""
        w_cls, w_loc, w_div = self.config["loss_weights"]
        steps = out["params"][:, 1:]
        cls = classification_loss(self.pooled_scores(out), targets)
        loc = localisation_loss(steps, self.anchors, self.config["anchor_weight"])
        div = divergence_loss(steps, out["size"])
        total, logs = w_cls * cls + w_loc * loc + w_div * div, {"cls": cls, "loc": loc, "div": div}
        w_sim = float(self.config["similarity_weight"])
        if w_sim and garments is not None:
            logs["sim"] = similarity_loss(out, *garments, float(self.config["similarity_temperature"]))
            total = total + w_sim * logs["sim"]
        return total, logs

    def garment_keys(self, data: TrainData) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, G) label index of each garment of each image, and (N, G) its similarity key (label x value of
        `similarity_attribute`); -1 pads and marks a garment without a known label (key: or value)."""
        c = self.config
        col = self.schema.attributes.index(c["label_attribute"])
        sim = c["similarity_attribute"]
        scol = self.schema.attributes.index(sim) if sim is not None else None
        n_val = len(self.schema.values(sim)) if sim is not None else 1
        g = max(len(data.garment_labels(i)) for i in range(len(data)))
        labels = np.full((len(data), g), -1, np.int64)
        keys = np.full((len(data), g), -1, np.int64)
        for i in range(len(data)):
            codes = data.garment_labels(i)
            lab = codes[:, col]
            val = codes[:, scol] if scol is not None else np.zeros(len(codes), np.int64)
            known = (lab >= 0) & (lab < len(self.labels))
            labels[i, :len(codes)] = np.where(known, lab, -1)
            keys[i, :len(codes)] = np.where(known & (val >= 0) & (val < n_val), lab * n_val + val, -1)
        return torch.from_numpy(labels), torch.from_numpy(keys)

    def targets(self, data: TrainData) -> torch.Tensor:
        """(N, L) multi-hot garment labels of every training image (`TrainData.garment_labels`)."""
        col = self.schema.attributes.index(self.config["label_attribute"])
        y = np.zeros((len(data), len(self.labels)), np.float32)
        for i in range(len(data)):
            codes = data.garment_labels(i)[:, col]
            y[i, codes[codes < len(self.labels)]] = 1.0
        return torch.from_numpy(y)

    def fit(self, data: TrainData, progress: bool = True) -> dict:
        c = self.config
        y = self.targets(data)
        if not (y.sum(1) > 0).any():
            raise VestisError(f"model parts: no training image has a known {c['label_attribute']}")
        cfg = LoopConfig(epochs=c["epochs"], batch_size=c["batch_size"], lr=c["lr"], weight_decay=c["weight_decay"],
                         seed=c["seed"])

        garments = self.garment_keys(data) if float(c["similarity_weight"]) else None

        def step(idx):
            g = (garments[0][idx], garments[1][idx]) if garments is not None else None
            return self.loss(self(batch_maps(data, idx, self.levels)), y[idx], g)

        return fit_loop(self.parameters(), data, step, cfg, desc="parts", progress=progress, modules=[self])

    # --- predictions --------------------------------------------------------------------------
    def label_probabilities(self, out: dict) -> torch.Tensor:
        return F.softmax(self.pooled_scores(out), -1)

    def predicted_labels(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, L) bool: labels at least `label_ratio` of the image's likeliest."""
        return probs >= self.config["label_ratio"] * probs.amax(-1, keepdim=True)

    @torch.no_grad()
    def attribute_probabilities(self, maps: Maps) -> dict[str, torch.Tensor]:
        """The label attribute only ("unspecified" gets 0): the multi-label distribution of the image."""
        p = self.label_probabilities(self(maps))
        return {self.config["label_attribute"]: torch.cat([p, p.new_zeros(len(p), 1)], -1)}

    def boxes(self, out: dict, stride: int) -> torch.Tensor:
        """(N, T+1, 4) each step's sampled region (x0, y0, x1, y1) in trunk-input pixels, clipped to the input."""
        h, w = out["size"]
        sx, sy, tx, ty = out["params"].unbind(-1)
        xs = torch.stack([tx - sx, tx + sx], -1).clamp(-1, 1)
        ys = torch.stack([ty - sy, ty + sy], -1).clamp(-1, 1)
        px = (xs + 1) / 2 * w * stride
        py = (ys + 1) / 2 * h * stride
        return torch.stack([px[..., 0], py[..., 0], px[..., 1], py[..., 1]], -1)

    @property
    def stride(self) -> int:
        return 8 if self.config["fuse_s8"] else 16

    # --- the gallery side ---------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    def spaces(self) -> dict[str, Space]:
        return {**super().spaces(), SPACE: Space(self.part_dim, "ip", members="parts", parts=int(self.config["steps"]),
                                                 labels=self.labels, label_attribute=self.config["label_attribute"])}

    @torch.no_grad()
    def embed(self, maps: Maps, space: str = "main") -> torch.Tensor:
        """"main": the mean of the steps' descriptors (one vector per item, for same_item and the flat modes);
        "parts": each step's descriptor, (N, T, dim)."""
        if space in ("main", SPACE):
            return self._space_vectors(self(maps), space)
        return super().embed(maps, space)

    @property
    def part_dim(self) -> int:
        """The per-part vectors: the descriptor, plus one coordinate for the label's confidence where it counts."""
        return self.dim + (1 if self.config["confidence_weight"] else 0)

    def _space_vectors(self, out: dict, space: str) -> torch.Tensor:
        steps = out["descriptors"][:, 1:]
        if space == "main":
            return l2n(steps.mean(1))
        w = float(self.config["confidence_weight"])
        if not w:
            return steps
        # a part row's last coordinate: w x the item's probability of the row's label; a query appends 1, so the
        # inner product is the descriptors' cosine + w p(label | item): within a label, confident items first
        probs = self.label_probabilities(out)
        conf = probs.gather(1, self._step_labels(out))
        return torch.cat([steps, w * conf[..., None]], -1)

    @torch.no_grad()
    def part_labels(self, maps: Maps, space: str) -> torch.Tensor:
        """Each step's label: the one its step scores highest among the item's labels at least `gallery_label_ratio`
        of its likeliest (None: `label_ratio`, as a query's; 1.0: the likeliest only)."""
        if space != SPACE:
            return super().part_labels(maps, space)
        return self._step_labels(self(maps))

    def _step_labels(self, out: dict) -> torch.Tensor:
        probs = self.label_probabilities(out)
        ratio = self.config["gallery_label_ratio"]
        allowed = probs >= (self.config["label_ratio"] if ratio is None else ratio) * probs.amax(-1, keepdim=True)
        s = out["scores"][:, 1:].masked_fill(~allowed[:, None, :], float("-inf"))
        return s.argmax(-1)

    @torch.no_grad()
    def embed_spaces(self, maps: Maps, names) -> dict[str, Embedding]:
        """"main", "parts" and the parts' labels from one pass of the network (`embed` runs it once per space)."""
        mine = [n for n in names if n in ("main", SPACE)]
        out = self(maps) if mine else None
        res = {n: Embedding(self._space_vectors(out, n), self._step_labels(out) if n == SPACE else None) for n in mine}
        rest = [n for n in names if n not in res]
        return {**res, **super().embed_spaces(maps, rest)} if rest else res

    # --- the query side -----------------------------------------------------------------------
    def modes(self) -> list[str]:
        return super().modes() + ["diverse"]

    def plan(self, maps: Maps, request: Request) -> list[Probe]:
        if request.mode != "diverse":
            return super().plan(maps, request)
        with torch.inference_mode():
            out = self(maps)
            probs = self.label_probabilities(out)
            chosen = self.predicted_labels(probs)
            # (N, L): the step most sure of each label in its own softmax - where that garment is. The raw scores'
            # argmax (the max pooling's winner) is no place: one step with large scores wins most labels (measured on
            # real collages: box IoU with the garment 0.09 by raw score, 0.24 by softmax, 0.29 at best)
            steps = F.softmax(out["scores"][:, 1:], -1).argmax(1)
            boxes = self.boxes(out, self.stride)[:, 1:]
            descs = out["descriptors"][:, 1:]
        probes = []
        for q in range(len(probs)):
            for label in sorted(np.flatnonzero(chosen[q].numpy()), key=lambda j: -float(probs[q, j])):
                t = int(steps[q, label])
                vec = descs[q, t] if self.part_dim == self.dim else torch.cat([descs[q, t], descs.new_ones(1)])
                probes.append(Probe(SPACE, vec[None].numpy(), filters={"part_label": self.labels[label]},
                                    group=self.labels[label], rows=np.array([q]), boxes=boxes[q, t][None].numpy(),
                                    scores=probs[q, label][None].numpy()))
        return probes

    # --- explanations -------------------------------------------------------------------------
    @torch.no_grad()
    def explain(self, maps: Maps) -> list[Explanation]:
        """One region per attention step ("step 1".."step T"): its sampled region as a box in cells, labelled with
        the label it scores highest and that label's probability in the step's own softmax."""
        out = self(maps)
        h, w = out["size"]
        cells = self.boxes(out, 1)[:, 1:]  # stride 1: in cells
        p = F.softmax(out["scores"][:, 1:], -1)
        conf, best = p.max(-1)
        res = []
        for i in range(len(cells)):
            regions = []
            for t in range(cells.shape[1]):
                x0, y0, x1, y1 = (float(v) for v in cells[i, t])
                box = (x0, y0, max(x1, x0 + 1e-3), max(y1, y0 + 1e-3))
                regions.append(Region(name=f"step {t + 1}", box=box, label=self.labels[int(best[i, t])],
                                      confidence=float(conf[i, t])))
            res.append(Explanation(regions=regions, stride=self.stride, map_size=(h, w), model=self.name,
                                   method="recurrent attention"))
        return res
