"""Where a diverse query's time goes (one query at a time, from encoded maps): the model's plan, then the probes."""
import statistics, sys, time
from pathlib import Path
import torch
from vestis.engine import Engine
from vestis.eval import read_queries
from vestis.models import Request

e = Engine.load(Path(sys.argv[1]), Path(sys.argv[2]))
qs = read_queries(sys.argv[3])[:60]
maps = e.encode_images([Path(q["image"]) for q in qs])
plan, total = [], []
for r in range(len(qs)):
    one = {k: v[r:r + 1] for k, v in maps.items()}
    t0 = time.perf_counter(); e.model.plan(one, Request("diverse", [{}])); plan.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter(); e.search_maps(one, k=10, mode="diverse", labels=False); total.append((time.perf_counter() - t0) * 1000)
print(f"threads {torch.get_num_threads()}: plan p50 {statistics.median(plan[10:]):.2f} ms, whole query p50 {statistics.median(total[10:]):.2f} ms "
      f"(probes and merge {statistics.median(total[10:]) - statistics.median(plan[10:]):.2f} ms), {len(qs) - 10} timed")
