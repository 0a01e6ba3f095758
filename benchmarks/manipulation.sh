#!/usr/bin/env bash
# Protocol 1 (attribute manipulation, PROTOCOLS.md section 1) for one method on fashion-product-images-small:
# train on the train split, index the gallery split, rank the shared query files, score them.
#
#   benchmarks/manipulation.sh NAME MODEL [CONFIG.json]
#
# DATA: the dataset (default ../shared/datasets/fashion-product-images-small); OUT: where runs, rankings and
# reports go (default runs/bench/fpi). The query files are generated once (seed 0) and shared by every method,
# so all rows of a comparison are measured on the same queries (their sha256 is in every report).
# LEVELS: trunk levels for `vestis train` (e.g. s8,s16,s32 to reuse a cache extracted with them); TRUNK_ARGS:
# further trunk options for `vestis train` (e.g. "--trunk tf_efficientnet_lite1 --resolution 224x176").
# CHANGES: which query files to score (default "1 2": single- and two-attribute); PER / PER2: queries per attribute /
# per attribute pair when a query file is generated (defaults 500 / 100, the shared files' own).
set -euo pipefail
NAME=$1; MODEL=$2; CONFIG=${3:-}
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
OUT=${OUT:-runs/bench/fpi}
V=${VESTIS:-.venv/bin/vestis}
mkdir -p "$OUT/$NAME"
for c in ${CHANGES:-1 2}; do
  q="$OUT/queries-manipulation-$c.jsonl"
  per=$([ "$c" = 1 ] && echo "${PER:-500}" || echo "${PER2:-100}")
  [ -f "$q" ] || $V queries --catalog "$DATA" --protocol manipulation --changes "$c" --per-attribute "$per" --seed 0 --out "$q"
done
$V train --model "$MODEL" --catalog "$DATA" --out "$OUT/$NAME/run" ${CONFIG:+--config "$CONFIG"} \
  ${LEVELS:+--levels "$LEVELS"} ${TRUNK_ARGS:-}
test -f "$OUT/$NAME/run/run.json"
$V index --run "$OUT/$NAME/run" --catalog "$DATA" --out "$OUT/$NAME/index" --split gallery --kind flat  # exact: protocol figures
for c in ${CHANGES:-1 2}; do
  $V search --run "$OUT/$NAME/run" --index "$OUT/$NAME/index" --queries "$OUT/queries-manipulation-$c.jsonl" \
    --output "$OUT/$NAME/rankings-$c.jsonl" --k 1000 --labels "${LABELS:-off}"
  $V eval --queries "$OUT/queries-manipulation-$c.jsonl" --rankings "$OUT/$NAME/rankings-$c.jsonl" --catalog "$DATA" \
    --run "$OUT/$NAME/run" --name "$NAME" --report "$OUT/$NAME/report-$c" > /dev/null
  echo "report: $OUT/$NAME/report-$c/report.md"
done
