"""The training pipeline: catalogue -> cached features -> fitted head -> run directory.

The loop the heads themselves use (`TrainData`, `fit_loop`, samplers) is `vestis.models.loop`, a layer below the
models; this module sits above them, beside the engine, and is what `vestis train` calls.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from vestis.errors import VestisError
from vestis.models import TrainData, create_model
from vestis.models.loop import NO_LOSS
from vestis.runs import RunInfo, save_run
from vestis.vision.extract import catalogue_features
from vestis.vision.trunk import TrunkSpec, WeightsError, file_sha256


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


MIX_DOMAIN = 1  # a second catalogue's rows (`--mix`)
VIEWS_DOMAIN = 2  # shopper-photo views of the training packshots (`--shopper-views`)


def join_train_data(data: TrainData, rows: TrainData, domain: int) -> TrainData:
    """`data` followed by `rows` as domain `domain` (the first catalogue's own rows are domain 0 and come first,
    what `TrainData.n_primary` and `primary()` rely on). Label sets of either side are kept (rows without one
    get an all-False set); garments are kept where both sides have them."""
    n0, n1 = len(data), len(rows)
    d0 = data.domains if data.domains is not None else np.zeros(n0, np.int64)
    sets = {}
    for a in set(data.label_sets) | set(rows.label_sets):
        width = next(m.shape[1] for m in (data.label_sets.get(a), rows.label_sets.get(a)) if m is not None)
        sets[a] = np.concatenate([data.label_sets.get(a, np.zeros((n0, width), bool)),
                                  rows.label_sets.get(a, np.zeros((n1, width), bool))])
    garments = (data.garments + rows.garments) if data.garments is not None and rows.garments is not None else None
    return TrainData(list(data.ids) + list(rows.ids), {lv: np.concatenate([data.maps[lv], rows.maps[lv]]) for lv in data.maps},
                     np.concatenate([data.labels, rows.labels]), np.concatenate([data.instances, rows.instances]),
                     data.schema, garments=garments, domains=np.concatenate([d0, np.full(n1, domain, np.int64)]),
                     label_sets=sets)


def mix_train_data(data: TrainData, other, features, mapping) -> tuple[TrainData, dict]:
    """`data` (the first catalogue's rows) followed by a second catalogue's rows (`other`, its `features`), whose
    labels come through `mapping` (`vestis.catalog.mapping.LabelMapping`): its source attribute's value -> a set of
    values of the first catalogue's target attribute. Every other attribute of the second catalogue's rows is
    NO_LOSS (unknown, not "unspecified": it carries no loss); a set of one value is a plain label, a larger set a
    set-valued target (`TrainData.label_sets`, the loss on the set's summed probability). Rows whose source value
    the mapping does not name are left out. Returns (mixed data, a record of the second catalogue for the run)."""
    schema = data.schema
    a = mapping.target_attribute
    if a not in schema:
        raise VestisError(f"the mapping's target attribute {a!r} is not one of the run's attributes "
                          f"({', '.join(schema.attributes)})")
    values = schema.values(a)
    mapping.check(values)
    col = schema.attributes.index(a)
    keep, codes, sets = [], [], []
    for r, iid in enumerate(features.ids):
        accepted = mapping.targets(other[iid].attributes.get(mapping.source_attribute))
        if accepted is None:
            continue
        keep.append(r)
        codes.append(schema.index(a, accepted[0]) if len(accepted) == 1 else NO_LOSS)
        m = np.zeros(len(values) + 1, bool)
        if len(accepted) > 1:
            m[[schema.index(a, v) for v in accepted]] = True
        sets.append(m)
    if not keep:
        raise VestisError(f"no item of {other.name or 'the mixed-in catalogue'} has a {mapping.source_attribute} "
                          "value the mapping names")
    keep = np.asarray(keep)
    n1 = len(keep)
    labels = np.full((n1, len(schema)), NO_LOSS, np.int64)
    labels[:, col] = codes
    rows = TrainData([features.ids[r] for r in keep], {lv: m[keep] for lv, m in features.maps.items()}, labels,
                     np.full(n1, -1, np.int64), schema, label_sets={col: np.stack(sets)})
    mixed = join_train_data(data, rows, MIX_DOMAIN)
    record = {"catalog": other.name, "source": str(other.source) if getattr(other, "source", None) else None,
              "items": n1, "left_out_unmapped": len(features.ids) - n1, "mapping": mapping.to_json(),
              "mapping_file": mapping.path, "balance": "equal share of each catalogue per batch"}
    return mixed, record


def _with_shopper_views(data: TrainData, part, spec: TrunkSpec, cache_dir, k: int, seed: int,
                        progress: bool) -> tuple[TrainData, dict]:
    """`data` followed by k shopper-photo views of each of its images (domain VIEWS_DOMAIN): made where missing,
    encoded where not cached, each with its image's labels and instance (so a view and its packshot are the same
    product wherever the catalogue names products)."""
    import time

    from vestis.vision.shopper_views import shopper_view_catalog

    have = set(data.ids)  # the images that have features: only those get views
    views, record = shopper_view_catalog(part.filter(lambda it: it.id in have), k, cache_dir, seed=seed,
                                         progress=progress)
    t0 = time.perf_counter()
    feats = catalogue_features(views, spec, cache_dir, progress=progress)
    record["encode_load_s"] = round(time.perf_counter() - t0, 1)
    if len(feats) == 0:
        raise VestisError(f"none of the {len(views)} shopper views has features ({feats.describe()})")
    rows = train_data(views, feats)
    source_row = {iid: r for r, iid in enumerate(data.ids)}
    rows.instances = np.array([data.instances[source_row[v.rsplit("~s", 1)[0]]] for v in feats.ids], np.int64)
    record["views_trained_on"] = len(rows)
    return join_train_data(data, rows, VIEWS_DOMAIN), record


def _reused_s32_stages(source: Path, spec: TrunkSpec, out: Path) -> Path:
    """Check that `source` holds stride-32 stages that fit `spec`'s trunk (refused before any training), and copy
    it into the run as its stages file. Returns the copy."""
    from vestis.finetune_s32 import S32_FILE
    from vestis.vision.trunk import build_trunk

    if not source.is_file():
        raise VestisError(f"--s32-stages: no such file {source}")
    try:
        build_trunk(dataclasses.replace(spec, s32_stages=source, flip=False))  # loads and checks every tensor
    except WeightsError as e:
        raise VestisError(f"--s32-stages {source}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    copy = out / S32_FILE
    if copy.resolve() != source.resolve():
        shutil.copyfile(source, copy)
    return copy


def train_run(model_name: str, catalog, out, spec: TrunkSpec, cache_dir, config: dict | None = None,
              split: str = "train", progress: bool = True, finetune: dict | None = None,
              mix=None, shopper_views: int = 0, views_seed: int = 0, finetune_s32: dict | None = None,
              s32_stages=None) -> RunInfo:
    """Train `model_name` on the catalogue's `split` and save the run (weights, config, schema) to `out`.
    `finetune` (options of `vestis.finetune.finetune_trunk`) first fine-tunes the trunk on that split and
    trains the head on maps from the fine-tuned trunk, which the run then carries. `mix`: (second catalogue,
    LabelMapping): its `split` items join the training through the mapping (`mix_train_data`), balanced per
    batch; the run records both catalogues. `shopper_views` K > 0: K seeded shopper-photo views of every training
    image join as a domain of their own (`vestis.vision.shopper_views`), with the image's labels and instance.
    `finetune_s32` (options of `vestis.finetune_s32.finetune_s32_stages`): first fine-tune the trunk's stride-32
    stages on that split's cached s16 maps; the head then trains on s32 maps re-encoded by them, and the run
    carries them (`s32_stages.safetensors`). `s32_stages`: the stages file of an earlier `finetune_s32` run, reused
    (copied into the run) instead of fine-tuning again, so several heads can share one fine-tuning and its cache."""
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
    s32_history, stages_file = None, None
    if s32_stages is not None:
        if finetune is not None or finetune_s32 is not None:
            raise VestisError("--s32-stages reuses fine-tuned stages: it does not go with --finetune-trunk or "
                              "--finetune-s32")
        stages_file = _reused_s32_stages(Path(s32_stages), spec, Path(out))
        s32_history = {"reused": str(s32_stages), "sha256": file_sha256(stages_file)}
    elif finetune_s32 is not None:
        from vestis.finetune_s32 import S32_FILE, finetune_s32_stages

        if finetune is not None:
            raise VestisError("--finetune-trunk and --finetune-s32 do not go together (the first fine-tunes the "
                              "stride-32 stages from the images already)")
        stages_file = Path(out) / S32_FILE
        s32_history = finetune_s32_stages(part, spec, cache_dir, stages_file, progress=progress, **finetune_s32)
    if stages_file is not None:
        spec = dataclasses.replace(spec, s32_stages=stages_file)
        trunk_record = {**spec.to_json(), "s32_stages": stages_file.name, "s32_stages_in_run": True}
        extra_files = (stages_file.name,)
    feats = catalogue_features(part, spec, cache_dir, progress=progress)
    if len(feats) == 0:
        raise VestisError(f"none of the {len(part)} {split} items has features ({feats.describe()})")
    data = train_data(part, feats)
    channels = {lv: int(a.shape[1]) for lv, a in feats.maps.items()}
    model = create_model(model_name, catalog.schema, channels, config)
    views_record = None
    if shopper_views:
        data, views_record = _with_shopper_views(data, part, spec, cache_dir, shopper_views, views_seed, progress)
    mixed = None
    if mix is not None:
        other, mapping = mix
        other_part = other.split(split)
        other_feats = catalogue_features(other_part, spec, cache_dir, progress=progress)
        if len(other_feats) == 0:
            raise VestisError(f"none of the {len(other_part)} {split} items of the mixed-in catalogue has features")
        if not model.predicts_attributes:
            raise VestisError(f"model {model_name} does not classify attributes, so a mixed-in catalogue's labels "
                              "cannot train it")
        data, mixed = mix_train_data(data, other_part, other_feats, mapping)
    history = model.fit(data, progress=progress)
    model.eval()
    history["train_items"] = data.n_primary
    if mixed is not None:
        history["mix"] = mixed
    if views_record is not None:
        history["shopper_views"] = views_record
    if finetune_history is not None:
        history["finetune_trunk"] = finetune_history
    if s32_history is not None:
        history["finetune_s32"] = s32_history
    name = catalog.name if mixed is None else f"{catalog.name} + {mixed['catalog']}"
    return save_run(model, out, trunk=trunk_record or spec.to_json(), history=history, catalog=name,
                    extra_files=extra_files)
