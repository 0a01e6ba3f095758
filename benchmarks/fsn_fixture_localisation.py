"""Where FashionSearchNet's AAM boxes land on the unit-test fixture (issue 14;
`test_trained_boxes_find_the_parts_of_the_fixture`). For each seed and map size: the share of unseen items whose
colour box is centred in the top half and sleeve box in the bottom half (all items, and the items with a known
sleeve), box modes minmax / paper, under several CAMs; the boxes' mean area; the accuracy of the trained GAP
classifier on the features of each half alone (evidence spread by the extra convs shows up as accuracy above
chance on the wrong half). --weights: how far the classifier weights moved from their initialisation, per group
of feature channels (colour- / sleeve-relevant: correlation ratio > 0.5), and the CAM's level in the other half
as a share of its own half's, split into the initial weights' part and the learned part. --combos: the shares
per (colour, sleeve) pair. --size 4 with the defaults is the 4 x 4 `trained` fixture model exactly; the test's
localisation model is --size 16 --epochs-cls 50 --lr 1e-2 --epochs 0 --global-epochs 0.

CAMs (--cams): "raw" w_c . f (the model's); "centred" (w_c - mean over all classes) . f (softmax's free shift
removed); "known" (w_c - mean over the known values) . f ("unspecified" left out of the mean); "runnerup"
(w_c - w_r) . f, r the second most confident known value.

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fsn_fixture_localisation.py --size 4 --seeds 0 1 2
    # training options: --n-train 300 --epochs-cls 2 --epochs 4 --global-epochs 2 --lr 2e-3 --weight-decay 1e-4
    #                   --zero-head --frozen --level fuse --threshold 0.2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vestis.models import create_model

# the test's fixture itself (`_data(n, seed, size)`), so this script measures exactly what the test checks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_model_fashionsearchnet import CH, SCHEMA, _data as fixture  # noqa: E402

CONFIG = {"width": 16, "reduce": 8, "dim": 8, "roi": 2, "batch_size": 64, "epochs_cls": 2, "epochs": 4,
          "global_epochs": 2, "global_steps": 10, "global_batch": 64}  # the test's `trained` fixture model
CAMS = ("raw", "centred", "known", "runnerup")


def cam_weights(weight: torch.Tensor, logits: torch.Tensor, kind: str) -> torch.Tensor:
    """(N, K) per-item CAM weights of the most confident known value (the model's AAM class) under `kind`."""
    known = logits[:, :-1]
    top2 = known.topk(2, -1).indices
    c = top2[:, 0]
    if kind == "raw":
        return weight[c]
    if kind == "centred":
        return weight[c] - weight.mean(0)
    if kind == "known":
        return weight[c] - weight[:-1].mean(0)
    if kind == "runnerup":
        return weight[c] - weight[top2[:, 1]]
    raise ValueError(kind)


def relevance(f: torch.Tensor, labels: np.ndarray, size: int) -> np.ndarray:
    """(2, K) correlation ratio eta^2 of each feature channel's half-mean with the attribute: colour on the
    top half's mean, sleeve on the bottom half's."""
    out = []
    for a, part in ((0, f[:, :, :size // 2]), (1, f[:, :, size // 2:])):
        x = part.mean((2, 3)).numpy()
        y = labels[:, a]
        total = ((x - x.mean(0)) ** 2).sum(0) + 1e-12
        between = sum((y == v).sum() * (x[y == v].mean(0) - x.mean(0)) ** 2 for v in np.unique(y))
        out.append(between / total)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-train", type=int, default=300)
    ap.add_argument("--epochs-cls", type=int, default=CONFIG["epochs_cls"])
    ap.add_argument("--epochs", type=int, default=CONFIG["epochs"])
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--level", default="fuse")
    ap.add_argument("--threshold", type=float, default=0.2)
    ap.add_argument("--global-epochs", type=int, default=CONFIG["global_epochs"])
    ap.add_argument("--frozen", action="store_true", help="finetune: false (the convs and GAP classifiers frozen "
                    "after stage 1, so the boxes are stage 1's)")
    ap.add_argument("--combos", action="store_true", help="the box shares per (colour, sleeve) of the items")
    ap.add_argument("--zero-head", action="store_true", help="zero the GAP classifiers' weights before training")
    ap.add_argument("--cams", nargs="+", default=["raw", "centred"], choices=CAMS)
    ap.add_argument("--weights", action="store_true", help="where the CAM's weight goes (relevant channels)")
    ap.add_argument("--profile", action="store_true", help="the mean min-max-normalised CAM per row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    size = args.size
    cfg = {**CONFIG, "epochs_cls": args.epochs_cls, "epochs": args.epochs, "lr": args.lr,
           "weight_decay": args.weight_decay, "level": args.level, "threshold": args.threshold,
           "global_epochs": args.global_epochs, "finetune": not args.frozen}
    summary = {}
    for seed in args.seeds:
        torch.manual_seed(seed)
        trained = create_model("fashionsearchnet", SCHEMA, CH, {**cfg, "seed": seed})
        if args.zero_head:
            with torch.no_grad():
                for h in trained.classifiers.heads:
                    h.weight.zero_()
        init = [h.weight.detach().clone() for h in trained.classifiers.heads]
        t0 = time.perf_counter()
        trained.fit(fixture(args.n_train, seed, size), progress=False)
        secs = time.perf_counter() - t0
        test = fixture(200, 2, size)
        x = {k: torch.from_numpy(v.astype(np.float32)) for k, v in test.maps.items()}
        trained.eval()
        with torch.no_grad():
            f = trained.features(x)
            logits = trained.logits(f)
        for mode in ("minmax", "paper"):
            m = create_model("fashionsearchnet", SCHEMA, CH, {**cfg, "box_mode": mode}).eval()
            m.load_state_dict(trained.state_dict())
            for kind in args.cams:
                with torch.no_grad():
                    cams = torch.stack([torch.einsum("nk,nkhw->nhw", cam_weights(h.weight, lg, kind), f)
                                        for h, lg in zip(m.classifiers.heads, logits)], 1)
                    b = m.fit_boxes(cams, args.threshold)
                cy = (b[..., 1] + b[..., 3]) / 2
                area = ((b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])).mean(0) / size ** 2
                top, bottom = float((cy[:, 0] < size / 2).float().mean()), float((cy[:, 1] > size / 2).float().mean())
                known = torch.from_numpy(test.labels[:, 1] < 2)  # sleeve code 2 = "unspecified"
                bottom_known = float((cy[known, 1] > size / 2).float().mean())
                summary.setdefault((mode, kind), []).append((top, bottom, bottom_known))
                print(f"size {size} seed {seed} {mode:6s} {kind:8s} CAM: colour box in the top half {top:.2f}, "
                      f"sleeve box in the bottom half {bottom:.2f} (items with a known sleeve {bottom_known:.2f}); "
                      f"box area colour {area[0]:.2f} sleeve {area[1]:.2f}")
                if args.combos:
                    for a, ok in ((0, (cy[:, 0] < size / 2).numpy()), (1, (cy[:, 1] > size / 2).numpy())):
                        cells = [f"{c}{s}:{ok[(test.labels[:, 0] == c) & (test.labels[:, 1] == s)].mean():.2f}"
                                 for c in range(3) for s in range(3)]
                        print(f"    {('colour box in the top', 'sleeve box in the bottom')[a]} half by (colour, "
                              "sleeve) code: " + " ".join(cells))
                if args.profile and mode == "minmax":
                    flat = cams.flatten(2)
                    lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
                    norm = ((flat - lo) / (hi - lo + 1e-12)).reshape(cams.shape)
                    rows = norm.mean((0, 3)).numpy()  # (A, H)
                    print(f"    mean normalised CAM per row, colour {np.round(rows[0], 2)} "
                          f"sleeve {np.round(rows[1], 2)}")
        if args.weights:
            # the CAM's level in each half, as a share of the top half's (colour) / bottom half's (sleeve) level,
            # split into the part of the classifier's initial weights and the part training added
            for a, (head, w0, lg) in enumerate(zip(trained.classifiers.heads, init, logits)):
                own, other_half = (slice(None, size // 2), slice(size // 2, None))[::1 if a == 0 else -1]
                parts = []
                for kind in ("raw", "centred", "known"):
                    w = head.weight.detach()
                    wc, wc0 = cam_weights(w, lg, kind), cam_weights(w0, lg, kind)
                    with torch.no_grad():
                        level = lambda ww, sl: torch.einsum("nk,nkhw->n", ww, f[:, :, sl]) / (f.shape[-1] * size / 2)
                        ref = level(wc, own)
                        parts.append(f"{kind} {float((level(wc, other_half) / ref).median()):+.2f} (init "
                                     f"{float((level(wc0, other_half) / ref).median()):+.2f}, learned "
                                     f"{float((level(wc - wc0, other_half) / ref).median()):+.2f})")
                print(f"    {SCHEMA.attributes[a]} CAM in the other half / in its own half (median over items): "
                      + ", ".join(parts))
        accs = []
        with torch.no_grad():
            for a, head in enumerate(trained.classifiers.heads):
                known = slice(None, -1) if a == 0 else slice(None)  # colour has no unspecified items
                accs.append([float((head(part.mean((2, 3)))[:, known].argmax(-1).numpy() == test.labels[:, a]).mean())
                             for part in (f, f[:, :, :size // 2], f[:, :, size // 2:])])
        print(f"size {size} seed {seed} GAP classifier accuracy, whole / top half / bottom half: "
              f"colour {np.round(accs[0], 2)}, sleeve {np.round(accs[1], 2)} (chance 0.33); training {secs:.1f} s")
        if args.weights:
            rel = relevance(f, test.labels, size)
            col, slv = rel[0] > 0.5, rel[1] > 0.5
            other = ~col & ~slv
            print(f"    channels (eta^2 > 0.5): colour-relevant {col.sum()}, sleeve-relevant {slv.sum()}, "
                  f"other {other.sum()} (of {f.shape[1]}); both {(col & slv).sum()}")
            for a, (head, w0) in enumerate(zip(trained.classifiers.heads, init)):
                w = head.weight.detach()[:-1]  # known values
                moved = (w - w0[:-1]).abs()
                parts = []
                for name, sel in (("colour ch", col), ("sleeve ch", slv), ("other ch", other)):
                    if sel.any():
                        parts.append(f"{name} |w| {w[:, sel].abs().mean():.3f} (moved {moved[:, sel].mean():.3f})")
                # the predicted class's raw CAM in each half, split by channel group (mean over items and cells)
                wc = cam_weights(head.weight.detach(), logits[a], "raw")
                contrib = []
                for half, sl in (("top", slice(None, size // 2)), ("bottom", slice(size // 2, None))):
                    fh = f[:, :, sl].mean((2, 3))
                    contrib.append(f"{half}: " + " ".join(
                        f"{name} {(wc[:, sel] * fh[:, sel]).sum(1).mean():+.2f}"
                        for name, sel in (("colour", col), ("sleeve", slv), ("other", other))))
                print(f"    {SCHEMA.attributes[a]} head: " + "; ".join(parts) + "\n      raw CAM by channel group, "
                      + " | ".join(contrib))
    print("summary (min-max over seeds, colour top / sleeve bottom / sleeve bottom of the items with a known sleeve):")
    for (mode, kind), v in summary.items():
        v = np.array(v)
        print(f"  {mode:6s} {kind:8s}: colour {v[:, 0].min():.2f}-{v[:, 0].max():.2f}, sleeve {v[:, 1].min():.2f}-"
              f"{v[:, 1].max():.2f}, known sleeve {v[:, 2].min():.2f}-{v[:, 2].max():.2f}; all seeds > 0.9: colour "
              f"{bool((v[:, 0] > 0.9).all())}, sleeve {bool((v[:, 1] > 0.9).all())}, "
              f"known sleeve {bool((v[:, 2] > 0.9).all())}")


if __name__ == "__main__":
    main()
