"""One training loop for every head on cached feature maps: seeded, batched, with a progress bar."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vestis.catalog.schema import AttributeSchema
from vestis.vision.extract import catalogue_features  # noqa: F401 - alias: moved to vision
from vestis.vision.trunk import TrunkSpec

# Moved to vision; aliases until the callers import them from there.
trunk_json = TrunkSpec.to_json
trunk_from_json = TrunkSpec.from_json


@dataclass
class TrainData:
    """What a head trains on: cached maps of the training split plus integer labels.

    labels[i, a] is schema.index(attribute a, value) - len(values) for "unspecified";
    instances[i] is an integer instance (product) id, -1 where unknown.
    """

    ids: list[str]
    maps: dict[str, np.ndarray]
    labels: np.ndarray
    instances: np.ndarray
    schema: AttributeSchema

    def __len__(self) -> int:
        return len(self.ids)


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


def pooled_features(data: TrainData, level: str = "s32", chunk: int = 2048) -> torch.Tensor:
    """(N, C) float32 global-average-pooled maps, computed once: heads that only see pooled features
    then train on a few MB instead of converting and pooling the maps at every step."""
    arr = data.maps[level]
    return torch.cat([torch.from_numpy(arr[i:i + chunk]).float().mean(dim=(2, 3)) for i in range(0, len(arr), chunk)])


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
    batches = batches or (lambda r: random_batches(len(data), cfg.batch_size, r))
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


# --- a whole training run: catalogue -> cached features -> fitted head -> run directory -----------------
def train_data(catalog, features) -> TrainData:
    """Labels as schema codes ("unspecified" = len(values)) and integer instance ids, rows as `features`."""
    schema = catalog.schema
    items = [catalog[i] for i in features.ids]
    labels = np.array([schema.encode(it.attributes) for it in items], dtype=np.int64).reshape(len(items), len(schema))
    groups: dict[str, int] = {}
    instances = np.array([groups.setdefault(it.instance_id, len(groups)) if it.instance_id else -1 for it in items], np.int64)
    return TrainData(list(features.ids), features.maps, labels, instances, schema)


def train_run(model_name: str, catalog, out, spec, cache_dir, config: dict | None = None, split: str = "train",
              progress: bool = True, finetune: dict | None = None):
    """Train `model_name` on the catalogue's `split` and save the run (weights, config, schema) to `out`.
    `finetune` (options of `vestis.finetune.finetune_trunk`) first fine-tunes the trunk on that split and
    trains the head on maps from the fine-tuned trunk, which the run then carries."""
    from pathlib import Path

    from vestis.errors import VestisError
    from vestis.models import create_model, save_run

    part = catalog.split(split)
    if len(part) == 0:
        raise VestisError(f"the catalogue has no {split!r} items to train on")
    trunk_record, finetune_history = None, None
    if finetune is not None:
        from vestis.finetune import TRUNK_FILE, finetune_trunk
        from vestis.vision.trunk import TrunkSpec

        weights = Path(out) / TRUNK_FILE
        finetune_history = finetune_trunk(part, spec, weights, progress=progress, **finetune)
        spec = TrunkSpec(name=spec.name, weights=weights, resolution=spec.resolution)
        trunk_record = {**trunk_json(spec), "weights": TRUNK_FILE, "in_run": True}
    feats = catalogue_features(part, spec, cache_dir, progress=progress)
    if len(feats) == 0:
        raise VestisError(f"none of the {len(part)} {split} items has features ({feats.describe()})")
    data = train_data(part, feats)
    channels = {lv: int(a.shape[1]) for lv, a in feats.maps.items()}
    model = create_model(model_name, catalog.schema, channels, config)
    history = model.fit(data, progress=progress)
    model.eval()
    history["train_items"] = len(data)
    if finetune_history is not None:
        history["finetune_trunk"] = finetune_history
    return save_run(model, out, trunk=trunk_record or trunk_json(spec), history=history, catalog=catalog.name)
