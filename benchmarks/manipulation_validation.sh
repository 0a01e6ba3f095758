#!/usr/bin/env bash
# Protocol 1 (attribute manipulation) on a VALIDATION catalogue cut from fashion-product-images' TRAIN split only, for
# choosing a method's settings without looking at the query split that gives the reported figures.
#
#   benchmarks/manipulation_validation.sh NAME MODEL [CONFIG.json]
#
# The validation catalogue ($OUT/catalog.jsonl + schema.json, generic format with an explicit split column, written
# once) holds the train-split items of DATA only, with PROTOCOLS.md's six attributes, re-split by crc32 of
# "<id>#validation" (a salt independent of the dataset's own split): 80 % train, 15 % gallery, 5 % query. The images
# are DATA's own files (absolute paths), so the shared feature cache (keyed by image content) is reused. Then, as
# benchmarks/manipulation.sh does: single-attribute queries (seed 0, PER per attribute, default 200), train on the
# validation train part, a flat index of its gallery, search labels off at k 1000, `vestis eval`.
# DATA, OUT (default runs/manip-val), VESTIS, PYTHON, LEVELS, TRUNK_ARGS as in benchmarks/manipulation.sh, which
# runs the protocol on the catalogue written here; CHANGES="1 2" also scores two-attribute queries (PER2 per attribute
# pair, default 50).
set -euo pipefail
NAME=$1; MODEL=$2; CONFIG=${3:-}
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
OUT=${OUT:-runs/manip-val}
V=${VESTIS:-.venv/bin/vestis}
PY=${PYTHON:-.venv/bin/python}
CAT="$OUT/catalog.jsonl"
mkdir -p "$OUT/$NAME"
if [ ! -f "$CAT" ]; then
  "$PY" - "$DATA" "$CAT" <<'PYEOF'
import dataclasses, sys, zlib
from pathlib import Path
from vestis.catalog import Catalog
from vestis.catalog.readers import default_attributes, generic

src = Catalog.load(Path(sys.argv[1]).resolve())  # absolute image paths into the dataset
attrs = default_attributes(src)
train = src.split("train")

def split(item_id: str) -> str:
    b = zlib.crc32(f"{item_id}#validation".encode()) % 100
    return "train" if b < 80 else "gallery" if b < 95 else "query"

items = [dataclasses.replace(it, attributes={a: v for a, v in it.attributes.items() if a in attrs}, split=split(it.id))
         for it in train]
# the dataset's value order, keeping only values that occur in this catalogue
present = {a: {it.attributes[a] for it in items if a in it.attributes} for a in attrs}
schema = type(src.schema)({a: [v for v in src.schema.values(a) if v in present[a]] for a in attrs})
cat = Catalog(items, schema, name="fpi-train-validation")
generic.write(cat, Path(sys.argv[2]))
print(f"validation catalogue {sys.argv[2]}: {len(cat)} of {len(src)} items (the train split), splits "
      f"{cat.summary()['splits']}")
PYEOF
fi
# then protocol 1 on it, as for the reported figures
DATA="$CAT" OUT="$OUT" CHANGES="${CHANGES:-1}" PER="${PER:-200}" PER2="${PER2:-50}" \
  exec "$(dirname "$0")/manipulation.sh" "$NAME" "$MODEL" ${CONFIG:+"$CONFIG"}
