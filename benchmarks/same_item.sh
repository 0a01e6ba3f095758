#!/usr/bin/env bash
# Protocol 3 (same-item retrieval, PROTOCOLS.md section 3) on a synthetic multi-view catalogue:
# global_embed (Park et al.) against the visual floor, plus category top-1/3/5.
#
#   benchmarks/same_item.sh            (N=6000 images, SEED=1, OUT=runs/bench/synth)
#
# The data are synthetic multi-view renders (`vestis synth`): several views of each garment with a
# different background, pose, camera and lighting. Not real multi-view photos: say so beside any figure.
# LEVELS: trunk levels for `vestis train`; CONFIG: a config file for global_embed; MODELS: the rows
# (default "visual global_embed").
set -euo pipefail
N=${N:-6000}; SEED=${SEED:-1}
OUT=${OUT:-runs/bench/synth}
V=${VESTIS:-.venv/bin/vestis}
CAT="$OUT/catalog-n$N-seed$SEED"
mkdir -p "$OUT"
[ -f "$CAT/catalog.jsonl" ] || $V synth -n "$N" --seed "$SEED" --out "$CAT"
Q="$OUT/queries-same-item.jsonl"
[ -f "$Q" ] || $V queries --catalog "$CAT" --protocol same_item --seed 0 --out "$Q"
for model in ${MODELS:-visual global_embed}; do
  R="$OUT/$model"
  $V train --model "$model" --catalog "$CAT" --out "$R/run" ${LEVELS:+--levels "$LEVELS"} \
    ${CONFIG:+$([ "$model" = global_embed ] && echo --config "$CONFIG")}
  $V index --run "$R/run" --catalog "$CAT" --out "$R/index" --split gallery --kind flat  # exact: protocol figures
  $V search --run "$R/run" --index "$R/index" --queries "$Q" --output "$R/rankings.jsonl" --k 50 --labels off
  extra=$([ "$model" = global_embed ] && echo --classify || true)
  $V eval --queries "$Q" --rankings "$R/rankings.jsonl" --catalog "$CAT" --run "$R/run" --name "$model" \
    --views "synthetic multi-view" --no-curve $extra --report "$R/report" > /dev/null
  echo "report: $R/report/report.md"
done
$V compare "$OUT/visual/report" "$OUT/global_embed/report" --out "$OUT/comparison"
