"""Optional trunk fine-tuning (`vestis train --finetune-trunk`), for users with time or an accelerator.

By default the trunk is frozen and every method trains on cached feature maps (DESIGN.md). With the flag,
training has two stages:
  1. the last `blocks` stages of the trunk (plus its final 1x1 conv) are fine-tuned on the catalogue's
     training images with one linear classifier per attribute on the pooled stride-32 map and the
     multi-attribute classification loss (FashionSearchNet's L_C, eq. 1; AMNet's attribute branches);
     batch-norm statistics stay frozen (small batches), images are letterboxed as for extraction and
     flipped left-right at random;
  2. the fine-tuned weights are saved in the run (`trunk.safetensors`, timm names), the catalogue is
     re-encoded with them (a new feature-cache key, since the weights hash changes) and the method's head
     trains on those maps exactly as without the flag.
Indexing and search with the run then use the fine-tuned trunk automatically (the run records it).
On 2 CPU cores this costs roughly a forward and backward pass of the trunk per image and epoch, on top of
re-encoding the catalogue: minutes for a few thousand images, hours for tens of thousands.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from vestis.errors import VestisError
from vestis.fsutil import atomic_path

TRUNK_FILE = "trunk.safetensors"


def _trainable_tail(model: torch.nn.Module, blocks: int) -> list[torch.nn.Parameter]:
    """Unfreeze the last `blocks` stages of a timm EfficientNet-style trunk and its head conv; return them."""
    model.requires_grad_(False)
    stages = getattr(model, "blocks", None)
    if stages is None:
        raise VestisError("trunk fine-tuning needs a timm EfficientNet-style trunk (with .blocks)")
    parts = list(stages)[len(stages) - max(0, min(blocks, len(stages))):]
    parts += [m for m in (getattr(model, "conv_head", None), getattr(model, "bn2", None)) if m is not None]
    params = []
    for p in parts:
        for q in p.parameters():
            q.requires_grad_(True)
            params.append(q)
    return params


def finetune_trunk(catalog, spec, out_weights: Path, *, epochs: int = 2, blocks: int = 2, lr: float = 1e-4,
                   batch_size: int = 32, seed: int = 0, device: str | None = None, progress: bool = True) -> dict:
    """Fine-tune `spec`'s trunk on `catalog` (its training items; labels from its schema) and save the
    weights to `out_weights` (safetensors, timm state-dict names). Returns a small history."""
    import time

    from safetensors.torch import save_file
    from tqdm import tqdm

    from vestis.losses import multi_attribute_ce
    from vestis.models.layers import AttributeClassifiers, pool_maps
    from vestis.images import ImageReadError
    from vestis.vision.preprocess import load_letterboxed, normalize
    from vestis.vision.trunk import build_trunk

    items = [it for it in catalog if it.image is not None and Path(it.image).is_file()]
    if not items:
        raise VestisError("trunk fine-tuning: no training item has an image file")
    schema = catalog.schema
    labels = torch.tensor(np.array([schema.encode(it.attributes) for it in items], np.int64).reshape(len(items), -1))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    trunk = build_trunk(dataclasses.replace(spec, levels=("s32",)))  # the classifiers read the pooled s32 map only
    params = _trainable_tail(trunk.model, blocks)
    trunk.model.eval()  # frozen batch-norm statistics; gradients still flow through the unfrozen weights
    heads = AttributeClassifiers(trunk.channels["s32"], [len(schema.values(a)) + 1 for a in schema.attributes])
    trunk.to(device)
    heads.to(device)
    opt = torch.optim.AdamW([{"params": params, "lr": lr}, {"params": heads.parameters(), "lr": lr * 10}],
                            weight_decay=1e-4)
    history = {"loss": [], "skipped": 0}
    t0 = time.perf_counter()
    with torch.enable_grad():  # even when the caller runs under no_grad / inference settings
        for epoch in range(epochs):
            order = rng.permutation(len(items))
            losses = []
            bar = tqdm(range(0, len(order), batch_size), desc=f"fine-tune trunk {epoch + 1}/{epochs}", disable=not progress,
                       unit="batch")
            for start in bar:
                rows, pics = [], []
                for i in order[start:start + batch_size]:
                    try:
                        arr = load_letterboxed(items[i].image, spec.resolution)[0]
                    except ImageReadError:
                        history["skipped"] += 1
                        continue
                    pics.append(arr[:, ::-1] if rng.random() < 0.5 else arr)
                    rows.append(i)
                if not rows:
                    continue
                x = normalize(np.stack(pics), trunk.mean, trunk.std).to(device)
                (s32,) = trunk(x)
                loss = multi_attribute_ce(heads(pool_maps({"s32": s32})), labels[rows].to(device))
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            history["loss"].append(float(np.mean(losses)) if losses else float("nan"))
    history["seconds"] = time.perf_counter() - t0
    history.update(epochs=epochs, blocks=blocks, lr=lr, batch_size=batch_size, images=len(items), device=device)
    out_weights = Path(out_weights)
    out_weights.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_weights) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in trunk.model.state_dict().items()}, str(tmp))
    return history
