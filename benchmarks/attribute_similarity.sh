#!/usr/bin/env bash
# Protocol 2 (attribute-specific similarity, PROTOCOLS.md section 2) for one method: train on the train split,
# index the gallery split (one exact space per attribute), rank the shared query files (MAP over every
# candidate) and score the fixed test triplets.
#
#   benchmarks/attribute_similarity.sh NAME MODEL [CONFIG.json]
#
# DATA: the catalogue (default ../shared/datasets/fashion-product-images-small); OUT: runs, rankings and reports
# (default runs/bench/fpi-attr). The query files are made once (seed 0) and shared by every row: PER queries per
# attribute (default 200; each ranks the attribute's whole candidate set) and TRIPLETS test triplets per
# attribute (default 3334: 20,000 over the six attributes). Vision only (labels off), the papers' protocol.
set -euo pipefail
NAME=$1; MODEL=$2; CONFIG=${3:-}
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
OUT=${OUT:-runs/bench/fpi-attr}
V=${VESTIS:-.venv/bin/vestis}
PER=${PER:-200}; TRIPLETS=${TRIPLETS:-3334}
mkdir -p "$OUT/$NAME"
QA="$OUT/queries-attribute.jsonl"; QT="$OUT/queries-triplet.jsonl"
[ -f "$QA" ] || $V queries --catalog "$DATA" --protocol attribute --per-attribute "$PER" --seed 0 --out "$QA"
[ -f "$QT" ] || $V queries --catalog "$DATA" --protocol triplet --per-attribute "$TRIPLETS" --seed 0 --out "$QT"
/usr/bin/time -f "%e s wall, %M KiB max RSS" -o "$OUT/$NAME/train-time.txt" \
  $V train --model "$MODEL" --catalog "$DATA" --out "$OUT/$NAME/run" ${CONFIG:+--config "$CONFIG"}
$V index --run "$OUT/$NAME/run" --catalog "$DATA" --out "$OUT/$NAME/index" --split gallery --kind flat  # exact
for q in attribute triplet; do
  $V search --run "$OUT/$NAME/run" --index "$OUT/$NAME/index" --queries "$OUT/queries-$q.jsonl" \
    --output "$OUT/$NAME/rankings-$q.jsonl" --k 50 --labels off
  $V eval --queries "$OUT/queries-$q.jsonl" --rankings "$OUT/$NAME/rankings-$q.jsonl" --catalog "$DATA" \
    --run "$OUT/$NAME/run" --name "$NAME" --report "$OUT/$NAME/report-$q" > /dev/null
  echo "report: $OUT/$NAME/report-$q/report.md"
done
