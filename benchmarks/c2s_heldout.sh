#!/usr/bin/env bash
# Consumer-to-shop on held-out photos (README "Consumer-to-shop", choosing a setting before the query split is used):
# clothing-dataset-small's train photos split in two halves by crc32 of the id (odd: held-out queries, even: train),
# a mixed attribute_baseline run trained with CONFIG on the fashion-product-images train split plus the train half,
# the gallery split indexed, the 1,558 held-out photos searched labels on and off, and scored (with --classify).
#
#   benchmarks/c2s_heldout.sh NAME CONFIG_JSON [more vestis train options]
#   e.g. benchmarks/c2s_heldout.sh m05 '{"mix_dropout": 0.5}'
#
# OUT (default runs/c2s/val) holds the half-split catalogue (catalog.csv, written once), the query file and NAME/.
set -euo pipefail
NAME=$1; CFG=$2; shift 2
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
PHOTOS=${PHOTOS:-../shared/datasets/clothing-dataset-small}
MAPPING=${MAPPING:-benchmarks/mappings/clothing-to-fpi.json}
OUT=${OUT:-runs/c2s/val}
V=${VESTIS:-.venv/bin/vestis}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT/$NAME"
if [ ! -f "$OUT/catalog.csv" ]; then
  "$PY" - "$PHOTOS" "$OUT/catalog.csv" <<'PYEOF'
import csv, sys, zlib
from pathlib import Path
photos, out = Path(sys.argv[1]).resolve(), sys.argv[2]
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "image", "category", "split"])
    for p in sorted((photos / "train").glob("*/*.jpg")):
        w.writerow([p.stem, str(p), p.parent.name, "query" if zlib.crc32(p.stem.encode()) % 2 else "train"])
PYEOF
fi
q="$OUT/queries-c2s.jsonl"
[ -f "$q" ] || $V queries --protocol consumer_to_shop --catalog "$OUT/catalog.csv" --mapping "$MAPPING" --split query --out "$q"
echo "$CFG" > "$OUT/$NAME/config.json"
$V train --model attribute_baseline --catalog "$DATA" --out "$OUT/$NAME/run" --config "$OUT/$NAME/config.json" \
  --mix "$OUT/catalog.csv" --mix-mapping "$MAPPING" ${LEVELS:+--levels "$LEVELS"} "$@"
$V index --run "$OUT/$NAME/run" --catalog "$DATA" --out "$OUT/$NAME/index" --split gallery --kind flat > /dev/null
for labels in on off; do
  $V search --run "$OUT/$NAME/run" --index "$OUT/$NAME/index" --queries "$q" --output "$OUT/$NAME/rankings-$labels.jsonl" \
    --k 50 --labels "$labels"
  $V eval --queries "$q" --rankings "$OUT/$NAME/rankings-$labels.jsonl" --catalog "$DATA" --run "$OUT/$NAME/run" \
    --name "$NAME (held-out photos, labels $labels)" --report "$OUT/$NAME/report-$labels" --no-curve \
    $([ "$labels" = off ] && echo --classify) > /dev/null
  echo "report: $OUT/$NAME/report-$labels/report.md"
done
