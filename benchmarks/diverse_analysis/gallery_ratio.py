"""Filter precision of the part labels for the garment groups, as a function of the gallery's label ratio."""
import os
import sys
from pathlib import Path
import numpy as np, torch
from vestis.catalog import Catalog
from vestis.runs import load_run
from vestis.vision.extract import catalogue_features
from vestis.vision.trunk import TrunkSpec
from vestis.paths import default_cache_dir

model, info = load_run(Path(sys.argv[1])); model.eval()
cat = Catalog.load(os.environ.get("DATA", "../shared/datasets/fashion-product-images-small")).split("gallery")
feats = catalogue_features(cat, TrunkSpec.from_json(info.trunk), default_cache_dir(), progress=False)
labels = list(model.labels); attr = model.config["label_attribute"]
probs, scores = [], []
with torch.inference_mode():
    for i in range(0, len(feats.ids), 512):
        out = model({k: torch.from_numpy(v[i:i + 512]).float() for k, v in feats.maps.items() if k in model.levels})
        probs.append(model.label_probabilities(out)); scores.append(out["scores"][:, 1:])
probs, scores = torch.cat(probs), torch.cat(scores)
t_idx = np.array([labels.index(cat[i].attributes.get(attr)) if cat[i].attributes.get(attr) in labels else -1 for i in feats.ids])
garments = ["Topwear", "Bottomwear", "Shoes", "Bags", "Watches", "Flip Flops", "Sandal"]
for ratio in (0.3, 0.5, 0.7, 0.9, 1.0):
    allowed = probs >= ratio * probs.amax(-1, keepdim=True)
    steps = scores.masked_fill(~allowed[:, None, :], float("-inf")).argmax(-1).numpy()
    line = []
    for L in garments:
        j = labels.index(L)
        has = (steps == j).any(1)
        line.append(f"{L} {has.sum()}/{(t_idx == j).sum()} p={float((t_idx[has] == j).mean()) if has.any() else float('nan'):.3f}")
    print(ratio, f"labels/item {allowed.sum(1).float().mean():.2f}", " | ".join(line))
