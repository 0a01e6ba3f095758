"""Fine-tuning the trunk's stride-32 stages on the cached stride-16 maps (`vestis train --finetune-s32`).

The s16 map is exactly the input of the stride-32 stages and the head conv (`vision.trunk.S32Stages`), so those
can be trained from the feature cache without touching an image: a CPU does an epoch over tens of thousands of
items in minutes, where fine-tuning from the photos (`vestis.finetune`) takes hours.

  * Starting point: the ImageNet weights. Loss: one linear classifier per attribute on the average-pooled s32
    map, the multi-attribute cross-entropy (`losses.multi_attribute_ce`; "unspecified" is a class of its own,
    NO_LOSS codes carry no loss), as the trunk fine-tuning's stage 1 and FashionSearchNet's L_C.
  * Batch-norm statistics stay frozen (eval mode; its scale and shift train), as in `vestis.finetune`.
  * Epoch 0 is the frozen stages with classifiers fitted on their pooled maps (a linear probe), so the
    classifiers do not start random and pull the stages with random gradients (linear probing, then fine-tuning).
  * The epoch is chosen on a validation slice of the training split: the stable 20 % slice of FashionSearchNet's
    `global_holdout` and benchmarks/trunk_validation.py (crc32 of the id). The lowest validation loss wins, epoch 0
    included: when fine-tuning does not help, the saved stages are the ImageNet ones.
The chosen stages are saved as safetensors (their tensors only, under the trunk's timm names); the run records
them in its trunk spec, whose cache key then carries their sha256 (`vision.s32_stages`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from vestis.errors import VestisError
from vestis.fsutil import atomic_path

S32_FILE = "s32_stages.safetensors"
HOLDOUT = 0.2
MIN_PROBE_STEPS = 1000  # the linear probe of epoch 0: at least this many steps of 256 items


def _accuracy(logits: list[torch.Tensor], labels: torch.Tensor, attributes, n_values) -> dict[str, float]:
    """Per attribute: arg-max accuracy over the labelled values on the rows whose value is labelled (as
    benchmarks/trunk_validation.py scores trunks)."""
    out = {}
    for k, a in enumerate(attributes):
        y = labels[:, k]
        known = (y >= 0) & (y < n_values[k])
        pred = logits[k][:, :n_values[k]].argmax(1)
        out[a] = float((pred[known] == y[known]).float().mean()) if known.any() else float("nan")
    return out


def finetune_s32_stages(catalog, spec, cache_dir, out_file: Path, *, epochs: int = 4, lr: float = 1e-4,
                        head_lr: float = 1e-3, batch_size: int = 64, probe_epochs: int = 20, probe_steps: int | None = None,
                        holdout: float = HOLDOUT, seed: int = 0, progress: bool = True) -> dict:
    """Fine-tune `spec`'s stride-32 stages on `catalog` (its items, labels from its schema) from the cached s16
    maps, choose the epoch on the validation slice, save the chosen stages to `out_file`. Returns the history."""
    from safetensors.torch import save_file
    from tqdm import tqdm

    from vestis.losses import multi_attribute_ce
    from vestis.models.fashionsearchnet import holdout_mask
    from vestis.models.layers import AttributeClassifiers
    from vestis.models.loop import NO_LOSS
    from vestis.vision.s32_stages import base_spec
    from vestis.vision.extract import catalogue_features
    from vestis.vision.trunk import S32Stages, build_trunk

    if epochs < 0 or batch_size < 1:
        raise VestisError(f"--finetune-s32: epochs must be >= 0 and the batch size >= 1 (got {epochs}, {batch_size})")
    t_start = time.perf_counter()
    frozen = dataclasses.replace(spec, s32_stages=None)
    feats = catalogue_features(catalog, base_spec(frozen), cache_dir, progress=progress)
    if len(feats) == 0:
        raise VestisError(f"fine-tuning the stride-32 stages: no item has features ({feats.describe()})")
    s16 = feats.maps.pop("s16")
    feats.maps.clear()  # the other levels are not needed (memory: the machine is shared)
    schema = catalog.schema
    labels = torch.from_numpy(np.array([schema.encode(catalog[i].attributes) for i in feats.ids], np.int64)
                              .reshape(len(feats), len(schema)))
    held = holdout_mask(feats.ids, holdout)
    fit, val = np.flatnonzero(~held), np.flatnonzero(held)
    if len(fit) == 0 or len(val) == 0:
        raise VestisError(f"fine-tuning the stride-32 stages needs items both in and out of the {holdout:.0%} "
                          f"validation slice ({len(fit)} and {len(val)} of {len(feats)})")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    stages = S32Stages(build_trunk(dataclasses.replace(frozen, levels=("s32",))).model).eval()  # frozen BN stats
    attributes = list(schema.attributes)
    n_values = [len(schema.values(a)) for a in attributes]
    probe_dim = int(stages.conv_head.out_channels)
    heads = AttributeClassifiers(probe_dim, [n + 1 for n in n_values])

    def rows_tensor(rows) -> torch.Tensor:
        return torch.from_numpy(np.asarray(s16[rows], np.float32))

    def pooled(rows) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([stages(rows_tensor(rows[i:i + 256])).mean((2, 3)) for i in range(0, len(rows), 256)])

    def loss_of(logits, y) -> torch.Tensor:
        return multi_attribute_ce(logits, y, ignore_index=NO_LOSS)

    def validate() -> tuple[float, dict]:
        heads.eval()
        with torch.inference_mode():
            x = pooled(val)
            logits = heads(x)
            y = labels[val]
            return float(loss_of(logits, y)), _accuracy(logits, y, attributes, n_values)

    # epoch 0: the frozen stages and a linear probe on their pooled maps
    t0 = time.perf_counter()
    x_fit = pooled(fit)
    opt = torch.optim.AdamW(heads.parameters(), lr=head_lr, weight_decay=1e-4)
    heads.train()
    steps, per_epoch = 0, -(-len(fit) // 256)
    if probe_steps is None:  # near convergence, also on a small catalogue
        probe_steps = max(probe_epochs * per_epoch, MIN_PROBE_STEPS)
    while steps < probe_steps:
        order = rng.permutation(len(fit))
        for i in range(0, len(order), 256):
            b = order[i:i + 256]
            loss = loss_of(heads(x_fit[b]), labels[fit[b]])
            opt.zero_grad()
            loss.backward()
            opt.step()
        steps += per_epoch
    del x_fit
    v_loss, v_acc = validate()
    history = {"val_loss": [v_loss], "val_accuracy": [v_acc], "fit_loss": [None], "epoch_seconds": [],
               "probe_seconds": round(time.perf_counter() - t0, 1), "probe_steps": steps}
    if progress:
        print(f"fine-tune s32 stages: epoch 0 (frozen stages, linear probe of {steps} steps): validation loss "
              f"{v_loss:.4f}, validation accuracy " + ", ".join(f"{a} {v:.3f}" for a, v in v_acc.items()))
    best = (v_loss, 0, {k: v.clone() for k, v in stages.state_dict().items()})

    params = list(stages.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": params, "lr": lr}, {"params": heads.parameters(), "lr": head_lr}],
                            weight_decay=1e-4)
    with torch.enable_grad():
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            heads.train()  # stages stay in eval mode: frozen batch-norm statistics
            order = fit[rng.permutation(len(fit))]
            losses = []
            bar = tqdm(range(0, len(order), batch_size), desc=f"fine-tune s32 stages {epoch}/{epochs}",
                       disable=not progress, unit="batch")
            for i in bar:
                b = order[i:i + batch_size]
                loss = loss_of(heads(stages(rows_tensor(b)).mean((2, 3))), labels[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
            v_loss, v_acc = validate()
            history["fit_loss"].append(float(np.mean(losses)))
            history["val_loss"].append(v_loss)
            history["val_accuracy"].append(v_acc)
            history["epoch_seconds"].append(round(time.perf_counter() - t0, 1))
            if progress:
                print(f"fine-tune s32 stages: epoch {epoch}: fit loss {np.mean(losses):.4f}, validation loss "
                      f"{v_loss:.4f} (epoch 0: {history['val_loss'][0]:.4f}), validation accuracy "
                      + ", ".join(f"{a} {v:.3f}" for a, v in v_acc.items()))
            if v_loss < best[0]:
                best = (v_loss, epoch, {k: v.detach().clone() for k, v in stages.state_dict().items()})
    stages.load_state_dict(best[2])
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_file) as tmp:
        save_file(stages.state_dict_timm(), str(tmp))
    history.update(best_epoch=best[1], epochs=epochs, lr=lr, head_lr=head_lr, batch_size=batch_size,
                   probe_epochs=probe_epochs, fit_items=int(len(fit)), validation_items=int(len(val)), holdout=holdout,
                   seconds=round(time.perf_counter() - t_start, 1))
    return history
