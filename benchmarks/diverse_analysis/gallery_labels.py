"""Why is purity low? The gallery items' predicted labels (which decide the part rows' `part_label`, the groups'
filter) against their true subCategory."""
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from vestis.catalog import Catalog
from vestis.runs import load_run
from vestis.vision.extract import catalogue_features
from vestis.vision.trunk import TrunkSpec
from vestis.paths import default_cache_dir

run = Path(sys.argv[1])
model, info = load_run(run)
model.eval()
cat = Catalog.load(os.environ.get("DATA", "../shared/datasets/fashion-product-images-small")).split("gallery")
feats = catalogue_features(cat, TrunkSpec.from_json(info.trunk), default_cache_dir(), progress=False)
labels = list(model.labels)
attr = model.config["label_attribute"]
probs, steps = [], []
with torch.inference_mode():
    for i in range(0, len(feats.ids), 512):
        m = {k: torch.from_numpy(v[i:i + 512]).float() for k, v in feats.maps.items() if k in model.levels}
        out = model(m)
        probs.append(model.label_probabilities(out))
        steps.append(model._step_labels(out))
probs = torch.cat(probs)
steps = torch.cat(steps).numpy()
pred = model.predicted_labels(probs).numpy()
truth = [cat[i].attributes.get(attr) for i in feats.ids]
top1 = probs.argmax(1).numpy()
known = np.array([t in labels for t in truth])
t_idx = np.array([labels.index(t) if t in labels else -1 for t in truth])
print("gallery", len(truth), "with a known label", known.sum())
print("top-1 accuracy", (top1[known] == t_idx[known]).mean())
print("predicted labels per item", pred.sum(1).mean(), "exactly {true}", np.mean([pred[i].sum() == 1 and pred[i, t_idx[i]] for i in np.flatnonzero(known)]))
print("true label among predicted", np.mean([pred[i, t_idx[i]] for i in np.flatnonzero(known)]))
# per label: gallery items with a part labelled L; share whose truth is L (the filter's precision) and recall
rows = []
for j, L in enumerate(labels):
    has = (steps == j).any(1)
    n_true = int((t_idx == j).sum())
    if has.sum() == 0 and n_true == 0:
        continue
    prec = float((t_idx[has] == j).mean()) if has.any() else float("nan")
    rec = float(has[t_idx == j].mean()) if n_true else float("nan")
    wrong = Counter(truth[i] for i in np.flatnonzero(has) if t_idx[i] != j).most_common(4)
    rows.append((L, int(has.sum()), n_true, prec, rec, wrong))
for r in sorted(rows, key=lambda r: -r[1]):
    print(f"{r[0]:>20} rows {r[1]:5d} true {r[2]:5d} precision {r[3]:.3f} recall {r[4]:.3f}  wrong: {r[5]}")
