"""Losses of the papers, as small composable functions on embeddings and logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def set_ce(logits: torch.Tensor, accepted: torch.Tensor) -> torch.Tensor:
    """Per row, -log of the summed probability of the accepted classes (a set-valued target: "this photo is one
    of Tshirts, Sweatshirts, Sweaters, Tops"): logsumexp(all logits) - logsumexp(accepted logits). For a set of one
    class it is the cross-entropy; the model is free to split the mass inside the set. accepted: (N, C) bool, every
    row with at least one True."""
    masked = logits.masked_fill(~accepted, float("-inf"))
    return torch.logsumexp(logits, -1) - torch.logsumexp(masked, -1)


def multi_attribute_ce(logits: list[torch.Tensor], labels: torch.Tensor, ignore_index: int | None = None,
                       reduction: str = "mean", sets: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The cross-entropy of each attribute's classifier (each averaged over the batch), combined over attributes
    by `reduction`: "mean" (default; FashionSearchNet L_C, eq. 1) or "sum" (AMNet's L_a, eq. 4, sums over the
    attributes).

    labels[:, a] indexes logits[a]'s classes; `ignore_index` (e.g. -1) drops unlabelled entries (an attribute
    with no labelled entry in the batch adds nothing to either reduction). `sets[a]` (N, C) bool: rows with a
    set-valued target for attribute a (their label is `ignore_index`) add `set_ce`; the attribute's loss is the
    mean over its plain and set-valued rows together.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    losses = []
    for a, lg in enumerate(logits):
        y = labels[:, a]
        acc = (sets or {}).get(a)
        if acc is not None:
            has_set = acc.any(1)
            keep = (y != ignore_index) & ~has_set if ignore_index is not None else ~has_set
            parts = [F.cross_entropy(lg[keep], y[keep], reduction="sum")] if keep.any() else []
            if has_set.any():
                parts.append(set_ce(lg[has_set], acc[has_set]).sum())
            n = int(keep.sum()) + int(has_set.sum())
            if n:
                losses.append(torch.stack(parts).sum() / n)
            continue
        if ignore_index is not None:
            keep = y != ignore_index
            if not keep.any():
                continue
            lg, y = lg[keep], y[keep]
        losses.append(F.cross_entropy(lg, y))
    if not losses:
        return logits[0].sum() * 0
    stacked = torch.stack(losses)
    return stacked.sum() if reduction == "sum" else stacked.mean()


def triplet_margin(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float,
                   squared: bool = False) -> torch.Tensor:
    """max(0, d(a,p) - d(a,n) + m) with Euclidean distance (AMNet eq. 5 uses squared distances)."""
    dp = (anchor - positive).pow(2).sum(-1)
    dn = (anchor - negative).pow(2).sum(-1)
    if not squared:
        dp, dn = dp.clamp_min(1e-12).sqrt(), dn.clamp_min(1e-12).sqrt()
    return F.relu(dp - dn + margin).mean()


def soft_triplet(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """FashionSearchNet's soft-triplet ranking loss (eqs. 3-5): softmax over the two distances,

    d+ = e^{|a-p|} / (e^{|a-p|} + e^{|a-n|}), d- likewise, loss = ||(d+, d- - 1)||^2 = 2 d+^2,
    which pushes d(a,p) well below d(a,n) without a margin to tune.
    """
    dp = (anchor - positive).norm(dim=-1)
    dn = (anchor - negative).norm(dim=-1)
    d = torch.softmax(torch.stack([dp, dn], dim=-1), dim=-1)
    return (d[:, 0].pow(2) + (d[:, 1] - 1).pow(2)).mean()


def batch_hard_triplet(embeddings: torch.Tensor, groups: torch.Tensor, margin: float,
                       squared: bool = False) -> torch.Tensor:
    """Triplet loss with the hardest positive and negative in the batch for each anchor (Park et al.'s
    instance-similarity loss on P x K batches; with category ids as groups, their object-similarity loss).
    Anchors without a positive or a negative are skipped. `squared`: squared Euclidean distances (Park et al.'s
    eq. 1) instead of Euclidean ones."""
    d = torch.cdist(embeddings, embeddings)
    if squared:
        d = d.pow(2)
    same = groups[:, None] == groups[None, :]
    eye = torch.eye(len(groups), dtype=torch.bool, device=embeddings.device)
    pos_mask = same & ~eye
    has_pos = pos_mask.any(1) & (~same).any(1)
    if not has_pos.any():
        return embeddings.sum() * 0
    hardest_pos = (d * pos_mask).max(1).values
    hardest_neg = d.masked_fill(same, float("inf")).min(1).values
    return F.relu(hardest_pos - hardest_neg + margin)[has_pos].mean()


def supervised_contrastive(embeddings: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """Khosla et al.'s supervised contrastive loss (SupCon, "L_out"): for each anchor with a positive, the mean over
    its positives p of -log(exp(z.z_p / t) / sum over the other samples a of exp(z.z_a / t)); embeddings unit length.
    Unlike a batch-hard triplet from a random start it has no collapsed minimum (every vector the same scores
    log(n - 1), not 0). Anchors without a positive are skipped."""
    sim = embeddings @ embeddings.T / temperature
    eye = torch.eye(len(groups), dtype=torch.bool, device=embeddings.device)
    logp = sim.masked_fill(eye, float("-inf")).log_softmax(1)
    pos = (groups[:, None] == groups[None, :]) & ~eye
    has = pos.any(1)
    if not has.any():
        return embeddings.sum() * 0
    per = -(logp.masked_fill(~pos, 0).sum(1)[has] / pos.sum(1)[has])
    return per.mean()
