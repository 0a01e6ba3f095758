"""Photo query time (README, consumer-to-shop): one 12 MP phone-size JPEG searched end to end through
`Engine.search` (decode at a reduced DCT scale + optional foreground crop + trunk + search), repeated; p50 / p99,
the decode + crop share alone, and the p50 of each stage (decode, letterbox, trunk; the rest of the search is the
difference to the whole). The JPEG is a clothing photo enlarged to 4000 x 3000 (12 MP) with sensor-like
noise, written once to a temporary file.

    python benchmarks/photo_query_time.py --run RUN --index INDEX --photo PHOTO.jpg [--repeat 30]
"""

import argparse
import io
import json
import os
import time

import numpy as np
from PIL import Image

from vestis.engine import Engine
from vestis.images import load_rgb
from vestis.vision.crop import crop_to_foreground
from vestis.vision.preprocess import letterbox


def twelve_mp(photo: str) -> bytes:
    img = Image.open(photo).convert("RGB").resize((4000, 3000), Image.BICUBIC)
    a = np.asarray(img, np.int16) + np.random.default_rng(0).integers(-6, 7, (3000, 4000, 3), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--index", required=True)
    ap.add_argument("--photo", required=True)
    ap.add_argument("--repeat", type=int, default=30)
    args = ap.parse_args()
    data = twelve_mp(args.photo)
    eng = Engine.load(args.run, args.index)
    w, h = eng.spec.resolution[1], eng.spec.resolution[0]
    mode = "manipulate" if "manipulate" in eng.modes() else "same_item"  # what a photo query is answered with
    out = {"jpeg_bytes": len(data), "pixels": "4000x3000", "load_average_before": os.getloadavg()}
    for crop in (False, True):
        eng.search(image=data, k=10, crop=crop, mode=mode)  # warm-up
        total, dec, cpu = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            img = load_rgb(data, draft=(w, h))
            if crop:
                crop_to_foreground(img)
            dec.append(time.perf_counter() - t0)
            t0, c0 = time.perf_counter(), time.process_time()
            eng.search(image=data, k=10, crop=crop, mode=mode)
            total.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out["crop" if crop else "no_crop"] = {
            "search_p50_ms": round(1000 * float(np.median(total)), 1),
            "search_p99_ms": round(1000 * float(np.percentile(total, 99)), 1),
            "decode_crop_p50_ms": round(1000 * float(np.median(dec)), 1),
            # CPU time of this process per search (all its threads): on a machine shared with other jobs the wall
            # time waits for the cores, the CPU time does not
            "search_cpu_p50_ms": round(1000 * float(np.median(cpu)), 1)}
    # where the time goes (no crop): decode, letterbox, trunk, and the rest of Engine.search (classifier, search)
    eng.encode_images([data])  # builds the backend
    stages = {"decode": [], "letterbox": [], "trunk": []}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        img = load_rgb(data, draft=(w, h))
        t1 = time.perf_counter()
        arr = letterbox(img, eng.spec.resolution)[0][None]
        t2 = time.perf_counter()
        eng._encoder(arr)
        t3 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2)):
            stages[name].append(dt)
    out["stages_p50_ms"] = {name: round(1000 * float(np.median(v)), 1) for name, v in stages.items()}
    out["stages_p50_ms"]["rest_of_search"] = round(out["no_crop"]["search_p50_ms"] - sum(out["stages_p50_ms"].values()), 1)
    out["resolution"] = "x".join(map(str, eng.spec.resolution))
    out["load_average_after"] = os.getloadavg()
    out["gallery"] = len(eng.spaces["main"])
    out["model"], out["mode"] = eng.model.name, mode
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
