"""The training pipeline: catalogue -> cached features -> fitted head -> run directory.

The loop the heads themselves use (`TrainData`, `fit_loop`, samplers) is `vestis.models.loop`, a layer below the
models; this module sits above them, beside the engine, and is what `vestis train` calls.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from vestis.errors import VestisError
from vestis.models import TrainData, create_model
from vestis.runs import RunInfo, save_run
from vestis.vision.extract import catalogue_features
from vestis.vision.trunk import TrunkSpec


def train_data(catalog, features) -> TrainData:
    """Labels as schema codes ("unspecified" = len(values)) and integer instance ids, rows as `features`; the
    garments of each image (an outfit's parts, else the item itself) as codes too."""
    schema = catalog.schema
    items = [catalog[i] for i in features.ids]
    labels = np.array([schema.encode(it.attributes) for it in items], dtype=np.int64).reshape(len(items), len(schema))
    groups: dict[str, int] = {}
    instances = np.array([groups.setdefault(it.instance_id, len(groups)) if it.instance_id else -1 for it in items], np.int64)
    garments = [np.array([schema.encode(p.attributes) for p in it.parts] if it.parts else [schema.encode(it.attributes)],
                         np.int64).reshape(-1, len(schema)) for it in items]
    return TrainData(list(features.ids), features.maps, labels, instances, schema, garments)


def train_run(model_name: str, catalog, out, spec: TrunkSpec, cache_dir, config: dict | None = None,
              split: str = "train", progress: bool = True, finetune: dict | None = None) -> RunInfo:
    """Train `model_name` on the catalogue's `split` and save the run (weights, config, schema) to `out`.
    `finetune` (options of `vestis.finetune.finetune_trunk`) first fine-tunes the trunk on that split and
    trains the head on maps from the fine-tuned trunk, which the run then carries."""
    part = catalog.split(split)
    if len(part) == 0:
        raise VestisError(f"the catalogue has no {split!r} items to train on")
    trunk_record, finetune_history, extra_files = None, None, ()
    if finetune is not None:
        from vestis.finetune import TRUNK_FILE, finetune_trunk

        weights = Path(out) / TRUNK_FILE
        finetune_history = finetune_trunk(part, spec, weights, progress=progress, **finetune)
        spec = dataclasses.replace(spec, weights=weights)  # the same levels and resolution
        trunk_record = {**spec.to_json(), "weights": TRUNK_FILE, "in_run": True}
        extra_files = (TRUNK_FILE,)
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
    return save_run(model, out, trunk=trunk_record or spec.to_json(), history=history, catalog=catalog.name,
                    extra_files=extra_files)
