"""The training loop every head uses on cached feature maps: what a head trains on (`TrainData`), one seeded,
batched loop with a progress bar (`fit_loop`), and the batch samplers. The pipeline that builds `TrainData`
from a catalogue and saves the run is `vestis.train`, a layer above the models."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from vestis.catalog.schema import AttributeSchema

NO_LOSS = -1  # a label code that carries no loss (a mixed-in catalogue's missing attribute; a set-valued target)


@dataclass
class TrainData:
    """What a head trains on: cached maps of the training split plus integer labels.

    labels[i, a] is schema.index(attribute a, value) - len(values) for "unspecified";
    instances[i] is an integer instance (product) id, -1 where unknown;
    garments[i] (G_i, A) the same codes for each garment image i shows: an outfit's parts (`Item.parts`, one row
    each), or its own labels for a single garment (the multi-label targets of part-based models). None: every
    image shows one garment, `labels` (`garment_labels` reads either).
    """

    ids: list[str]
    maps: dict[str, np.ndarray]
    labels: np.ndarray
    instances: np.ndarray
    schema: AttributeSchema
    garments: list[np.ndarray] | None = None
    # A mixed run (`vestis train --mix`): rows of a second catalogue follow the first's. domains[i] = 0 for the
    # first catalogue, 1 for the second; its attributes without a label are NO_LOSS (not "unspecified": no loss),
    # and label_sets[a] (N, values + 1) bool marks rows whose target for attribute a is a set of values.
    domains: np.ndarray | None = None
    label_sets: dict[int, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def garment_labels(self, i: int) -> np.ndarray:
        """(G, A) codes of the garments image i shows."""
        return self.garments[i] if self.garments is not None else self.labels[i:i + 1]

    @property
    def mixed(self) -> bool:
        return self.domains is not None and bool((self.domains != 0).any())

    @property
    def n_primary(self) -> int:
        """Rows of the first catalogue (they come first): what stages that need whole label vectors use."""
        return len(self) if self.domains is None else int((self.domains == 0).sum())

    def primary(self) -> "TrainData":
        """The first catalogue's rows alone (a view when the run is not mixed)."""
        if not self.mixed:
            return self
        n = self.n_primary
        return TrainData(self.ids[:n], {k: v[:n] for k, v in self.maps.items()}, self.labels[:n], self.instances[:n],
                         self.schema, garments=self.garments[:n] if self.garments is not None else None)

    def attribute_ce(self, logits: list[torch.Tensor], idx, labels: torch.Tensor | None = None,
                     reduction: str = "mean") -> torch.Tensor:
        """The attribute classification loss of rows `idx` (`losses.multi_attribute_ce`): NO_LOSS entries carry no
        loss and set-valued targets the summed probability of their set. `labels`: the codes as a tensor, when
        the caller already holds them (else taken from `self.labels`)."""
        from vestis.losses import multi_attribute_ce

        idx_np = np.asarray(idx)
        y = labels[torch.as_tensor(idx_np)] if labels is not None else torch.from_numpy(self.labels[idx_np].astype(np.int64))
        sets = {a: torch.from_numpy(m[idx_np]) for a, m in self.label_sets.items()}
        return multi_attribute_ce(logits, y, ignore_index=NO_LOSS, reduction=reduction, sets=sets or None)


@dataclass
class LoopConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9)


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def random_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(n)
    for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
        yield order[i:i + batch_size]


def balanced_batches(domains: np.ndarray, batch_size: int, rng: np.random.Generator,
                     rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Batches with an equal share of every domain (a mixed run): the largest domain is visited once per epoch, a
    smaller one is cycled through in fresh permutations (so its rows repeat within an epoch). `rows`: only these."""
    rows = np.arange(len(domains)) if rows is None else np.asarray(rows)
    parts = [rows[domains[rows] == d] for d in np.unique(domains[rows])]
    per = max(1, batch_size // len(parts))
    n_batches = max(1, max(len(p) for p in parts) // per)
    streams = []
    for p in parts:
        reps = -(-n_batches * per // len(p))
        streams.append(np.concatenate([p[rng.permutation(len(p))] for _ in range(reps)]))
    for b in range(n_batches):
        yield np.concatenate([s[b * per:(b + 1) * per] for s in streams])


def data_batches(data: TrainData, batch_size: int, rng: np.random.Generator,
                 rows: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The default batches of a head: random batches, balanced per domain in a mixed run."""
    if data.mixed:
        yield from balanced_batches(data.domains, batch_size, rng, rows)
        return
    if rows is None:
        yield from random_batches(len(data), batch_size, rng)
        return
    for b in random_batches(len(rows), batch_size, rng):
        yield rows[b]


def pk_batches(groups: np.ndarray, p: int, k: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Batches of P groups x K members (with replacement inside small groups), every group with >= 2
    members visited once per epoch; the standard sampler for batch-hard instance triplets."""
    members: dict[int, np.ndarray] = {}
    for g in np.unique(groups[groups >= 0]):
        idx = np.flatnonzero(groups == g)
        if len(idx) >= 2:
            members[int(g)] = idx
    keys = np.array(sorted(members))
    keys = keys[rng.permutation(len(keys))]
    for i in range(0, len(keys) - p + 1 if len(keys) >= p else 1, p):
        chunk = keys[i:i + p]
        yield np.concatenate([rng.choice(members[int(g)], k, replace=len(members[int(g)]) < k) for g in chunk])


def batch_maps(data: TrainData, idx: np.ndarray, levels: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """float32 tensors of the cached float16 maps for these rows."""
    return {lv: torch.from_numpy(data.maps[lv][idx]).float() for lv in levels}


def pooled_features(data: TrainData, levels: tuple[str, ...] = ("s32",), pool: str = "avg",
                    chunk: int = 2048) -> torch.Tensor:
    """(N, D) float32 pooled maps (`layers.pool_maps`) of every training item, computed once: heads that only
    see pooled features then train on a few MB instead of converting and pooling the maps at every step."""
    from vestis.models.layers import pool_maps

    n = len(data)
    parts = [pool_maps({lv: torch.from_numpy(data.maps[lv][i:i + chunk]) for lv in levels}, levels, pool)
             for i in range(0, n, chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def fit_loop(params, data: TrainData, step: Callable[[np.ndarray], tuple[torch.Tensor, dict]], cfg: LoopConfig,
             batches: Callable[[np.random.Generator], Iterator[np.ndarray]] | None = None,
             desc: str = "train", progress: bool = True, modules: list[torch.nn.Module] | None = None) -> dict:
    """Minimise step(batch indices) -> (loss, logs) over epochs; returns the per-epoch mean logs + seconds."""
    rng = seed_everything(cfg.seed)
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = batches or (lambda r: data_batches(data, cfg.batch_size, r))
    n_steps = cfg.epochs * max(1, sum(1 for _ in batches(np.random.default_rng(cfg.seed))))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=n_steps, pct_start=0.1) if n_steps > 10 else None
    for m in modules or []:
        m.train()
    history: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=n_steps, desc=desc, disable=not progress, unit="step", dynamic_ncols=True)
    for _ in range(cfg.epochs):
        sums: dict[str, float] = {}
        count = 0
        for idx in batches(rng):
            loss, logs = step(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            logs = {"loss": loss.item(), **{k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in logs.items()}}
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
        for k, v in sums.items():
            history.setdefault(k, []).append(v / max(count, 1))
    bar.close()
    for m in modules or []:
        m.eval()
    history["seconds"] = [time.perf_counter() - t0]
    return history
