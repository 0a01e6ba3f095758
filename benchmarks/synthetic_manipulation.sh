#!/usr/bin/env bash
# Protocol 1 (attribute manipulation) on the synthetic catalogue, where sleeve, neckline and length sit on
# their own part of the garment, plus how well FashionSearchNet's attribute boxes land on the labelled
# region of each attribute (`vestis localisation`).
#
#   benchmarks/synthetic_manipulation.sh        (N=6000 images, SEED=1; OUT=runs/bench/synth-manip)
#
# The same rows as the fashion-product-images table: visual, attribute_baseline, FashionSearchNet w/o Loc.
# and FashionSearchNet, all on one query file.
set -euo pipefail
N=${N:-6000}; SEED=${SEED:-1}
SYNTH=${SYNTH:-runs/bench/synth}
OUT=${OUT:-runs/bench/synth-manip}
V=${VESTIS:-.venv/bin/vestis}
CAT="$SYNTH/catalog-n$N-seed$SEED"
mkdir -p "$SYNTH" "$OUT"
[ -f "$CAT/catalog.jsonl" ] || $V synth -n "$N" --seed "$SEED" --out "$CAT"
for model in ${MODELS:-visual attribute_baseline fashionsearchnet_noloc fashionsearchnet}; do
  DATA="$CAT" OUT="$OUT" VESTIS="$V" benchmarks/manipulation.sh "$model" "$model"
done
for model in fashionsearchnet_noloc fashionsearchnet; do
  if [ -f "$OUT/$model/run/run.json" ]; then
    $V localisation --run "$OUT/$model/run" --catalog "$CAT" --split query --report "$OUT/$model/localisation"
  fi
done
for c in 1 2; do
  $V compare $(for m in visual attribute_baseline fashionsearchnet_noloc fashionsearchnet; do
    [ -d "$OUT/$m/report-$c" ] && echo "$OUT/$m/report-$c"; done) --out "$OUT/comparison-$c" > /dev/null
  echo "comparison: $OUT/comparison-$c/comparison.md"
done
