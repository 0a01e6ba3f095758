"""`vestis bench extract`: images/s of the trunk paths and of end-to-end extraction, as a Markdown table.

For each resolution (default 160x128 and 224x224), extracting the levels asked for (default s16, s32), with
the same images:
  * trunk only, on preprocessed (letterboxed uint8) batches: eager PyTorch (NCHW, the reference), PyTorch
    channels_last, torch.jit trace+freeze (channels_last), ONNX Runtime;
  * end to end (hash + decode + letterbox + trunk + float16 cache write into a fresh cache): a plain
    sequential eager loop (the reference), and `extract_catalog` with the torch and the onnx backend
    (decode threads overlapping the trunk). Model build / ONNX export are done once, outside the timings.
Each path runs once per repeat, round-robin (`vestis.bench.timing`), so load from other processes hits all
paths alike; the table gives the median images/s and the median of the per-repeat ratios to the reference.
"max abs diff" compares each path's float32 maps with eager PyTorch on the same batches (end to end: the
stored float16 maps, so the figure includes float16 rounding). End-to-end rows also give the cache's
bytes per image (shard files on disk / images), which grows with the levels extracted.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from vestis.bench.timing import time_calls
from vestis.catalog import Catalog, Item
from vestis.machine import format_load, format_machine, load_average, machine_info
from vestis.vision.cache import FeatureCache, content_hash
from vestis.vision.extract import (BackendChoice, OnnxBackend, PreprocessedTrunk, TorchBackend, ensure_onnx,
                                   extract_catalog)
from vestis.vision.preprocess import load_letterboxed
from vestis.vision.trunk import DEFAULT_LEVELS, TrunkSpec, build_trunk

RESOLUTIONS = ((160, 128), (224, 224))


# --- inputs -----------------------------------------------------------------------------------------------
def synthetic_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Product-shot-like JPEGs: a garment silhouette (body + sleeves, some with stripes or print noise) in a
    random colour on a white background; half 60x80, half 160x200 pixels."""
    from PIL import Image, ImageDraw, ImageFilter

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (60, 80) if i % 2 == 0 else (160, 200)
        img = Image.new("RGB", (w, h), (255, 255, 255))
        d = ImageDraw.Draw(img)
        colour = tuple(int(c) for c in rng.integers(0, 230, 3))
        x0, x1 = w * rng.uniform(0.2, 0.3), w * rng.uniform(0.7, 0.8)
        y0, y1 = h * rng.uniform(0.1, 0.2), h * rng.uniform(0.75, 0.95)
        d.rectangle((x0, y0, x1, y1), fill=colour)
        sl = w * rng.uniform(0.1, 0.2)
        d.polygon([(x0, y0), (x0 - sl, y0 + h * 0.3), (x0, y0 + h * 0.35)], fill=colour)
        d.polygon([(x1, y0), (x1 + sl, y0 + h * 0.3), (x1, y0 + h * 0.35)], fill=colour)
        if i % 3 == 1:  # stripes
            second = tuple(int(c) for c in rng.integers(0, 255, 3))
            step = max(2, int(h * 0.05))
            for y in range(int(y0), int(y1), 2 * step):
                d.rectangle((x0, y, x1, min(y + step - 1, y1)), fill=second)
        a = np.asarray(img).astype(np.int16)
        if i % 3 == 2:  # printed texture
            mask = (a != 255).any(-1, keepdims=True)
            a = np.where(mask, a + rng.integers(-40, 40, a.shape), a)
        a += rng.integers(-3, 4, a.shape)  # sensor noise
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).filter(ImageFilter.SMOOTH)
        p = folder / f"{i:05d}.jpg"
        img.save(p, quality=int(rng.integers(80, 95)))
        paths.append(p)
    return paths


def _catalog_images(catalog_path: Path, n: int) -> list[Path]:
    cat = Catalog.load(catalog_path)
    out = []
    for it in cat:
        if it.image is not None and it.image.is_file():
            out.append(it.image)
            if len(out) == n:
                break
    return out


# --- timing -----------------------------------------------------------------------------------------------
def _jit_backend(trunk, example: np.ndarray):
    module = PreprocessedTrunk(copy.deepcopy(trunk).to(memory_format=torch.channels_last)).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.freeze(torch.jit.trace(module, torch.from_numpy(example)).eval())

    def run(batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = traced(torch.from_numpy(np.ascontiguousarray(batch)))
            return {lv: m.contiguous().numpy() for lv, m in zip(trunk.levels, out)}

    return run


def _eager_loop(paths: list[Path], spec: TrunkSpec, backend, cache_dir: Path, batch_size: int) -> None:
    """The plain baseline: decode, letterbox and encode one batch after another, no overlap."""
    with FeatureCache(cache_dir, spec) as cache:
        for i in range(0, len(paths), batch_size):
            chunk = paths[i:i + batch_size]
            hashes = [content_hash(p) for p in chunk]
            batch = np.stack([load_letterboxed(p, spec.resolution)[0] for p in chunk])
            maps = backend(batch)
            for j, h in enumerate(hashes):
                cache.put(h, {lv: m[j].astype(np.float16) for lv, m in maps.items()})


def _diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(a[lv].astype(np.float32) - b[lv].astype(np.float32)).max()) for lv in b)


def _run_all(run, batches: list[np.ndarray]) -> dict[str, np.ndarray]:
    outs = [run(b) for b in batches]
    return {lv: np.concatenate([o[lv] for o in outs]) for lv in outs[0]}


def _bench_resolution(paths, spec, batch_size, repeats, work: Path, log) -> list[tuple]:
    trunk = build_trunk(spec)
    n = len(paths)
    batches = []
    for i in range(0, n, batch_size):
        batches.append(np.stack([load_letterboxed(p, spec.resolution)[0] for p in paths[i:i + batch_size]]))
    onnx_path, _ = ensure_onnx(spec, work / "onnx", trunk)
    eager = TorchBackend(trunk, channels_last=False)
    trunk_paths = {
        "eager PyTorch (reference)": eager,
        "PyTorch channels_last": TorchBackend(trunk, channels_last=True),
        "torch.jit trace+freeze, channels_last": _jit_backend(trunk, batches[0]),
        "ONNX Runtime": OnnxBackend(onnx_path),
    }
    # reference maps (float32) for every image, and each path's max abs diff on the same batches
    ref = _run_all(eager, batches)
    diffs = {name: _diff(_run_all(run, batches), ref) for name, run in trunk_paths.items()}
    catalog = Catalog([Item(f"img{i}", p) for i, p in enumerate(paths)])
    choices = {"extract_catalog, torch backend": BackendChoice(TorchBackend(trunk), "torch"),
               "extract_catalog, onnx backend": BackendChoice(OnnxBackend(onnx_path), "onnx")}
    e2e_names = ["plain eager loop (reference)", *choices]
    e2e_dirs = {name: work / "e2e" / str(i) for i, name in enumerate(e2e_names)}

    def run_path(name: str) -> None:
        if name in trunk_paths:
            for b in batches:
                trunk_paths[name](b)
        elif name in choices:
            extract_catalog(catalog, spec, e2e_dirs[name], batch_size=batch_size, backend=choices[name], progress=False)
        else:
            _eager_loop(paths, spec, eager, e2e_dirs[name], batch_size)

    def fresh_cache(name: str) -> None:  # end to end always writes into a fresh cache
        if name in e2e_dirs:
            shutil.rmtree(e2e_dirs[name], ignore_errors=True)

    names = [*trunk_paths, *e2e_names]

    def progress(r: int, seconds: np.ndarray) -> None:
        log(f"  {spec.resolution[0]}x{spec.resolution[1]} repeat {r + 1}/{repeats}: "
            + ", ".join(f"{k.split(' (')[0]} {n / t:.0f}/s" for k, t in zip(names, seconds)))

    for run in trunk_paths.values():  # warm-up
        run(batches[0])
    seconds = time_calls(run_path, names, repeats, warmup=0, before=fresh_cache, after_pass=progress).seconds
    stored: dict[str, float] = {}  # cache bytes per image (shard files) after each end-to-end path
    for name, d in e2e_dirs.items():  # the stored float16 maps of the last repeat
        fs = FeatureCache(d, spec).load(catalog)
        diffs[name] = _diff(fs.maps, ref) if len(fs) == n else float("nan")
        stored[name] = sum(f.stat().st_size for f in (d / spec.key / "shards").glob("*.vfs")) / n
    rows = []
    h, w = spec.resolution
    for group, group_names in (("trunk", list(trunk_paths)), ("end to end", e2e_names)):
        base = seconds[:, names.index(group_names[0])]
        for name in group_names:
            t = seconds[:, names.index(name)]
            ips = float(np.median(n / t))
            ratio = float(np.median(base / t))
            rows.append((f"{h}x{w}", group, name, ips, ratio, diffs[name], stored.get(name)))
    shutil.rmtree(work / "e2e", ignore_errors=True)
    return rows


def bench_extract(catalog_path: Path | None = None, n_images: int = 256, batch_size: int = 32, repeats: int = 5,
                  weights: Path | None = None, resolutions=RESOLUTIONS, levels=DEFAULT_LEVELS, log=None) -> str:
    """Time the trunk paths and end-to-end extraction of `levels`; returns a Markdown report (table + machine)."""
    import sys

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="vestis-bench-") as tmp:
        tmp = Path(tmp)
        if catalog_path is None:
            paths = synthetic_images(tmp / "images", n_images)
            source = f"{len(paths)} synthetic product-shot JPEGs (half 60x80, half 160x200), made on the fly"
        else:
            paths = _catalog_images(Path(catalog_path), n_images)
            source = f"the first {len(paths)} images of {catalog_path}"
        if not paths:
            from vestis.errors import VestisError

            raise VestisError(f"no readable images to benchmark in {catalog_path}")
        rows = []
        for res in resolutions:
            spec = TrunkSpec(weights=weights, resolution=res, levels=levels)
            log(f"benchmarking {spec.key} on {len(paths)} images ...")
            rows += _bench_resolution(paths, spec, batch_size, repeats, tmp / f"{res[0]}x{res[1]}", log)
    spec = TrunkSpec(weights=weights, levels=levels)
    lines = [f"## Feature extraction speed: {spec.name}, levels {', '.join(spec.levels)}, batch {batch_size}, "
             f"{len(paths)} images per run, median of {repeats} runs", "",
             "| resolution | stage | path | images/s | vs reference | max abs diff vs eager | cache bytes / image |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for res, group, name, ips, ratio, diff, size in rows:
        lines.append(f"| {res} | {group} | {name} | {ips:.1f} | {ratio:.2f}x | {diff:.1e} | "
                     f"{'-' if size is None else f'{size:,.0f}'} |")
    lines += ["", f"Images: {source}.",
              f"Machine: {format_machine(machine, ('torch', 'onnxruntime', 'timm', 'numpy', 'pillow'))} at the start, "
              f"{format_load(load_average())} at the end; torch {torch.get_num_threads()} threads "
              "(other processes share the cores: compare ratios, not absolute images/s, across runs).",
              "trunk = on preprocessed uint8 batches (normalisation included); end to end = hash + JPEG decode + "
              "letterbox + trunk + float16 cache write into a fresh cache, model already built. "
              "Ratios are medians of per-repeat ratios to the reference row of the same stage and resolution; "
              "end-to-end diffs compare stored float16 maps with eager float32 maps, so they are dominated by float16 rounding "
              "(s16 values reach about +-60, where half a float16 step is 0.016)."]
    return "\n".join(lines)
