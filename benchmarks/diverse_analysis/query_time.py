"""Where a diverse query's time goes, one query at a time with one torch thread: the model's plan, then the probes
(from the encoded maps), and the whole query with the image's encoding. Wall-clock p50 and the process's CPU time
per query (robust to other processes on the machine), with the load average before and after.

    python benchmarks/diverse_analysis/query_time.py RUN INDEX QUERIES.jsonl [N_QUERIES] [selector]

`selector`: the filtered probes scan every part row behind FAISS's bitmap selector, as before the flat index kept
each filter's rows as their own IndexFlat (`faiss_index.SUBSET_CACHE` 0): the before / after of that change.
"""
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from vestis.engine import Engine
from vestis.eval import read_queries
from vestis.models import Request

import vestis.index.faiss_index as faiss_index

torch.set_num_threads(1)
if "selector" in sys.argv[5:]:
    faiss_index.SUBSET_CACHE = 0
WARM = 10
e = Engine.load(Path(sys.argv[1]), Path(sys.argv[2]))
qs = read_queries(sys.argv[3])[:int(sys.argv[4]) if len(sys.argv) > 4 else 60]
images = [Path(q["image"]) for q in qs]
maps = e.encode_images(images)
print("load average before:", " ".join(f"{v:.2f}" for v in os.getloadavg()))


def timed(fn):
    wall, cpu = [], []
    for r in range(len(qs)):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(r)
        wall.append((time.perf_counter() - w0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return statistics.median(wall[WARM:]), statistics.fmean(cpu[WARM:])


def one(r):
    return {k: v[r:r + 1] for k, v in maps.items()}


plan = timed(lambda r: e.model.plan(one(r), Request("diverse", [{}])))
whole = timed(lambda r: e.search_maps(one(r), k=10, mode="diverse", labels=False))
image = timed(lambda r: e.search(image=images[r], k=10, mode="diverse", labels=False))
print(f"{'selector scan' if faiss_index.SUBSET_CACHE == 0 else 'filter subsets'}: "
      f"threads {torch.get_num_threads()}, {len(qs) - WARM} timed, gallery {len(e.spaces['main'])} items, "
      f"{len(e.spaces['parts'])} part rows")
print(f"plan p50 {plan[0]:.2f} ms (cpu {plan[1]:.2f} ms); from maps p50 {whole[0]:.2f} ms (cpu {whole[1]:.2f} ms; "
      f"probes and merge {whole[0] - plan[0]:.2f} ms); with the image's encoding p50 {image[0]:.2f} ms "
      f"(cpu {image[1]:.2f} ms)")
print("load average after:", " ".join(f"{v:.2f}" for v in os.getloadavg()))
