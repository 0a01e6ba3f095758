#!/usr/bin/env bash
# Catalogue-aware ranking (labels on) against vision only (labels off), protocol 1 on fashion-product-images-small,
# for a run benchmarks/manipulation.sh already trained and indexed. Queries are PHOTOS: each query item's image
# file is encoded as an upload (--photos), so the query's own catalogue labels are never available.
#
#   benchmarks/labels.sh NAME            (after benchmarks/manipulation.sh NAME MODEL)
#
# Writes $OUT/NAME/report-photos-{off,on}-{1,2}: the same query files as manipulation.sh.
set -euo pipefail
NAME=$1
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
OUT=${OUT:-runs/bench/fpi}
V=${VESTIS:-.venv/bin/vestis}
test -f "$OUT/$NAME/index/engine.json"
for labels in off on; do
  for c in 1 2; do
    r="$OUT/$NAME/rankings-photos-$labels-$c.jsonl"
    $V search --run "$OUT/$NAME/run" --index "$OUT/$NAME/index" --queries "$OUT/queries-manipulation-$c.jsonl" \
      --output "$r" --k 1000 --labels "$labels" --photos
    $V eval --queries "$OUT/queries-manipulation-$c.jsonl" --rankings "$r" --catalog "$DATA" \
      --run "$OUT/$NAME/run" --name "$NAME labels $labels" --report "$OUT/$NAME/report-photos-$labels-$c" > /dev/null
    echo "report: $OUT/$NAME/report-photos-$labels-$c/report.md"
  done
done
