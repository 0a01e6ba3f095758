"""Which step should give a group its box and probe vector? The raw score's argmax over steps (today) against the
step's own softmax; IoU of the chosen step's box with the true box of the garment of that label."""
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vestis.eval import read_queries
from vestis.eval.metrics import box_iou
from vestis.engine import Engine
from vestis.vision.preprocess import image_geometry, input_box_in_photo

engine = Engine.load(Path(sys.argv[1]), Path(sys.argv[2]))
model = engine.model
qs = read_queries(sys.argv[3])
maps = engine.encode_images([Path(q["image"]) for q in qs])
with torch.inference_mode():
    out = model(maps)
    probs = model.label_probabilities(out)
    chosen = model.predicted_labels(probs)
    raw = out["scores"][:, 1:]
    soft = F.softmax(raw, -1)
    boxes = model.boxes(out, model.stride)[:, 1:].numpy()
labels = list(model.labels)
res = {"raw": [], "softmax": [], "best_possible": []}
same_step = []
for i, q in enumerate(qs):
    geo = image_geometry(q["image"], engine.spec.resolution)
    cats, tb = q["target"]["subCategory"], q["boxes"]
    for j in np.flatnonzero(chosen[i].numpy()):
        L = labels[j]
        if L not in cats:
            continue
        truth = [tb[g] for g, c in enumerate(cats) if c == L]
        pb = [input_box_in_photo(b, geo) for b in boxes[i]]
        ious = [max(box_iou(b, t) for t in truth) for b in pb]
        res["raw"].append(ious[int(raw[i, :, j].argmax())])
        res["softmax"].append(ious[int(soft[i, :, j].argmax())])
        res["best_possible"].append(max(ious))
    steps_used = [int(raw[i, :, j].argmax()) for j in np.flatnonzero(chosen[i].numpy())]
    same_step.append(len(set(steps_used)) == 1 and len(steps_used) > 1)
for k, v in res.items():
    print(k, "mean IoU", round(float(np.mean(v)), 4), "share >= 0.3", round(float(np.mean(np.array(v) >= 0.3)), 4), len(v))
print("queries whose groups all come from one step (raw)", np.mean(same_step))
print("step scales (sx, sy) mean per step", out["params"][:, 1:, :2].mean(0).tolist())
print("step of the raw argmax, histogram", np.bincount(raw.argmax(1).flatten().numpy(), minlength=raw.shape[1]).tolist())
