"""The `vestis` command line. Each subcommand parses its options and calls one library function;
errors in the user's input (VestisError) print one clear line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vestis.errors import VestisError


def default_cache_dir() -> Path:
    return Path(os.environ.get("VESTIS_CACHE", Path.home() / ".cache" / "vestis"))


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be HEIGHTxWIDTH, e.g. 160x128, got {text!r}") from None
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"resolution {text}: height and width must be multiples of 32, at least 32")
    return h, w


# --- synth ----------------------------------------------------------------------------------------
def cmd_synth(args) -> int:
    from vestis.catalog.synthetic import generate

    cat = generate(n=args.n, seed=args.seed, out=args.out, workers=args.workers,
                   contact_sheet=args.contact_sheet, image_size=args.size)
    print(f"wrote {len(cat)} images and {args.out / 'catalog.jsonl'} (+ schema.json)")
    if args.contact_sheet:
        print(f"contact sheet: {args.out / 'contact_sheet.png'}")
    return 0


# --- ingest ---------------------------------------------------------------------------------------
def format_summary(s: dict) -> str:
    lines = [f"catalogue {s['name']!r} ({s['source']}): {s['items']} items"
             + (f", {s['instances']} instances" if s["instances"] else "")
             + (f", {s['with_parts']} with parts" if s["with_parts"] else "")]
    if "images" in s:
        im = s["images"]
        lines.append(f"images: {im['found']} found, {im['missing']} missing, {im['unreadable']} unreadable")
        for key in ("missing_ids", "unreadable_ids"):
            if im[key]:
                more = im[key.split("_")[0]] - len(im[key])
                lines.append(f"  {key.split('_')[0]}: {', '.join(im[key])}" + (f" (+{more} more)" if more > 0 else ""))
    lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in s["splits"].items()))
    if s["load_warnings"]:
        lines.append("rows skipped or changed while reading: " + ", ".join(f"{k} {v}" for k, v in s["load_warnings"].items()))
    lines.append("attributes:")
    for a, d in s["attributes"].items():
        top = ", ".join(f"{v} {c}" for v, c in list(d["counts"].items())[:6])
        more = len(d["counts"]) - 6
        lines.append(f"  {a}: {d['n_values']} values, {d['unspecified']} unspecified | {top}" + (f", ... (+{more})" if more > 0 else ""))
    return "\n".join(lines)


def cmd_ingest(args) -> int:
    from vestis.catalog import Catalog

    cat = Catalog.load(args.path, format=args.format)
    for w in cat.report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    hidden = cat.report.total - len(cat.report.warnings)
    if hidden > 0:
        print(f"warning: ... and {hidden} more", file=sys.stderr)
    s = cat.summary(check_images=not args.no_image_check)
    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0


# --- extract / bench ------------------------------------------------------------------------------
def _trunk_spec(args):
    from vestis.vision.trunk import TrunkSpec

    return TrunkSpec(name=args.trunk, weights=args.weights, resolution=args.resolution)


def cmd_extract(args) -> int:
    from vestis.catalog import Catalog
    from vestis.vision.extract import extract_catalog

    cat = Catalog.load(args.catalog, format=args.format)
    report = extract_catalog(cat, _trunk_spec(args), cache_dir=args.cache, batch_size=args.batch_size,
                             backend=args.backend, limit=args.limit)
    print(report.describe())
    return 0


def cmd_bench(args) -> int:
    if args.what == "extract":
        from vestis.vision.bench import bench_extract

        print(bench_extract(catalog_path=args.catalog, n_images=args.n, batch_size=args.batch_size,
                            repeats=args.repeats, weights=args.weights))
        return 0
    raise VestisError(f"unknown benchmark {args.what!r}")


# --- demo -----------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from vestis.demo import run_demo

    return run_demo(data=args.data, workdir=args.workdir, n=args.n, cache_dir=args.cache)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vestis", description="Attribute-aware search for fashion catalogues.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="generate the synthetic fashion catalogue")
    s.add_argument("-n", type=int, default=2000, help="number of garments/images (default 2000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--size", type=int, nargs=2, metavar=("W", "H"), default=None, help="image size in pixels")
    s.add_argument("--contact-sheet", action="store_true", help="also write contact_sheet.png")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("ingest", help="validate a catalogue and print a summary")
    s.add_argument("path", type=Path)
    s.add_argument("--format", default=None, help="force a reader (default: auto-detect)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--no-image-check", action="store_true", help="skip decoding every image")
    s.set_defaults(func=cmd_ingest)

    def trunk_options(s):
        s.add_argument("--trunk", default="tf_efficientnet_lite0", help="timm model name")
        s.add_argument("--weights", type=Path, default=None,
                       help="weights file (default: the packaged EfficientNet-Lite0 ImageNet weights)")
        s.add_argument("--resolution", type=_resolution, default=(160, 128), help="HEIGHTxWIDTH (default 160x128)")
        s.add_argument("--cache", type=Path, default=default_cache_dir(), help="feature cache (default $VESTIS_CACHE or ~/.cache/vestis)")

    s = sub.add_parser("extract", help="encode a catalogue's images into cached trunk feature maps")
    s.add_argument("catalog", type=Path)
    s.add_argument("--format", default=None)
    trunk_options(s)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto")
    s.add_argument("--limit", type=int, default=None, help="only the first N items (for a quick look)")
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("bench", help="speed benchmarks")
    s.add_argument("what", choices=["extract"])
    s.add_argument("--catalog", type=Path, default=None, help="images to time (default: a fresh synthetic catalogue)")
    s.add_argument("--n", type=int, default=256, help="images per timed run")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--weights", type=Path, default=None)
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", help="generate the synthetic catalogue (or use DATA), extract features, summarise")
    s.add_argument("--data", type=Path, default=None, help="a catalogue to use instead of the synthetic one")
    s.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    s.add_argument("-n", type=int, default=2000)
    s.add_argument("--cache", type=Path, default=default_cache_dir())
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VestisError as e:
        print(f"vestis {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vestis {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
