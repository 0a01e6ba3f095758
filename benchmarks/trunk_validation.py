"""Validation figures for choosing the trunk (never the query split): train a head on the train split less a
held-out validation slice, and score its attribute predictions on that slice.

    PYTHONPATH=src .venv/bin/python benchmarks/trunk_validation.py --catalog DATA [--trunk NAME]
        [--resolution 160x128] [--levels s16,s32] [--flip] [--s32-stages RUN/s32_stages.safetensors]
        [--model attribute_baseline] [--share 0.2]
        [--out runs/bench/trunks/NAME.json]

The slice is a stable pseudo-random share of the train items (crc32 of the id, the same rule and salt as
FashionSearchNet's `global_holdout`), so every trunk is scored on the same items. Per attribute: accuracy of the
arg-max over the labelled values (items whose value is unspecified are left out), and the mean over attributes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vestis.catalog import Catalog
from vestis.catalog.readers import default_attributes, id_like_attributes
from vestis.models import create_model
from vestis.models.base import run_batched
from vestis.models.fashionsearchnet import holdout_mask
from vestis.models.loop import TrainData
from vestis.paths import default_cache_dir
from vestis.train import train_data
from vestis.vision.extract import catalogue_features
from vestis.vision.trunk import TrunkSpec


def subset(data: TrainData, rows: np.ndarray) -> TrainData:
    return TrainData([data.ids[i] for i in rows], {lv: m[rows] for lv, m in data.maps.items()}, data.labels[rows],
                     data.instances[rows], data.schema)


def ridge_probe(args, spec, cat, part, feats, lam: float = 1.0) -> int:
    """Per attribute: ridge regression of the one-hot labelled value on the standardised average-pooled s32 map
    (fit rows), arg-max on the validation rows."""
    x = np.concatenate([feats.maps["s32"][i:i + 2048].astype(np.float32).mean((2, 3))
                        for i in range(0, len(feats), 2048)])
    data = train_data(part, feats)
    held = holdout_mask(data.ids, args.share)
    mu, sd = x[~held].mean(0), x[~held].std(0) + 1e-6
    x = np.concatenate([(x - mu) / sd, np.ones((len(x), 1), np.float32)], 1).astype(np.float64)
    xf, xv = x[~held], x[held]
    per = {}
    t0 = time.perf_counter()
    for k, a in enumerate(cat.schema.attributes):
        n_values = len(cat.schema.values(a))
        y = data.labels[:, k]
        fit_known, val_known = (y[~held] < n_values), (y[held] < n_values)
        xk = xf[fit_known]
        onehot = np.eye(n_values)[y[~held][fit_known]]
        w = np.linalg.solve(xk.T @ xk + lam * np.eye(x.shape[1]), xk.T @ onehot)
        pred = (xv @ w).argmax(1)
        per[a] = {"accuracy": float((pred[val_known] == y[held][val_known]).mean()), "n": int(val_known.sum())}
    result = {"trunk": spec.to_json(), "model": "ridge", "lambda": lam, "fit_items": int((~held).sum()),
              "validation_items": int(held.sum()), "share": args.share, "per_attribute": per,
              "mean_accuracy": float(np.mean([v["accuracy"] for v in per.values()])),
              "fit_seconds": time.perf_counter() - t0}
    return _report(result, args.out)


def _report(result: dict, out) -> int:
    """Print the result as JSON, and write it to `out` where given."""
    text = json.dumps(result, indent=1)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--catalog", type=Path, required=True)
    p.add_argument("--trunk", default="tf_efficientnet_lite0")
    p.add_argument("--resolution", default="160x128")
    p.add_argument("--levels", default="s16,s32")
    p.add_argument("--flip", action="store_true")
    p.add_argument("--s32-stages", type=Path, default=None,
                   help="fine-tuned stride-32 stages (a --finetune-s32 run's s32_stages.safetensors): s32 re-encoded "
                        "from the cached s16 maps with them")
    p.add_argument("--model", default="attribute_baseline",
                   help="a registered method to train, or 'ridge': a closed-form linear probe (ridge regression "
                        "onto one-hot values, arg-max) on the average-pooled s32 map, seconds instead of minutes")
    p.add_argument("--share", type=float, default=0.2)
    p.add_argument("--cache", type=Path, default=default_cache_dir())
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.resolution.lower().split("x"))
    spec = TrunkSpec(name=args.trunk, resolution=(h, w), levels=args.levels, flip=args.flip, s32_stages=args.s32_stages)
    cat = Catalog.load(args.catalog)
    cat = cat.with_attributes(default_attributes(cat))
    cat = cat.with_attributes([a for a in cat.schema.attributes if a not in id_like_attributes(cat)])
    part = cat.split("train")
    feats = catalogue_features(part, spec, args.cache, progress=False)
    channels = {lv: int(a.shape[1]) for lv, a in feats.maps.items()}
    if args.model == "ridge":
        return ridge_probe(args, spec, cat, part, feats)
    torch.manual_seed(0)
    model = create_model(args.model, cat.schema, channels, None)
    # only the levels the model reads, each copied once into its fit and validation rows (memory: the
    # machine is shared)
    feats.maps = {lv: m for lv, m in feats.maps.items() if lv in model.levels}
    data = train_data(part, feats)
    held = holdout_mask(data.ids, args.share)
    fit, val = subset(data, np.flatnonzero(~held)), subset(data, np.flatnonzero(held))
    del data, feats
    t0 = time.perf_counter()
    model.fit(fit, progress=False)
    seconds = time.perf_counter() - t0
    model.eval()
    attrs = list(cat.schema.attributes)
    probs = {a: run_batched(lambda m, a=a: model.attribute_probabilities(m)[a], val.maps) for a in attrs}
    per = {}
    for k, a in enumerate(attrs):
        y = val.labels[:, k]
        n_values = probs[a].shape[1] - 1
        known = y < n_values
        pred = probs[a][:, :n_values].argmax(1)
        per[a] = {"accuracy": float((pred[known] == y[known]).mean()), "n": int(known.sum())}
    result = {"trunk": spec.to_json(), "model": args.model, "fit_items": len(fit), "validation_items": len(val),
              "share": args.share, "per_attribute": per,
              "mean_accuracy": float(np.mean([v["accuracy"] for v in per.values()])), "fit_seconds": seconds}
    return _report(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
