"""Batched feature extraction for a catalogue into the FeatureCache, with an ONNX Runtime fast path.

Pipeline (`extract_catalog`):
  1. hash every image file (sha256 of its bytes, thread pool) - items without a file are "missing";
  2. verify the cached entries those hashes point at (crc32; corrupt ones are re-encoded);
  3. decode + letterbox the images not cached yet in background threads, a few batches ahead of the trunk,
     while the main thread runs the trunk on full batches (ONNX Runtime and PyTorch release the GIL, and
     PIL releases it while decoding/resizing), and store float16 maps in shards of the cache.
Identical images (same bytes) are encoded once. Undecodable images are counted ("unreadable"), never fatal.
Interrupting (Ctrl-C) writes what was encoded; kill -9 loses at most one unwritten shard, and a rerun reuses
everything already stored.

Backends take uint8 NHWC batches (the letterbox output) and return {level: float32 array} for the spec's
levels (`backend.levels`); the normalisation is part of the model, so ONNX Runtime does it too:
  * "torch": eager PyTorch, inference_mode, channels_last (the NHWC input is channels_last already);
  * "onnx": the same module exported once per spec to `<cache>/<spec.key>/trunk.onnx` (one named output per
    level), run by ONNX Runtime (CPU provider, one intra-op thread per core, no spin-waiting so the decode
    threads get CPU). On export it is checked against eager PyTorch on a fixed batch; the max abs difference
    per level is stored next to it;
  * "auto": ONNX Runtime when it is installed, exports and matches PyTorch within ONNX_TOLERANCE, otherwise
    torch. Measured on 2 idle cores at 160x128, batch 32: ONNX Runtime 217-240 images/s vs eager PyTorch
    86-89 (channels_last 132-141, torch.jit trace+freeze 186-220); max abs diff vs eager 6e-5 on the export
    probe, 2.3e-4 over 256 real images (s16 values reach +-60). `vestis bench extract` re-measures.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vestis.errors import VestisError
from vestis.machine import cpu_count
from vestis.vision.cache import DEFAULT_SHARD_SIZE, FeatureCache, chunked_map, content_hash
from vestis.images import ImageReadError
from vestis.vision.preprocess import load_letterboxed
from vestis.vision.backends import OnnxBackend, PreprocessedTrunk, TorchBackend  # noqa: F401 (re-exported)
from vestis.vision.trunk import Trunk, TrunkSpec, build_trunk

log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-3  # max abs diff vs eager PyTorch on the fp32 maps for ONNX to count as "the same"
BACKENDS = ("auto", "onnx", "torch")


# --- backends ---------------------------------------------------------------------------------------------
def _probe_batch(spec: TrunkSpec, n: int = 4) -> np.ndarray:
    """Deterministic, image-like uint8 batch (smooth colour fields + noise + a white margin)."""
    h, w = spec.resolution
    rng = np.random.default_rng(1234)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        base = np.stack([np.sin((xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9)) + rng.uniform(0, 6))
                         for _ in range(3)], -1)
        img = 128 + 90 * base + rng.normal(0, 20, (h, w, 3))
        img[:, : w // 8] = 255
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Per level of `a`, the max abs difference to the same level of `b` (both {level: array})."""
    if set(a) != set(b):
        raise ValueError(f"different levels: {sorted(a)} vs {sorted(b)}")
    return {lv: float(np.abs(a[lv].astype(np.float32) - b[lv].astype(np.float32)).max()) for lv in a}


def export_onnx(trunk: Trunk, path: Path, *, opset: int = 17) -> Path:
    """Export trunk + normalisation atomically: uint8 NHWC input 'images', one output per level of the
    trunk's spec named after it ('s16', 's32', ...), dynamic batch."""
    spec = trunk.spec
    h, w = spec.resolution
    module = PreprocessedTrunk(trunk).eval()
    example = torch.zeros(2, h, w, 3, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(tmp), dynamo=False, input_names=["images"],
                          output_names=list(trunk.levels), opset_version=opset,
                          dynamic_axes={"images": {0: "n"}, **{lv: {0: "n"} for lv in trunk.levels}})
    os.replace(tmp, path)
    return path


def onnx_path(cache_dir: Path, spec: TrunkSpec) -> Path:
    return Path(cache_dir) / spec.key / "trunk.onnx"


def _check_trunk(spec: TrunkSpec, trunk: Trunk | None) -> None:
    if trunk is not None and (trunk.spec.name, trunk.spec.resolution, trunk.levels) != (spec.name, spec.resolution, spec.levels):
        raise ValueError(f"the trunk given was built for {trunk.spec.name} {trunk.spec.resolution} {trunk.levels}, "
                         f"not for {spec.name} {spec.resolution} {spec.levels}")


def ensure_onnx(spec: TrunkSpec, cache_dir: Path, trunk: Trunk | None = None) -> tuple[Path, dict]:
    """The exported, verified ONNX trunk for this spec: (path, info with 'max_abs_diff' per level)."""
    _check_trunk(spec, trunk)
    path = onnx_path(cache_dir, spec)
    meta = path.with_name(path.name + ".json")
    if path.is_file() and meta.is_file():
        try:
            info = json.loads(meta.read_text())
            if info.get("spec") == spec.key and set(info["max_abs_diff"]) == set(spec.levels):
                return path, info
        except (ValueError, KeyError, TypeError, OSError) as e:
            log.warning("re-exporting ONNX trunk %s: %s", path, e)
    trunk = trunk or build_trunk(spec)
    t0 = time.perf_counter()
    export_onnx(trunk, path)
    probe = _probe_batch(spec)
    diff = max_abs_diff(OnnxBackend(path)(probe), TorchBackend(trunk, channels_last=False)(probe))
    import onnxruntime as ort

    info = {"spec": spec.key, "max_abs_diff": diff, "export_s": round(time.perf_counter() - t0, 2),
            "torch": torch.__version__, "onnxruntime": ort.__version__}
    tmp = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, meta)
    return path, info


@dataclass
class BackendChoice:
    backend: object
    name: str
    note: str = ""
    max_abs_diff: dict | None = None


def make_backend(spec: TrunkSpec, cache_dir: Path, backend: str = "auto", trunk: Trunk | None = None) -> BackendChoice:
    if backend not in BACKENDS:
        raise VestisError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    _check_trunk(spec, trunk)
    note = ""
    if backend in ("auto", "onnx"):
        try:
            path, info = ensure_onnx(spec, cache_dir, trunk)
            try:
                session = OnnxBackend(path)
            except Exception as e:  # noqa: BLE001 - a damaged .onnx file: export it again, once
                log.warning("re-exporting damaged ONNX trunk %s: %s", path, e)
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".json").unlink(missing_ok=True)
                path, info = ensure_onnx(spec, cache_dir, trunk)
                session = OnnxBackend(path)
            worst = max(info["max_abs_diff"].values())
            if worst <= ONNX_TOLERANCE:
                return BackendChoice(session, "onnx", max_abs_diff=info["max_abs_diff"])
            note = f"ONNX output differs from PyTorch by {worst:.2g} (> {ONNX_TOLERANCE})"
        except ImportError as e:
            note = f"onnxruntime unavailable ({e})"
        except Exception as e:  # noqa: BLE001 - export problems fall back to torch under auto
            note = f"ONNX export failed ({type(e).__name__}: {e})"
        if backend == "onnx":
            raise VestisError(f"backend onnx: {note}")
        log.warning("using the PyTorch backend: %s", note)
    return BackendChoice(TorchBackend(trunk or build_trunk(spec)), "torch", note=note)


def encode_images(backend, resolution: tuple[int, int], images, crop: bool = False,
                  boxes: list | None = None, studio: list | None = None) -> dict[str, torch.Tensor]:
    """Trunk feature maps {level: float32 tensor N x C x H x W} for the backend's levels (its spec's), of
    image files or bytes (uploads) through a backend from `make_backend`; raises ImageReadError for an
    unreadable image before encoding any. crop: each photo is first cut to its foreground box
    (`vision.crop.foreground_box`); `boxes` (a list) receives each box in decoded-image pixels, or None;
    `studio` (a list) whether each photo is a packshot on studio white (`vision.crop.studio_background`)."""
    if not crop and studio is None:
        batch = np.stack([load_letterboxed(im, resolution)[0] for im in images])
        if boxes is not None:
            boxes.extend([None] * len(batch))
    else:  # the decoded photo itself is needed (its foreground, its border): the same decode + letterbox
        from vestis.images import load_rgb
        from vestis.vision.crop import crop_to_foreground, studio_background, thumbnail
        from vestis.vision.preprocess import letterbox

        h, w = resolution
        arrs = []
        for im in images:
            img = load_rgb(im, draft=(w, h))
            thumb = thumbnail(img)  # once for both: part of every photo query's time
            if studio is not None:
                studio.append(studio_background(img, thumb))
            cut, box = crop_to_foreground(img, thumb) if crop else (img, None)
            arrs.append(letterbox(cut, resolution)[0])
            if boxes is not None:
                boxes.append(_in_original(img, box))
        batch = np.stack(arrs)
    return {lv: torch.from_numpy(np.asarray(m, np.float32)) for lv, m in backend(batch).items()}


def _in_original(img, box):
    """A box found on a draft-decoded image, in the original photo's pixels."""
    if box is None:
        return None
    w0, h0 = img.info.get("original_size", img.size)
    sx, sy = w0 / img.size[0], h0 / img.size[1]
    return [round(box[0] * sx, 1), round(box[1] * sy, 1), round(box[2] * sx, 1), round(box[3] * sy, 1)]


# --- extraction -------------------------------------------------------------------------------------------
@dataclass
class ExtractReport:
    items: int = 0
    encoded: int = 0  # images run through the trunk in this run
    reused: int = 0  # items whose features were already cached
    shared: int = 0  # items identical (same bytes) to another item encoded in this run
    missing: int = 0
    unreadable: int = 0
    corrupt: int = 0  # cached entries that failed verification and were re-encoded
    missing_ids: list[str] = field(default_factory=list)
    unreadable_ids: list[str] = field(default_factory=list)
    backend: str = ""
    engine: str = "local"  # "ray": decode + trunk on Ray actors
    ray_timings: dict = field(default_factory=dict)  # ray_start_s, first_batch_s (see extract_ray.encode_on_ray)
    backend_note: str = ""
    max_abs_diff: dict | None = None
    prepare_s: float = 0.0  # hashing + verifying the cache + building the backend
    encode_s: float = 0.0
    wall_s: float = 0.0
    cache_path: Path | None = None
    cache_entries: int = 0
    spec_key: str = ""
    problems: list[str] = field(default_factory=list)
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.encoded / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def encode_images_per_s(self) -> float:
        return self.encoded / self.encode_s if self.encode_s > 0 else 0.0

    def describe(self) -> str:
        diff = ""
        if self.max_abs_diff:
            diff = ", max abs diff vs eager PyTorch " + ", ".join(f"{k} {v:.1e}" for k, v in self.max_abs_diff.items())
        lines = [f"{'INTERRUPTED: ' if self.interrupted else ''}features for {self.items} items "
                 f"({self.spec_key}; backend {self.backend or '-'}"
                 f"{' on Ray' if self.engine == 'ray' else ''}{diff})"]
        if self.backend_note:
            lines.append(f"  note: {self.backend_note}")
        lines.append(f"  encoded {self.encoded}, reused from cache {self.reused}"
                     + (f", identical to another item {self.shared}" if self.shared else "")
                     + f", missing {self.missing}, unreadable {self.unreadable}"
                     + (f", corrupt cache entries re-encoded {self.corrupt}" if self.corrupt else ""))
        for label, ids, n in (("missing", self.missing_ids, self.missing), ("unreadable", self.unreadable_ids, self.unreadable)):
            if ids:
                lines.append(f"  {label}: {', '.join(ids)}" + (f" (+{n - len(ids)} more)" if n > len(ids) else ""))
        if self.encoded:
            lines.append(f"  {self.images_per_s:.1f} images/s ({self.encoded} encoded in {self.wall_s:.1f} s wall; "
                         f"decode+trunk+write {self.encode_s:.1f} s = {self.encode_images_per_s:.1f} images/s, "
                         f"hashing/verifying cache/model setup {self.prepare_s:.1f} s)")
            if self.ray_timings:
                lines.append(f"  Ray: started or joined in {self.ray_timings.get('ray_start_s', 0):.1f} s, first batch "
                             f"{self.ray_timings.get('first_batch_s', 0):.1f} s later (both inside the wall time)")
        else:
            lines.append(f"  nothing to encode ({self.wall_s:.1f} s wall, hashing and verifying the cache)")
        lines.append(f"  cache: {self.cache_path} ({self.cache_entries} entries)")
        for p in self.problems[:5]:
            lines.append(f"  broken cache shard moved to corrupt/ (its images count as not cached): {p}")
        return "\n".join(lines)


def _decode(path: Path, resolution: tuple[int, int]) -> np.ndarray:
    return load_letterboxed(path, resolution)[0]


def _hash(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return content_hash(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    except OSError as e:  # e.g. permission denied: the file is there but cannot be read
        return f"!{e.strerror or e}"


def extract_catalog(catalog, spec: TrunkSpec, cache_dir: Path, batch_size: int = 32,
                    backend: str | BackendChoice = "auto", limit: int | None = None, *, workers: int | None = None,
                    shard_size: int = DEFAULT_SHARD_SIZE, progress: bool = True, max_listed: int = 10,
                    engine: str = "local", address: str | None = None, ray_cpus: int | None = None) -> ExtractReport:
    """Encode every catalogue image not yet cached for `spec` into the feature cache under `cache_dir`.

    backend: "auto" | "onnx" | "torch", or a ready `make_backend(...)` result (reused across calls, e.g. by
    the benchmark). workers: decode threads (default min(2, cores)). engine "ray": decode + trunk on Ray actors
    (`vision/extract_ray.py`; `address` joins a cluster, else a local Ray with `ray_cpus` CPUs), the cache
    written here all the same. Returns counts and timings."""
    from tqdm import tqdm

    from vestis.vision.extract_ray import ENGINES

    if engine not in ENGINES:
        raise VestisError(f"unknown extraction engine {engine!r}; valid: {', '.join(ENGINES)}")
    if engine == "ray":
        from vestis.vision.extract_ray import import_ray

        import_ray()  # a clear error before any work when Ray is missing
    if batch_size < 1:
        raise VestisError(f"batch size must be at least 1, got {batch_size}")
    if not isinstance(backend, BackendChoice) and backend not in BACKENDS:
        raise VestisError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if spec.s32_stages is not None:
        raise VestisError("a trunk with fine-tuned stride-32 stages is not extracted from the images: its maps are "
                          "read from the frozen trunk's cache (catalogue_features)")
    t0 = time.perf_counter()
    items = list(catalog)
    if limit is not None:
        items = items[: max(0, int(limit))]
    rep = ExtractReport(items=len(items), spec_key=spec.key, engine=engine)
    cache = FeatureCache(cache_dir, spec, shard_size=shard_size)
    rep.cache_path = cache.path
    cache.refresh()
    rep.problems = list(cache.problems)
    cache.quarantine()

    def note(kind: str, iid: str) -> None:
        setattr(rep, kind, getattr(rep, kind) + 1)
        ids = getattr(rep, f"{kind}_ids")
        if len(ids) < max_listed:
            ids.append(iid)

    # 1. hash, 2. verify what is cached
    hashes = chunked_map(lambda it: _hash(it.image), items, max(4, cpu_count()))
    present = {h for h in hashes if h and not h.startswith("!")}
    _, corrupt = cache.verify(present)
    todo: dict[str, Path] = {}  # hash -> first path, in catalogue order
    shared: list[str] = []  # hashes of later items identical to an earlier one to encode
    for it, h in zip(items, hashes):
        if h is None:
            note("missing", it.id)
        elif h.startswith("!"):
            note("unreadable", it.id)
        elif cache.has(h):
            rep.reused += 1
        elif h in todo:
            shared.append(h)
        else:
            todo[h] = it.image
    rep.corrupt = len(corrupt & set(todo))
    failed: set[str] = set()

    if todo:
        choice = backend if isinstance(backend, BackendChoice) else make_backend(spec, cache_dir, backend)
        run = choice.backend
        if tuple(getattr(run, "levels", spec.levels)) != spec.levels:
            raise ValueError(f"the backend gives levels {run.levels}, the spec wants {spec.levels}")
        rep.backend, rep.backend_note, rep.max_abs_diff = choice.name, choice.note, choice.max_abs_diff
    rep.prepare_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    batch: list[np.ndarray] = []
    batch_hashes: list[str] = []
    bar = tqdm(total=len(todo), unit="img", desc="encoding", disable=not progress or not todo, smoothing=0.05,
               dynamic_ncols=True)

    def run_batch() -> None:
        maps = {lv: m.astype(np.float16) for lv, m in run(np.stack(batch)).items()}
        for i, h in enumerate(batch_hashes):
            cache.put(h, {lv: m[i] for lv, m in maps.items()})
        rep.encoded += len(batch_hashes)
        bar.update(len(batch_hashes))
        batch.clear()
        batch_hashes.clear()

    pool = None if engine == "ray" else ThreadPoolExecutor(workers or min(2, cpu_count()),
                                                            thread_name_prefix="vestis-decode")
    try:
        if engine == "ray" and todo:
            _encode_on_ray(todo, spec, choice, batch_size, cache, bar, rep, failed, address=address,
                           num_cpus=ray_cpus, progress=progress)
        else:
            window = 3 * batch_size
            pending: deque = deque()
            queue = iter(todo.items())

            def top_up() -> None:
                while len(pending) < window:
                    nxt = next(queue, None)
                    if nxt is None:
                        return
                    pending.append((nxt[0], pool.submit(_decode, nxt[1], spec.resolution)))

            top_up()
            while pending:
                h, fut = pending.popleft()
                top_up()
                try:
                    arr = fut.result()
                except Exception as e:  # noqa: BLE001 - ImageReadError, or anything odd in one file: count it
                    log.info("unreadable image: %s", e if isinstance(e, ImageReadError) else f"{type(e).__name__}: {e}")
                    failed.add(h)
                    cache.put_unreadable(h)
                    continue
                batch.append(arr)
                batch_hashes.append(h)
                if len(batch) == batch_size:
                    run_batch()
            if batch:
                run_batch()
    except KeyboardInterrupt:
        rep.interrupted = True
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        cache.flush()  # keep everything encoded so far, also on Ctrl-C
        rep.encode_s = time.perf_counter() - t1
        rep.wall_s = time.perf_counter() - t0
        rep.shared = sum(1 for h in shared if h not in failed)
        if failed:  # count every item (duplicates included) whose image could not be decoded
            for it, h in zip(items, hashes):
                if h in failed:
                    note("unreadable", it.id)
        rep.cache_entries = len(cache)
    return rep


def _encode_on_ray(todo: dict[str, Path], spec: TrunkSpec, choice: BackendChoice, batch_size: int, cache, bar, rep,
                   failed: set[str], **ray_args) -> None:
    """The encoding loop of `extract_catalog` with decode + trunk on Ray; the cache is written here, batch by batch."""
    from vestis.vision.extract_ray import encode_on_ray

    if not isinstance(choice.backend, (OnnxBackend, TorchBackend)):
        raise VestisError(f"--engine ray runs the ONNX or PyTorch trunk in its actors, not {choice.name!r}")
    rep.ray_timings = {}
    for hashes, ok, maps in encode_on_ray(list(todo.items()), spec, choice, batch_size, timings=rep.ray_timings,
                                          **ray_args):
        for i, h in enumerate(hashes):
            if ok[i]:
                cache.put(h, {lv: m[i] for lv, m in maps.items()})
                rep.encoded += 1
            else:
                failed.add(h)
                cache.put_unreadable(h)
        bar.update(len(hashes))


def catalogue_features(catalog, spec: TrunkSpec, cache_dir: Path, progress: bool = True,
                       extract_options: dict | None = None):
    """Encode whatever is not cached yet, then load this catalogue's feature maps (a FeatureSet, catalogue
    order, every level of `spec`). extract_options: more `extract_catalog` arguments (e.g. engine="ray").
    A spec with fine-tuned stride-32 stages reads the frozen trunk's cached maps and re-encodes s32 from s16
    (`vision.s32_stages`)."""
    if spec.s32_stages is not None:
        from vestis.vision.s32_stages import base_spec, staged_features

        frozen = catalogue_features(catalog, base_spec(spec), cache_dir, progress=progress, extract_options=extract_options)
        return staged_features(catalog, spec, cache_dir, frozen, progress=progress)
    report = extract_catalog(catalog, spec, cache_dir=cache_dir, progress=progress, **(extract_options or {}))
    if report.encoded and progress:
        print(report.describe())
    with FeatureCache(cache_dir, spec) as cache:
        return cache.load(catalog)
