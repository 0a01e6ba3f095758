"""The `vestis` command line. Each subcommand parses its options and calls one library function;
errors in the user's input (VestisError) print one clear line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vestis.errors import VestisError
from vestis.paths import default_cache_dir


def _resolution(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be HEIGHTxWIDTH, e.g. 160x128, got {text!r}") from None
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise argparse.ArgumentTypeError(f"resolution {text}: height and width must be multiples of 32, at least 32")
    return h, w


def _levels(text: str) -> tuple[str, ...]:
    from vestis.vision.trunk import sort_levels

    try:
        return sort_levels(text)
    except VestisError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", type=Path, default=default_cache_dir(),
                        help="feature cache (default $VESTIS_CACHE or ~/.cache/vestis)")


# --- synth ----------------------------------------------------------------------------------------
def cmd_synth(args) -> int:
    from vestis.catalog.synthetic import generate

    if args.collages_from is not None:
        from vestis.catalog import Catalog
        from vestis.catalog.collages import make_collages

        n_eval = args.eval_collages if args.eval_collages is not None else max(1, args.n // 10)
        cat = make_collages(Catalog.load(args.collages_from), args.out, args.n, n_eval, seed=args.seed,
                            singles=args.singles, n_val=args.val_collages)
        n_val = len(cat.split("val")) if args.val_collages else 0
        print(f"wrote {len(cat.split('train')) - args.singles} training, {n_val} validation and "
              f"{len(cat.split('query'))} evaluation collages and {args.out / 'catalog.jsonl'} (+ schema.json)")
        return 0
    cat = generate(n=args.n, seed=args.seed, out=args.out, workers=args.workers,
                   contact_sheet=args.contact_sheet, image_size=args.size, scene=args.scene)
    print(f"wrote {len(cat)} images and {args.out / 'catalog.jsonl'} (+ schema.json)")
    if args.contact_sheet:
        print(f"contact sheet: {args.out / 'contact_sheet.png'}")
    return 0


# --- ingest ---------------------------------------------------------------------------------------
def cmd_views(args) -> int:
    from vestis.vision.augmented_views import write_augmented_views

    source = _load_catalog(args)
    counts = write_augmented_views(source, args.out, views=args.views, query_views=args.query_views, seed=args.seed,
                                   hr_dir=args.hr_dir, crop=args.crop, packshot_views=args.packshot_views,
                                   packshot_products=args.packshot_products,
                                   validation_products=args.validation_products)
    print(f"wrote augmented views of single photos (not a multi-view dataset) to {args.out}: augmented.jsonl, "
          f"cross-resolution.jsonl (+ schema.json, views/)")
    for k, v in counts.items():
        print(f"  {k}: {v}")
    return 0


def _print_load_warnings(cat) -> None:
    """What reading the catalogue changed or skipped (as `vestis ingest` prints it)."""
    for w in cat.report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    hidden = cat.report.total - len(cat.report.warnings)
    if hidden > 0:
        print(f"warning: ... and {hidden} more", file=sys.stderr)


def cmd_ingest(args) -> int:
    from vestis.catalog import Catalog

    cat = Catalog.load(args.path, format=args.format)
    _print_load_warnings(cat)
    s = cat.summary(check_images=not args.no_image_check)
    from vestis.catalog.catalog import format_summary

    print(json.dumps(s, indent=1) if args.json else format_summary(s))
    return 0


# --- extract / bench ------------------------------------------------------------------------------
def _trunk_spec(args):
    from vestis.vision.trunk import TrunkSpec

    return TrunkSpec(name=args.trunk, weights=args.weights, resolution=args.resolution, levels=_default_levels(args),
                     flip=args.flip)


def _default_levels(args) -> tuple[str, ...]:
    """--levels, else the union of the levels the built-in methods read: one cache serves every method."""
    if args.levels:
        return args.levels
    from vestis.models import declared_levels

    return declared_levels()


def _engine_options(args) -> dict:
    """`extract_catalog` arguments of --engine / --address / --ray-cpus."""
    if args.engine != "ray" and (args.address or args.ray_cpus):
        raise VestisError("--address and --ray-cpus go with --engine ray")
    if args.engine != "ray":
        return {}
    return {"engine": "ray", "address": args.address, "ray_cpus": args.ray_cpus}


def cmd_extract(args) -> int:
    from vestis.catalog import Catalog
    from vestis.vision.extract import extract_catalog

    cat = Catalog.load(args.catalog, format=args.format)
    report = extract_catalog(cat, _trunk_spec(args), cache_dir=args.cache, batch_size=args.batch_size,
                             backend=args.backend, limit=args.limit, **_engine_options(args))
    print(report.describe())
    return 0


def cmd_bench_extract(args) -> int:
    from vestis.bench.extract import bench_extract

    print(bench_extract(catalog_path=args.catalog, n_images=args.n, batch_size=args.batch_size, repeats=args.repeats,
                        weights=args.weights, levels=_default_levels(args),
                        **({"resolutions": (args.resolution,)} if args.resolution else {})))
    return 0


def cmd_bench_search(args) -> int:
    from vestis.bench.search import bench_search

    print(bench_search(args.run, args.index, args.queries, n=args.items, n_queries=args.n, sweep=args.sweep,
                       gallery=args.gallery, repeats=args.repeats, milvus_n=args.milvus_items, threads=args.threads,
                       cache_dir=args.cache, json_out=args.json, kinds=[k for k in args.kinds.split(",") if k],
                       mode=args.mode, filters=_bench_filters(args.filters), milvus_uri=args.milvus_uri,
                       ef_search=_int_list("--ef-search", args.ef_search), nprobe=_int_list("--nprobe", args.nprobe),
                       milvus_options=_milvus_options(args.milvus_options), filter_settings=args.filter_settings,
                       index_options=_index_options(args.index_options),
                       search_options=_search_options(args.search_options)))
    return 0


def _int_list(option: str, text: str | None) -> list[int]:
    """A comma-separated list of positive integers (e.g. --ef-search 64,128); empty when not given."""
    if not text:
        return []
    try:
        values = [int(e) for e in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise VestisError(f"{option} takes positive integers separated by commas, e.g. 64,128; got {text!r}")
    return values


def _json_option(text: str | None, option: str, example: str):
    """A command-line option holding JSON (None when not given); bad JSON names the option and an example. The
    callers check the value's shape."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise VestisError(f"{option} must be JSON like '{example}': {e}") from None
    return value


def _bench_filters(text: str | None) -> dict | None:
    """--filters JSON: {name: {attribute: value or [values]}}."""
    f = _json_option(text, "--filters", '{"broad": {"gender": "Women"}}')
    if f is not None and (not isinstance(f, dict) or not all(isinstance(v, dict) and v for v in f.values())):
        raise VestisError("--filters must map a name to a filter {attribute: value or [values]}")
    return f


def _index_options(text: str | None) -> dict | None:
    """--index-options JSON: build options of the benchmark's FAISS indexes, e.g. {"value_graphs": ["gender"]}."""
    o = _json_option(text, "--index-options", '{"value_graphs": ["gender"]}')
    if o is not None and not isinstance(o, dict):
        raise VestisError("--index-options must be a JSON object of index options")
    return o


def _search_options(text: str | None) -> list[dict]:
    """--search-options JSON: a list of search settings, one row each, e.g. [{"value_graphs": false}]."""
    o = _json_option(text, "--search-options", '[{"value_graphs": false}]')
    if o is None:
        return []
    if not isinstance(o, list) or not all(isinstance(x, dict) for x in o):
        raise VestisError("--search-options must be a JSON list of objects (search settings)")
    return o


def _milvus_options(text: str | None) -> dict | None:
    """--milvus-options JSON: the Milvus row's build options, e.g. {"M": 16} or {"kind": "ivfpq", "index_type": ...}."""
    o = _json_option(text, "--milvus-options", '{"M": 16, "ef_construction": 200}')
    if o is None:
        return None
    if not isinstance(o, dict):
        raise VestisError("--milvus-options must be a JSON object of index options")
    if o.get("kind", "hnsw") not in ("flat", "hnsw", "ivfpq"):
        raise VestisError(f"--milvus-options kind must be flat, hnsw or ivfpq, got {o['kind']!r}")
    return o


def cmd_bench_query(args) -> int:
    from vestis.bench.query import bench_query, describe

    r = bench_query(args.run, args.index, args.queries, n_queries=args.n, repeats=args.repeats, cache_dir=args.cache,
                    labels=args.labels == "on")
    print(describe(r))
    print(json.dumps(r))
    return 0


def cmd_bench_labels(args) -> int:
    from vestis.bench.labels import bench_labels

    try:
        options = json.loads(args.options) if args.options else {}
    except ValueError as e:
        raise VestisError(f"--options must be a JSON object: {e}") from None
    print(bench_labels(args.run, args.index, args.queries, n=args.items, n_queries=args.n, repeats=args.repeats,
                       cache_dir=args.cache, index_options=options))
    return 0


def cmd_bench_serve(args) -> int:
    from vestis.bench.serve import bench_serve

    try:
        workers = tuple(int(w) for w in args.workers.split(","))
    except ValueError:
        raise VestisError(f"--workers takes numbers separated by commas, e.g. 1,2; got {args.workers!r}") from None
    if not workers or min(workers) < 1:
        raise VestisError(f"--workers: each number must be at least 1, got {args.workers!r}")
    print(bench_serve(args.run, args.index, catalog=args.catalog, n_requests=args.n, concurrency=args.concurrency,
                      repeats=args.repeats, cache_dir=args.cache, workers=workers, uploads=args.uploads))
    return 0


# --- train / index / search ----------------------------------------------------------------------
def _load_catalog(args, attributes: str | None = None):
    from vestis.catalog import Catalog
    from vestis.catalog.readers import default_attributes

    cat = Catalog.load(args.catalog, format=getattr(args, "format", None))
    if attributes == "default":
        return cat.with_attributes(default_attributes(cat))
    if attributes:
        names = [a.strip() for a in attributes.split(",") if a.strip()]
        for a in names:
            cat.schema.check_attribute(a)
        return cat.with_attributes(names)
    return cat


def _without_id_like_attributes(cat):
    from vestis.catalog.readers import id_like_attributes

    suspects = id_like_attributes(cat)
    for a, why in suspects.items():
        print(f"warning: column {a!r} looks like an identifier, not an attribute ({why}): not trained on; name it "
              f"in --attributes to train on it", file=sys.stderr)
    keep = [a for a in cat.schema.attributes if a not in suspects]
    if suspects and not keep:
        raise VestisError(f"every attribute column looks like an identifier ({', '.join(suspects)}); name the ones "
                          f"to train on with --attributes")
    return cat.with_attributes(keep) if suspects else cat


def _some(ids, n: int = 10) -> str:
    return ", ".join(ids[:n]) + (f" (+{len(ids) - n} more)" if len(ids) > n else "")


def _check_train_config(model: str, config: dict, where) -> None:
    """Config values checked before any training starts (one clear error, not a torch traceback)."""
    import vestis.models  # noqa: F401  (registers the built-in methods)
    from vestis.models.base import MODELS
    from vestis.models.config_check import check_config

    if model in MODELS:
        check_config(model, MODELS[model].default_config, config, where=str(where or "config"))


def cmd_train(args) -> int:
    from vestis.train import train_run

    config = {}
    if args.config:
        try:
            config = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as e:
            raise VestisError(f"cannot read config {args.config}: {e}") from None
    attributes = config.pop("attributes", None)
    _check_train_config(args.model, config, args.config)
    attributes = args.attributes or (",".join(attributes) if attributes else "default")
    cat = _load_catalog(args, attributes)
    _print_load_warnings(cat)
    if attributes == "default":
        cat = _without_id_like_attributes(cat)
    train = cat.split("train")
    without_image = [it.id for it in train if it.image is None or not Path(it.image).is_file()]
    print(f"training {args.model} on {cat.name} ({len(train)} train items; attributes: "
          f"{', '.join(cat.schema.attributes)})")
    if without_image:
        print(f"warning: {len(without_image)} of {len(train)} train items have no image file and are not "
              f"trained on: {_some(without_image)}", file=sys.stderr)
    finetune = None
    if args.finetune_trunk:
        finetune = {"epochs": args.finetune_epochs, "blocks": args.finetune_blocks, "lr": args.finetune_lr}
    finetune_s32 = None
    if args.finetune_s32:
        finetune_s32 = {"epochs": args.finetune_s32_epochs, "lr": args.finetune_s32_lr}
    mix = None
    if args.mix is not None or args.mix_mapping is not None:
        from vestis.catalog import Catalog
        from vestis.catalog.mapping import LabelMapping

        if args.mix is None or args.mix_mapping is None:
            raise VestisError("--mix CATALOG and --mix-mapping FILE go together")
        mapping = LabelMapping.load(args.mix_mapping)
        other = Catalog.load(args.mix, format=args.mix_format)
        other = other.filter(lambda it: it.image is not None and it.image.is_file())
        print(f"mixing in {other.name} ({len(other.split('train'))} train items): {mapping.source_attribute} -> "
              f"{mapping.target_attribute} through {args.mix_mapping}; balanced per batch")
        mix = (other, mapping)
    if args.shopper_views:
        print(f"adding {args.shopper_views} shopper-photo view(s) of every training image (seed {args.views_seed}; "
              "made and encoded once, then reused from the cache)")
    info = train_run(args.model, cat, args.out, _trunk_spec(args), args.cache, config=config, finetune=finetune,
                     mix=mix, shopper_views=args.shopper_views, views_seed=args.views_seed, finetune_s32=finetune_s32,
                     s32_stages=args.s32_stages)
    secs = info.history.get("seconds", [0])[0]
    unread = len(train) - len(without_image) - info.history.get("train_items", len(train) - len(without_image))
    if unread > 0:
        print(f"warning: {unread} more train items had no features (unreadable images) and were not trained on",
              file=sys.stderr)
    print(f"run {info.run_id} saved to {args.out} ({info.history.get('train_items', 0)} items, {secs:.0f} s training)")
    return 0


def cmd_index(args) -> int:
    from vestis.indexing import ENGINE_FILE, build_index

    if args.update_attributes is not None:
        return _update_index_attributes(args)
    if args.run is None or args.catalog is None:
        raise VestisError("building an index needs --run and --catalog (or give --update-attributes FILE to change "
                          "an existing index's attributes)")
    try:
        before = json.loads((args.out / ENGINE_FILE).read_text()).get("attribute_updates")
    except (OSError, ValueError, AttributeError):
        before = None
    if before:
        print(f"note: the rebuild starts from the catalogue file; the {before.get('items')} item(s) changed with "
              f"--update-attributes since the last build are not carried over (apply the update file again)",
              file=sys.stderr)
    cat = _load_catalog(args)
    opts = json.loads(args.options) if args.options else {}
    meta = build_index(args.run, cat, args.out, backend=args.backend, kind=args.kind, split=args.split,
                       cache_dir=args.cache, extract_options=_engine_options(args), **opts)
    w = meta["without_features"]
    print(f"indexed {meta['count']} items of {cat.name}" + (f" ({args.split} split)" if args.split else "")
          + f" with run {meta['run_id']} into {args.out} ({args.backend} {args.kind}; spaces: "
          + ", ".join(f"{s} ({k})" for s, k in meta["kinds"].items()) + ")"
          + (f"; skipped {w['missing']} missing and {w['unreadable']} unreadable images" if w["missing"] or w["unreadable"] else ""))
    return 0


def _update_index_attributes(args) -> int:
    """`vestis index --update-attributes FILE --out INDEX`: new labels for indexed items, no re-embedding."""
    from vestis.attribute_updates import read_updates, summary_line, update_attributes
    from vestis.engine import Engine
    from vestis.indexing import ENGINE_FILE

    changes = read_updates(args.update_attributes)
    run = args.run
    if run is None:
        try:
            run = Path(json.loads((args.out / ENGINE_FILE).read_text())["run_dir"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise VestisError(f"{args.out} is not an index built by `vestis index` ({ENGINE_FILE}: {e})") from None
    catalog = _load_catalog(args) if args.catalog is not None else None
    engine = Engine.load(run, args.out, catalog=catalog, cache_dir=args.cache)
    try:
        print(summary_line(update_attributes(engine, args.out, changes)))
    finally:
        for idx in engine.spaces.values():
            idx.close()
    return 0


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise VestisError(f"--set takes attribute=value, got {p!r}")
        a, v = p.split("=", 1)
        out[a.strip()] = v.strip()
    return out


def cmd_search(args) -> int:
    from vestis.engine import Engine
    from vestis.eval.runners import rank_queries

    engine = Engine.load(args.run, args.index, cache_dir=args.cache)
    if args.label_weight is not None:
        engine.label_weight = args.label_weight
    if args.photo_preferences == "all":
        engine.photo_preferences = engine.photo_sets = None
    elif args.photo_preferences == "values":
        engine.photo_sets = None
    if args.queries:
        from vestis.eval.queries import read_queries
        from vestis.eval.rankings import write_rankings

        if not args.output:
            raise VestisError("--queries needs --output rankings.jsonl")
        queries = read_queries(args.queries)
        rows = rank_queries(engine, queries, k=args.k or 50, labels=args.labels == "on", photos=args.photos,
                            crop=args.crop)
        write_rankings(args.output, rows)
        print(f"ranked {len(rows)} queries into {args.output}")
        return 0
    if (args.image is None) == (args.item is None):
        raise VestisError("give one of --queries FILE, --image PATH or --item ID")
    filters = _parse_sets(args.filter)
    result = engine.search(image=args.image, item_id=args.item, manipulations=_parse_sets(args.set), k=args.k or 30,
                           filters=filters or None, mode=args.mode, labels=args.labels == "on", crop=args.crop)
    print(f"labels {result.labels}" + (f": {result.note}" if result.note else ""))
    attrs = engine.model.schema.attributes
    for g in result.groups:  # one table per group (one for the flat modes)
        if len(result.groups) > 1 or g.box is not None:
            box = "" if g.box is None else " box (" + ", ".join(f"{v:.0f}" for v in g.box) + ")"
            score = "" if g.score is None else f" score {g.score:.2f}"
            print(f"\n{g.label or 'results'}{score}{box}")
        print(f"{'rank':>4}  {'item':<14} {'score':>8}  " + "  ".join(attrs))
        for r, h in enumerate(g.hits, 1):
            cells = [("*" if h.matches.get(a) else "") + h.attributes.get(a, "-") for a in attrs]
            print(f"{r:>4}  {h.id:<14} {h.score:>8.3f}  " + "  ".join(cells))
    return 0


# --- queries / eval -------------------------------------------------------------------------------
def _with_images(cat):
    """Items whose image file exists: queries and galleries never involve an item that cannot be searched."""
    kept = cat.filter(lambda it: it.image is not None and it.image.is_file())
    if len(kept) < len(cat):
        print(f"note: {len(cat) - len(kept)} items without an image file left out", file=sys.stderr)
    return kept


def cmd_queries(args) -> int:
    from vestis.eval import queries as Q

    if args.protocol == "diverse":  # photos with parts (outfits, collages): their own schema, every attribute
        cat = _with_images(_load_catalog(args))
        if not args.attribute:
            raise VestisError("--protocol diverse needs --attribute: the garments' category attribute (e.g. "
                              f"subCategory); the catalogue has {', '.join(cat.schema.attributes)}")
        extra = [a.strip() for a in args.attributes.split(",") if a.strip()] if args.attributes else None
        qs, counts = Q.diverse_queries(cat, args.attribute, split=args.split or "query", attributes=extra,
                                       seed=args.seed, max_queries=args.per_attribute)
        if not qs:
            raise VestisError("no valid diverse queries: no item of that split has parts and an image")
        digest = Q.write_queries(args.out, qs)
        print(f"wrote {len(qs)} diverse queries to {args.out} (sha256 {digest[:16]}): " +
              ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    cat = _with_images(_load_catalog(args, args.attributes or "default"))
    attrs = cat.schema.attributes
    if args.protocol == "manipulation":
        qs, counts = Q.manipulation_queries(cat, attrs, seed=args.seed, per_attribute=args.per_attribute,
                                            n_changes=args.changes)
    elif args.protocol == "attribute":
        qs, counts = Q.attribute_queries(cat, attrs, seed=args.seed, per_attribute=args.per_attribute)
    elif args.protocol == "triplet":
        qs, counts = Q.triplet_queries(cat, attrs, n_per_attribute=args.per_attribute or 1000, seed=args.seed)
    elif args.protocol == "consumer_to_shop":
        from vestis.catalog.mapping import LabelMapping

        if not args.mapping:
            raise VestisError("--protocol consumer_to_shop needs --mapping FILE (the photos' category -> the "
                              "gallery's values)")
        mapping = LabelMapping.load(args.mapping)
        qs, counts = Q.consumer_to_shop_queries(cat, mapping, split=args.split or "query", seed=args.seed,
                                                max_queries=args.per_attribute)
    else:
        qs, counts = Q.same_item_queries(cat, seed=args.seed, max_queries=args.per_attribute)
    if not qs:
        raise VestisError(f"no valid {args.protocol} queries in this catalogue")
    digest = Q.write_queries(args.out, qs)
    print(f"wrote {len(qs)} {args.protocol} queries to {args.out} (sha256 {digest[:16]})")
    for a, c in counts.items():
        flag = c == 0 and args.protocol not in ("same_item", "consumer_to_shop")
        print(f"  {a}: {c}" + ("   <- no valid query for this attribute" if flag else ""))
    return 0


def cmd_eval(args) -> int:
    from vestis.eval import evaluate, write_report
    from vestis.machine import machine_info

    cat = _with_images(_load_catalog(args))
    gallery = [it.id for it in cat.split(args.gallery_split)]
    vectors = None
    space_run = args.vectors_run or args.run
    if space_run and (space_run / "run.json").is_file():  # protocol 4's intra-list diversity: the trunk's visual space
        from vestis.eval.runners import VisualVectors
        from vestis.vision.trunk import TrunkSpec

        from vestis.runs import trunk_record_in

        trunk = json.loads((space_run / "run.json").read_text()).get("trunk")
        vectors = VisualVectors(cat, TrunkSpec.from_json(trunk_record_in(space_run, trunk)), args.cache) if trunk else None
    report = evaluate(args.queries, args.rankings, cat, gallery_ids=gallery,
                      gallery_fractions=() if args.no_curve else (0.1, 0.25, 0.5, 1.0), views=args.views,
                      item_vectors=vectors)
    report["run"] = {"name": args.name or (args.run.name if args.run else Path(args.rankings).stem),
                     **({"dir": str(args.run)} if args.run else {})}
    if args.run and (args.run / "run.json").is_file():
        report["run"].update({k: v for k, v in json.loads((args.run / "run.json").read_text()).items()
                              if k in ("run_id", "model", "config", "trunk")})
    if args.classify:
        from vestis.eval.runners import category_scores
        from vestis.eval import classification_report

        if not args.run:
            raise VestisError("--classify needs --run")
        if "consumer_to_shop" in report:  # photos of another catalogue: accuracy through the query's target set
            from vestis.eval import read_queries
            from vestis.eval.runners import mapped_accuracy

            report["mapped_accuracy"] = mapped_accuracy(args.run, read_queries(args.queries), args.cache)
        else:
            from vestis.eval.runners import category_level_scores

            scores, labels, names = category_scores(args.run, cat, args.classify_split, args.cache)
            report["classification"] = {**classification_report(scores, labels, names), "split": args.classify_split}
            # Park et al.'s Table 2: the coarser category levels, through the same classifier
            levels = category_level_scores(args.run, cat, args.classify_split, args.cache)
            if levels:
                report["classification_levels"] = {
                    level: {**classification_report(*rows), "split": args.classify_split}
                    for level, rows in levels.items()}
    report["machine"] = machine_info()
    if args.report:
        write_report(report, args.report)
        print((args.report / "report.md").read_text())
        print(f"report written to {args.report}")
    else:
        from vestis.eval import report_markdown

        print(report_markdown(report))
    return 0


def cmd_compare(args) -> int:
    from vestis.eval import compare_reports
    from vestis.eval.report import read_report

    reports = []
    for d in args.reports:
        f = d / "report.json" if d.is_dir() else d
        if not f.is_file():
            raise VestisError(f"no report at {f}")
        reports.append(read_report(f))
    compare_reports(reports, args.out, names=args.names)
    print((args.out / "comparison.md").read_text())
    return 0


def cmd_localisation(args) -> int:
    from vestis.eval.localisation import localisation_report, report_markdown
    from vestis.machine import machine_info

    cat = _load_catalog(args)
    report = localisation_report(args.run, cat, split=None if args.split == "all" else args.split,
                                 threshold=args.threshold, cache_dir=args.cache)
    report["catalog"] = str(args.catalog)
    report["machine"] = machine_info()
    text = report_markdown(report)
    print(text)
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "localisation.json").write_text(json.dumps(report, indent=1))
        (args.report / "localisation.md").write_text(text)
        print(f"report written to {args.report}")
    return 0


def cmd_explain(args) -> int:
    from vestis.explain import explain_images

    for e in explain_images(args.run, args.images, args.out, threshold=args.threshold, cache_dir=args.cache):
        print(f"{e.image} -> {e.png}")
        for r in e.explanation.regions:
            label = "unspecified" if r.label is None else r.label
            if r.box is None:
                where = "no box"
            else:
                where = "box ({:.0f}, {:.0f}, {:.0f}, {:.0f})".format(*e.explanation.box_in_input_pixels(r.box))
            note = f"  (map: {r.map_label} {r.map_confidence:.2f})" if r.label is None and r.map_confidence is not None else ""
            print(f"  {r.name:<16} {label:<24} {r.confidence:.2f}  {where}{note}")
    return 0


# --- serve / demo ---------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    from vestis.serve import load_engine, serve

    engine = load_engine(args.run, args.index, args.catalog, args.format, args.cache)
    serve(engine, host=args.host, port=args.port, max_upload_bytes=int(args.max_upload_mb * 2**20),
          max_pixels=int(args.max_megapixels * 1e6), image_roots=args.image_root or None,
          allowed_hosts=args.allowed_host or None, body_timeout=args.body_timeout, allow_writes=args.allow_writes,
          workers=args.workers, precompute_items=args.precompute_items)
    return 0


def cmd_demo(args) -> int:
    from vestis.demo import run_demo

    return run_demo(data=args.data, workdir=args.workdir, n=args.n, cache_dir=args.cache,
                    serve=not args.no_serve, host=args.host, port=args.port)


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
    s.add_argument("--scene", choices=("default", "cluttered"), default="default",
                   help="cluttered: each garment smaller, in a street scene beside one or two unlabelled distractor "
                        "garments (for measuring localisation; default: the garment fills most of the picture)")
    s.add_argument("--collages-from", type=Path, default=None, metavar="CATALOG",
                   help="instead: -n collages of CATALOG's train-split photos (top, bottom, shoes, maybe a bag or "
                        "a watch, by subCategory) with each garment's labels and box, plus evaluation collages of "
                        "its query-split photos")
    s.add_argument("--eval-collages", type=int, default=None, help="evaluation collages (default n / 10)")
    s.add_argument("--val-collages", type=int, default=0,
                   help="with --collages-from: validation collages (split val) for choosing options, cut from a "
                        "held-out tenth of each role's train-split photos that no training collage or single uses "
                        "(default 0: none held out)")
    s.add_argument("--singles", type=int, default=0,
                   help="with --collages-from: also this many train-split photos as single-product items")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("views", help="augmented views of single photos: a same-product catalogue from images_hr/ "
                                     "(not a multi-view dataset)")
    s.add_argument("--catalog", type=Path, required=True, help="the source catalogue (fashion-product-images-small)")
    s.add_argument("--format", default=None, help="force the source's reader (default: auto-detect)")
    s.add_argument("--out", type=Path, required=True, help="folder for augmented.jsonl, cross-resolution.jsonl, views/")
    s.add_argument("--hr-dir", type=Path, default=None, help="the sharper copies (default: images_hr/ beside the "
                                                             "catalogue)")
    s.add_argument("--views", type=_positive, default=4, help="augmented views per train product (default 4)")
    s.add_argument("--query-views", type=_positive, default=2, help="augmented query views per query product "
                                                                    "(default 2)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--crop", type=float, default=0.15, help="largest share of a side a tight framing cuts (default "
                                                           "0.15)")
    s.add_argument("--packshot-views", type=int, default=0, help="also this many views of the 60x80 photo of train "
                                                                 "products without images_hr (default 0)")
    s.add_argument("--packshot-products", type=int, default=None, help="for this many of them (a seeded choice; "
                                                                       "default all)")
    s.add_argument("--validation-products", type=int, default=0, help="also validation.jsonl: this many train "
                   "products held out (a seeded choice), their views as queries, for tuning off the query split")
    s.set_defaults(func=cmd_views)

    s = sub.add_parser("ingest", help="validate a catalogue and print a summary")
    s.add_argument("path", type=Path)
    s.add_argument("--format", default=None, help="force a reader (default: auto-detect)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--no-image-check", action="store_true", help="skip decoding every image")
    s.set_defaults(func=cmd_ingest)

    def engine_options(s):
        s.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="ray: decode + trunk as a Ray Data pipeline (one ONNX Runtime session per actor), the same "
                            "cache; without --address on a local Ray started for the run (README, scale-out)")
        s.add_argument("--address", default=None,
                       help="with --engine ray: join this Ray cluster (e.g. ray://head:10001 or auto); image paths "
                            "must be readable on its nodes")
        s.add_argument("--ray-cpus", type=_positive, default=None,
                       help="with --engine ray and no --address: CPUs of the local Ray (default: every core)")

    def levels_option(s):
        s.add_argument("--levels", type=_levels, default=None,
                       help="trunk levels to extract, comma-separated from s8,s16,s32 (default: the union of what the "
                            "built-in methods read, today s16,s32)")

    def trunk_options(s):
        s.add_argument("--trunk", default="tf_efficientnet_lite0", help="timm model name")
        s.add_argument("--weights", type=Path, default=None,
                       help="weights file (default: the packaged EfficientNet-Lite0 ImageNet weights)")
        s.add_argument("--resolution", type=_resolution, default=(160, 128), help="HEIGHTxWIDTH (default 160x128)")
        s.add_argument("--flip", action="store_true",
                       help="test-time horizontal flip: each map averaged with its mirror image's (twice the trunk time)")
        levels_option(s)
        cache_option(s)

    s = sub.add_parser("extract", help="encode a catalogue's images into cached trunk feature maps")
    s.add_argument("catalog", type=Path)
    s.add_argument("--format", default=None)
    trunk_options(s)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto")
    s.add_argument("--limit", type=int, default=None, help="only the first N items (for a quick look)")
    engine_options(s)
    s.set_defaults(func=cmd_extract)

    s = sub.add_parser("bench", help="speed benchmarks (PROTOCOLS.md section 5)")
    bench = s.add_subparsers(dest="benchmark", required=True, metavar="{extract,search,query,labels,serve}")

    def bench_run_options(b, n: int, n_help: str, repeats: int):
        b.add_argument("--run", type=Path, required=True, help="the trained run")
        b.add_argument("--index", type=Path, required=True, help="an index built from the run (`vestis index`)")
        b.add_argument("--n", type=_positive, default=n, help=f"{n_help} (default {n})")
        b.add_argument("--repeats", type=_positive, default=repeats, help=f"timed passes (default {repeats})")
        cache_option(b)

    b = bench.add_parser("extract", help="images/s of the trunk paths and of end-to-end extraction")
    b.add_argument("--catalog", type=Path, default=None,
                   help="a catalogue whose first images to time (default: synthetic product shots made on the fly)")
    b.add_argument("--n", type=_positive, default=256, help="images per timed run (default 256)")
    b.add_argument("--batch-size", type=_positive, default=32)
    b.add_argument("--repeats", type=_positive, default=5, help="timed runs (default 5)")
    b.add_argument("--weights", type=Path, default=None, help="trunk weights file (default: the packaged ones)")
    levels_option(b)
    b.add_argument("--resolution", type=_resolution, default=None, help="one HEIGHTxWIDTH (default: 160x128 and 224x224)")
    b.set_defaults(func=cmd_bench_extract)

    b = bench.add_parser("search", help="manipulation + index search latency and recall at catalogue scale")
    bench_run_options(b, 300, "queries", 3)
    b.add_argument("--queries", type=Path, required=True, help="a manipulation query file")
    b.add_argument("--items", type=_positive, default=200_000,
                   help="gallery size (real items + feature-map variants; default 200000)")
    b.add_argument("--gallery", choices=["augmented", "tiled"], default="augmented",
                   help="how the gallery grows past the real items (vestis.bench.gallery; tiled = the older noisy "
                        "copies)")
    b.add_argument("--sweep", action="store_true",
                   help="also HNSW M x efConstruction x efSearch, IVF nprobe, IVF-Flat, IVF-SQ8 + re-rank, fp16 / SQ8 flat")
    b.add_argument("--milvus-items", type=int, default=20_000, help="Milvus gallery size (0: skip)")
    b.add_argument("--milvus-uri", default=None,
                   help="run the Milvus rows on this server (e.g. http://127.0.0.1:19530) instead of Milvus Lite")
    b.add_argument("--filters", default=None,
                   help='also measure filtered searches, JSON {name: filter}, e.g. \'{"broad": {"gender": "Women"}, '
                        '"narrow": {"articleType": "Watches"}}\'')
    b.add_argument("--threads", type=_positive, default=None, help="FAISS threads for index builds (default: all cores)")
    b.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    b.add_argument("--kinds", default="auto,flat,hnsw,ivfpq",
                   help="without --sweep: the FAISS kinds to measure ('' for none: the Milvus rows only)")
    b.add_argument("--ef-search", default=None, metavar="E1,E2",
                   help="also search the auto index's HNSW graph (and a Milvus HNSW collection) with these efSearch "
                        "values (one row each)")
    b.add_argument("--milvus-options", default=None, metavar="JSON",
                   help='the Milvus row\'s index options, e.g. \'{"M": 16, "ef_construction": 200}\' or '
                        '\'{"kind": "ivfpq", "index_type": "IVF_FLAT", "nlist": 1024}\' (default: HNSW M 32, '
                        'efConstruction 80, ef 256)')
    b.add_argument("--index-options", default=None, metavar="JSON",
                   help='build options of the FAISS indexes, e.g. \'{"value_graphs": ["gender"]}\'')
    b.add_argument("--search-options", default=None, metavar="JSON",
                   help='more search settings of the auto index, one row each, e.g. \'[{"value_graphs": false}]\'')
    b.add_argument("--nprobe", default=None, metavar="P1,P2",
                   help="also search a Milvus IVF collection with these nprobe values (one row each)")
    b.add_argument("--filter-settings", choices=["all", "first"], default="all",
                   help="measure --filters with every search setting of an index (all) or its first only")
    b.add_argument("--mode", default="manipulate",
                   help="manipulate (default), same_item (the plain item vector: same-product search) or "
                        "attribute:<name>: time that attribute's own space (AG-MLAN, attribute_baseline); the query "
                        "vectors come from the items of --queries")
    b.set_defaults(func=cmd_bench_search)

    b = bench.add_parser("query", help="one manipulation query through the engine on a built index")
    bench_run_options(b, 500, "queries", 3)
    b.add_argument("--queries", type=Path, required=True, help="a manipulation query file")
    b.add_argument("--labels", choices=["on", "off"], default="off",
                   help="off (default): vision only, as the protocol figures; on: catalogue-aware ranking")
    b.set_defaults(func=cmd_bench_query)

    b = bench.add_parser("labels", help="catalogue-aware (labels on) query time and recall at catalogue scale")
    bench_run_options(b, 300, "queries", 3)
    b.add_argument("--queries", type=Path, required=True, help="a manipulation query file")
    b.add_argument("--items", type=_positive, default=200_000, help="gallery size: real items + feature-map variants")
    b.add_argument("--options", default=None, help='JSON FAISS index options, e.g. \'{"exact_filter_fraction": 0.05}\'')
    b.set_defaults(func=cmd_bench_labels)

    b = bench.add_parser("serve", help="HTTP load test of `vestis serve` on loopback")
    bench_run_options(b, 2000, "requests per repeat", 3)
    b.add_argument("--catalog", type=Path, default=None, help="the catalogue to serve (default: the index's)")
    b.add_argument("--concurrency", type=_positive, default=8, help="concurrent clients (default 8)")
    b.add_argument("--workers", default="1", help="server processes, one configuration per number: 1,2 measures "
                                                  "both in one run (default 1)")
    b.add_argument("--uploads", type=int, default=0, help="also this many photo uploads per configuration (p50 "
                                                           "reported apart; default 0)")
    b.set_defaults(func=cmd_bench_serve)

    def catalog_option(s, required=True):
        s.add_argument("--catalog", type=Path, required=required, help="catalogue folder or file (any supported format)")
        s.add_argument("--format", default=None, help="force a reader (default: auto-detect)")

    s = sub.add_parser("train", help="train a method's head on cached trunk features")
    s.add_argument("--model", required=True, help="visual, attribute_baseline, global_embed, ...")
    catalog_option(s)
    s.add_argument("--out", type=Path, required=True, help="run directory to write")
    s.add_argument("--config", type=Path, default=None, help="JSON: the model's options, optionally 'attributes'")
    s.add_argument("--mix", type=Path, default=None, metavar="CATALOG",
                   help="a second catalogue (e.g. shopper photos) whose train split joins the training through "
                        "--mix-mapping; the domains get an equal share of every batch")
    s.add_argument("--mix-mapping", type=Path, default=None, metavar="FILE",
                   help="JSON label mapping: the second catalogue's attribute -> a set of values of one of this "
                        "run's attributes (e.g. benchmarks/mappings/clothing-to-fpi.json)")
    s.add_argument("--mix-format", default=None, help="force the second catalogue's reader")
    s.add_argument("--shopper-views", type=int, default=0, metavar="K",
                   help="train on K seeded shopper-photo views of every training image too (augmented packshots: "
                        "a household background, off-centre, tilted, room light, blur, JPEG), as a domain of their "
                        "own, balanced per batch; the views and their maps are cached and reused")
    s.add_argument("--views-seed", type=int, default=0, help="seed of the shopper-photo views")
    s.add_argument("--attributes", default=None, help="comma-separated attribute set (default: the benchmark's)")
    trunk_options(s)
    s.add_argument("--finetune-trunk", action="store_true",
                   help="first fine-tune the trunk's last stages on the training images (slow on CPU; see vestis.finetune)")
    s.add_argument("--finetune-epochs", type=int, default=2)
    s.add_argument("--finetune-blocks", type=int, default=2, help="trunk stages to unfreeze, counted from the end")
    s.add_argument("--finetune-lr", type=float, default=1e-4)
    s.add_argument("--finetune-s32", action="store_true",
                   help="first fine-tune the trunk's stride-32 stages (and head conv) on the cached stride-16 maps "
                        "with the attribute loss, the epoch chosen on a 20%% validation slice of the train split "
                        "(minutes on a CPU; see vestis.finetune_s32); the run carries them")
    s.add_argument("--finetune-s32-epochs", type=int, default=4, metavar="N", help="epochs of --finetune-s32")
    s.add_argument("--finetune-s32-lr", type=float, default=1e-4, help="learning rate of the stages (--finetune-s32)")
    s.add_argument("--s32-stages", type=Path, default=None, metavar="FILE",
                   help="reuse the stride-32 stages an earlier --finetune-s32 run made (its s32_stages.safetensors) "
                        "instead of fine-tuning again: the run carries a copy, and the re-encoded maps' cache is shared")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("index", help="embed a catalogue with a trained run into a searchable index")
    s.add_argument("--run", type=Path, default=None, help="the trained run (required to build; with "
                                                          "--update-attributes default: the run the index names)")
    catalog_option(s, required=False)
    s.add_argument("--out", type=Path, required=True, help="the index directory (built, or updated in place)")
    s.add_argument("--update-attributes", type=Path, default=None, metavar="FILE",
                   help="change the labels of indexed items without re-encoding images: a CSV (id + one column per "
                        "attribute; empty cell = unchanged, 'unspecified' clears) or JSONL ({\"id\": ..., "
                        "\"attributes\": {...}} per line); atomic, checked first (vestis.attribute_updates)")
    s.add_argument("--backend", choices=["faiss", "milvus"], default="faiss")
    s.add_argument("--kind", choices=["auto", "flat", "hnsw", "ivfpq"], default="auto",
                   help="auto (default): exact flat search while items x dims <= 5 million, else the tuned HNSW "
                        "graph (README, search speed)")
    s.add_argument("--split", default=None, help="index only this split (e.g. gallery, for evaluation)")
    s.add_argument("--options", default=None, help='JSON index options, e.g. \'{"uri": "http://host:19530"}\'')
    cache_option(s)
    engine_options(s)
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="answer one query, or a query file into rankings.jsonl")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--index", type=Path, required=True)
    s.add_argument("--queries", type=Path, default=None, help="query file (JSONL, PROTOCOLS.md)")
    s.add_argument("--output", type=Path, default=None, help="rankings.jsonl to write (with --queries)")
    s.add_argument("--image", type=Path, default=None)
    s.add_argument("--item", default=None, help="catalogue item id")
    s.add_argument("--set", action="append", default=[], metavar="ATTR=VALUE", help="manipulation (repeatable)")
    s.add_argument("--filter", action="append", default=[], metavar="ATTR=VALUE", help="only items with this value")
    s.add_argument("--mode", default="manipulate", help="manipulate, same_item, visual, attribute:<name> (the run's "
                                                        "modes; an unknown one is refused with the list)")
    s.add_argument("--k", type=int, default=None, help="results (default 30; 50 with --queries)")
    s.add_argument("--labels", choices=["on", "off"], default="on",
                   help="on (default): rank with the catalogue's labels (requested values as constraints, the query's "
                        "other attributes as preferences); off: vision only, the papers' protocol")
    s.add_argument("--label-weight", type=float, default=None, metavar="W",
                   help="labels on: how much the run's similarity counts against label log-likelihoods (default "
                        "vestis.catalogue_ranking.LABEL_WEIGHT)")
    s.add_argument("--photo-preferences", choices=["run", "values", "all"], default="run",
                   help="labels on, photo queries: which predicted attributes become preferences. run (default): "
                        "those the run learnt from photos where it was trained with --mix (its mapped attribute, "
                        "each value scored by the predicted probability of the mapped sets it is in), else all; "
                        "values: the mapped attribute's per-value prediction; all: every attribute")
    s.add_argument("--photos", action="store_true",
                   help="with --queries: search catalogue-item queries by their image file, as shopper photos (their "
                        "own labels unseen)")
    s.add_argument("--crop", action="store_true",
                   help="cut image queries to their foreground box before encoding (vestis.vision.crop)")
    cache_option(s)
    s.set_defaults(func=cmd_search)

    s = sub.add_parser("queries", help="generate a seeded query file for an evaluation protocol")
    catalog_option(s)
    s.add_argument("--protocol", choices=["manipulation", "attribute", "triplet", "same_item", "consumer_to_shop",
                                          "diverse"], required=True)
    s.add_argument("--attribute", default=None, help="diverse: the garments' category attribute (groups' labels)")
    s.add_argument("--mapping", type=Path, default=None,
                   help="consumer_to_shop: JSON label mapping, the photos' category -> a set of the gallery's values "
                        "(e.g. benchmarks/mappings/clothing-to-fpi.json)")
    s.add_argument("--split", default=None, help="consumer_to_shop / diverse: the photos' split to query with "
                                                 "(default query)")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--per-attribute", type=int, default=None,
                   help="at most this many queries per attribute (triplets per attribute; same_item: total)")
    s.add_argument("--changes", type=int, choices=[1, 2], default=1, help="attributes changed per manipulation query")
    s.add_argument("--attributes", default=None, help="comma-separated attribute set (default: the benchmark's; "
                                                     "diverse: part relevance's further attributes)")
    s.set_defaults(func=cmd_queries)

    s = sub.add_parser("eval", help="score a rankings file against a query file (PROTOCOLS.md)")
    s.add_argument("--queries", type=Path, required=True)
    s.add_argument("--rankings", type=Path, required=True)
    catalog_option(s)
    s.add_argument("--report", type=Path, default=None, help="write report.json / report.md / plots here")
    s.add_argument("--run", type=Path, default=None, help="the run that produced the rankings (named in the report; "
                                                          "protocol 4: its trunk's pooled stride-32 features are the "
                                                          "space of intra-list diversity)")
    s.add_argument("--vectors-run", type=Path, default=None,
                   help="protocol 4: the run whose trunk's pooled stride-32 features are intra-list diversity's space "
                        "(default --run; give every compared list the same one)")
    s.add_argument("--name", default=None, help="name of this row in tables")
    s.add_argument("--gallery-split", default="gallery")
    s.add_argument("--no-curve", action="store_true", help="skip the gallery-size curve (needs long rankings)")
    s.add_argument("--views", default=None, help="same-item data: real multi-view / synthetic multi-view / augmented")
    s.add_argument("--classify", action="store_true", help="also category top-1/3/5 of the run on the query split "
                                                           "(consumer_to_shop: accuracy through the mapped sets); "
                                                           "with subCategory / masterCategory in the catalogue, those "
                                                           "levels too, through the run's category classifier")
    s.add_argument("--classify-split", default="query", help="the split --classify scores (default query)")
    cache_option(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("compare", help="one table and plot from several eval reports")
    s.add_argument("reports", type=Path, nargs="+", help="report directories or report.json files")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--names", nargs="*", default=None)
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("explain", help="draw where a run looks for each attribute (heatmap + box) over photos")
    s.add_argument("images", type=Path, nargs="+", help="image files")
    s.add_argument("--run", type=Path, required=True, help="a trained run of a model that localises attributes")
    s.add_argument("--out", type=Path, default=Path("explain"), help="folder for the PNGs (or one .png for one image)")
    s.add_argument("--threshold", type=float, default=None, help="box threshold as a share of the map's maximum")
    cache_option(s)
    s.set_defaults(func=cmd_explain)

    s = sub.add_parser("localisation", help="score a run's attribute boxes against a catalogue's labelled regions")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--catalog", type=Path, required=True, help="a catalogue with attribute regions (e.g. synthetic)")
    s.add_argument("--format", default=None)
    s.add_argument("--split", default="query", help="train, gallery, query or all (default query)")
    s.add_argument("--threshold", type=float, default=None, help="box threshold (default: the run's)")
    s.add_argument("--report", type=Path, default=None, help="folder for localisation.json / .md")
    cache_option(s)
    s.set_defaults(func=cmd_localisation)

    s = sub.add_parser("serve", help="serve the HTTP API and the web page for a run and its index")
    s.add_argument("--run", type=Path, required=True)
    s.add_argument("--index", type=Path, required=True)
    catalog_option(s, required=False)
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-upload-mb", type=float, default=10.0, help="largest uploaded image in MiB (default 10)")
    s.add_argument("--max-megapixels", type=float, default=20.0, help="largest uploaded image in megapixels (default 20)")
    s.add_argument("--image-root", type=Path, action="append", default=[], metavar="DIR",
                   help="folder item images may be served from (repeatable; default: the catalogue's folder)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host header name to answer (repeatable; with the loopback names; default: any). Name the "
                        "server's host names when --host binds beyond this machine, against DNS rebinding")
    s.add_argument("--body-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="answer 408 when a request body stalls this long between two chunks (default 10)")
    s.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes sharing the loaded index (forked after loading; default 1; README, "
                        "HTTP API under load)")
    s.add_argument("--allow-writes", action="store_true",
                   help="answer PATCH /items/attributes, which changes the served index's attributes in place (off by "
                        "default: 403)")
    s.add_argument("--precompute-items", type=int, default=100_000, metavar="N",
                   help="before serving, compute and keep the query side (attribute probabilities, pooled features) of "
                        "up to N catalogue items with cached features, so item-id searches skip the classifiers and "
                        "the feature cache (default 100000; 0: none)")
    cache_option(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("demo", help="synthetic catalogue (or --data), features, training, index, a search, then the web page")
    s.add_argument("--data", type=Path, default=None, help="a catalogue to use instead of the synthetic one")
    s.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    s.add_argument("-n", type=int, default=2000)
    cache_option(s)
    s.add_argument("--no-serve", action="store_true", help="stop after the example search (no web server)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
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
