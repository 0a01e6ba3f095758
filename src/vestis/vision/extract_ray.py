"""Extraction on Ray (`vestis extract --engine ray [--address ADDR]`): decoding and the trunk run as a Ray Data
pipeline, the feature cache is written by the calling process exactly as by the single-process path.

    catalogue images not cached yet (hash -> path, the order `extract_catalog` would encode them in)
      -> ray.data.from_items                                   (one row per image: hash, path)
      -> map_batches(TrunkActor, batch_size, concurrency=N)    (each actor: decode + letterbox, one ONNX Runtime
                                                                 session with one thread, float16 maps)
      -> iter_batches in the caller -> FeatureCache.put        (same shards, same atomic writes, same resume)

Why the caller writes the cache: one writer keeps the cache's guarantees (whole shards or none, the newest valid
entry wins) without a lock shared between machines, and a killed run loses at most one unwritten shard; the maps
travel as float16 (about 95 KB per image at 160x128 with s8), small next to the decode + trunk time they cost.
The actors get the exported trunk's bytes through Ray's object store (every node runs the verified model of this
cache, with no export per node); the images are read by path, so on a cluster the catalogue's files must be
reachable under the same paths on every node (a shared file system).

Without an address a local Ray is started for this run only (`num_cpus` CPUs, default every core; no dashboard)
and shut down at the end, also after an error or Ctrl-C; with one (`ray://host:10001` or `host:6379`, or "auto")
the run joins that cluster and leaves it running. A Ray that was already initialised in this process is used
as it is and left running. The output is batch-invariant: ONNX Runtime gives an image the same maps whatever
else is in its batch (tests/test_vision_extract_ray.py compares the cache with the single-process one).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from vestis.errors import VestisError
from vestis.machine import cpu_count

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
INSTALL_HINT = "pip install 'vestis[ray]' (the PyPI package ray with its data extra)"


def import_ray():
    """The `ray` module with Ray Data, or a VestisError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra this path needs (pyarrow, pandas)
    except ImportError as e:
        raise VestisError(f"--engine ray needs Ray, which is not installed ({e}); {INSTALL_HINT}") from e
    return ray


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None):
    """Ray for one extraction: join `address`, or start a local Ray with `num_cpus` CPUs and stop it on the way
    out (only what this call started is stopped)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        # a local Ray for one run: no dashboard, a small object store (the maps only stream through it)
        kwargs = {"address": address} if address else {
            "num_cpus": num_cpus or cpu_count(), "include_dashboard": False,
            "object_store_memory": 512 * 1024 * 1024}
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report sent from a user's machine
        try:
            ray.init(log_to_driver=False, logging_level=logging.WARNING, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to start or join: one clear message
            where = f"join the Ray cluster at {address}" if address else "start a local Ray"
            raise VestisError(f"could not {where}: {type(e).__name__}: {e}") from e
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


class TrunkActor:
    """One Ray actor: decodes + letterboxes a batch of image paths and runs one ONNX Runtime session (one thread)
    or, when ONNX is not available for this trunk, eager PyTorch. Returns float16 maps per level, and `ok`
    False (zero maps) for an image it could not decode."""

    def __init__(self, model, spec, kind: str):
        self.spec = spec
        if kind == "onnx":
            import ray

            from vestis.vision.backends import OnnxBackend

            # the model's bytes: a reference in a list, so Ray does not keep them as actor arguments
            self.backend = OnnxBackend(ray.get(model[0]), threads=1)
        else:
            import torch

            from vestis.vision.backends import TorchBackend
            from vestis.vision.trunk import build_trunk

            torch.set_num_threads(1)
            self.backend = TorchBackend(build_trunk(self.spec))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vestis.vision.preprocess import load_letterboxed

        h, w = self.spec.resolution
        images, ok = [], np.zeros(len(batch["path"]), dtype=bool)
        for i, path in enumerate(batch["path"]):
            try:
                images.append(load_letterboxed(Path(path), (h, w))[0])
                ok[i] = True
            except Exception as e:  # noqa: BLE001 - counted as unreadable by the caller, as in the local path
                log.info("unreadable image %s: %s", path, e)
        out = {"hash": batch["hash"], "ok": ok}
        maps = self.backend(np.stack(images)) if images else None
        for lv in self.backend.levels:
            if maps is None:
                continue
            m = maps[lv].astype(np.float16)
            full = np.zeros((len(ok), *m.shape[1:]), dtype=np.float16)
            full[ok] = m
            out[lv] = full
        if maps is None:  # no decodable image: shapes from a probe so every batch has the same columns
            probe = self.backend(np.zeros((1, h, w, 3), np.uint8))
            for lv in self.backend.levels:
                out[lv] = np.zeros((len(ok), *probe[lv].shape[1:]), dtype=np.float16)
        return out


def encode_on_ray(todo: list[tuple[str, Path]], spec, choice, batch_size: int, *, address: str | None = None,
                  num_cpus: int | None = None, actors: int | None = None, progress: bool = False,
                  timings: dict | None = None) -> Iterator[tuple[list[str], np.ndarray, dict[str, np.ndarray]]]:
    """Encode `todo` ([(hash, path)]) on Ray; yields (hashes, ok, {level: float16 maps}) per batch, in `todo`'s
    order. `choice` is `make_backend`'s result in the caller (its ONNX file is what the actors run). timings gets
    "ray_start_s" (starting or joining Ray) and "first_batch_s" (from then to the first batch: actors and model
    set-up)."""
    if not todo:
        return
    timings = {} if timings is None else timings
    t0 = time.perf_counter()
    with ray_session(address, num_cpus) as ray:
        timings["ray_start_s"] = time.perf_counter() - t0
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.execution_options.preserve_order = True  # the cache fills in the order the local path writes it
        ctx.enable_progress_bars = progress
        if choice.name == "onnx":
            model, kind = [ray.put(Path(choice.backend.path).read_bytes())], "onnx"
        else:
            model, kind = None, "torch"
        n_blocks = -(-len(todo) // batch_size)
        n_actors = min(n_blocks, actors or max(1, int(ray.cluster_resources().get("CPU", 1))))
        # blocks of one batch each, so every actor gets work (one block would go to one actor)
        ds = ray.data.from_items([{"hash": h, "path": str(p)} for h, p in todo],
                                 override_num_blocks=n_blocks)
        ds = ds.map_batches(TrunkActor, fn_constructor_args=(model, spec, kind), batch_size=batch_size,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=1)
        t1 = time.perf_counter()
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                timings.setdefault("first_batch_s", time.perf_counter() - t1)
                yield ([str(h) for h in batch["hash"]], np.asarray(batch["ok"], dtype=bool),
                       {lv: batch[lv] for lv in spec.levels})
        except (KeyboardInterrupt, GeneratorExit, VestisError):
            raise
        except Exception as e:  # noqa: BLE001 - an actor or the pipeline failed: say so plainly
            raise VestisError(f"the Ray extraction failed: {type(e).__name__}: {e}") from e
