"""How often `vestis.vision.crop.studio_background` calls a photo a packshot, on a seeded sample of each dataset
(README, "Consumer-to-shop": photo preferences).

    python benchmarks/studio_background.py [--n 600]
"""

import argparse
import glob
import random

from vestis.images import load_rgb
from vestis.vision.crop import studio_background


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--packshots", default="../shared/datasets/fashion-product-images-small/images/*.jpg")
    ap.add_argument("--photos", default="../shared/datasets/clothing-dataset-small/*/*/*.jpg")
    args = ap.parse_args()
    random.seed(0)
    for name, pattern in (("packshots", args.packshots), ("shopper photos", args.photos)):
        files = random.sample(sorted(glob.glob(pattern)), args.n)
        hits = sum(studio_background(load_rgb(f, draft=(128, 160))) for f in files)
        print(f"{name}: {hits} of {len(files)} called packshots ({100 * hits / len(files):.1f} %)")


if __name__ == "__main__":
    main()
