#!/usr/bin/env bash
# Consumer-to-shop P@10 (README "Consumer-to-shop") for one trained run: the clothing photos' query split
# (clothing-dataset-small) searched against the fashion-product-images-small gallery, labels off and on, plus the
# run's category accuracy on those photos through the mapping.
#
#   benchmarks/consumer_to_shop.sh NAME        # needs $OUT/NAME/run and $OUT/NAME/index (a gallery-split index)
#
# The run and index come from e.g.
#   vestis train --model attribute_baseline --catalog $DATA --out $OUT/NAME/run --levels s8,s16,s32
#   vestis index --run $OUT/NAME/run --catalog $DATA --out $OUT/NAME/index --split gallery --kind flat
# CROP=1: each photo is first cut to its foreground (`vestis search --crop`); files get a "-crop" suffix.
set -euo pipefail
NAME=$1
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
PHOTOS=${PHOTOS:-../shared/datasets/clothing-dataset-small}
MAPPING=${MAPPING:-benchmarks/mappings/clothing-to-fpi.json}
OUT=${OUT:-runs/bench/c2s}
V=${VESTIS:-.venv/bin/vestis}
q="$OUT/queries-c2s.jsonl"
[ -f "$q" ] || $V queries --protocol consumer_to_shop --catalog "$PHOTOS" --mapping "$MAPPING" --out "$q"
classify=$(python3 -c "import json,sys; print('--classify' if json.load(open(sys.argv[1]))['model'] != 'visual' else '')" "$OUT/$NAME/run/run.json")
sfx=$([ "${CROP:-0}" = 1 ] && echo "-crop" || true)
for labels in off on; do
  $V search --run "$OUT/$NAME/run" --index "$OUT/$NAME/index" --queries "$q" \
    --output "$OUT/$NAME/c2s-rankings-$labels$sfx.jsonl" --k 50 --labels "$labels" $([ -n "$sfx" ] && echo --crop)
  $V eval --queries "$q" --rankings "$OUT/$NAME/c2s-rankings-$labels$sfx.jsonl" --catalog "$DATA" --run "$OUT/$NAME/run" \
    --name "$NAME$sfx" --report "$OUT/$NAME/c2s-report-$labels$sfx" --no-curve $([ "$labels" = off ] && echo $classify) > /dev/null
  echo "report: $OUT/$NAME/c2s-report-$labels$sfx/report.md"
done
