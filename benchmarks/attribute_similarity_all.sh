#!/usr/bin/env bash
# The protocol-2 comparison table: every row of benchmarks/attribute_similarity.sh on one catalogue.
#
#   benchmarks/attribute_similarity_all.sh                       fashion-product-images-small (dev split)
#   SYNTH=1 benchmarks/attribute_similarity_all.sh               the synthetic catalogue (N=6000, SEED=1), plus
#                                                               `vestis localisation` (pointing game)
# Both include AG-MLAN's five ablations (ABLATIONS=0 leaves them out). On the synthetic catalogue they train at
# AG-MLAN's defaults (30 epochs); on fashion-product-images, where one run takes 10-30 min on 2 cores, at an equal
# budget of ABLATION_EPOCHS=15 epochs (lr 2e-3), beside AG-MLAN itself at that budget (row agmlan_15ep).
# A row whose triplet report exists is skipped; ONLY="name:model[:variant] ..." runs just those rows.
set -euo pipefail
V=${VESTIS:-.venv/bin/vestis}
PY=${PYTHON:-.venv/bin/python}
ROWS="agmlan:agmlan attribute_baseline:attribute_baseline visual:visual asen:asen csn:csn"
VARIANTS="no-asa no-sa no-aca no-mask no-branch1"
if [ -n "${SYNTH:-}" ]; then
  N=${N:-6000}; SEED=${SEED:-1}
  export DATA=runs/bench/synth/catalog-n$N-seed$SEED OUT=${OUT:-runs/bench/synth-attr}
  [ -f "$DATA/catalog.jsonl" ] || $V synth -n "$N" --seed "$SEED" --out "$DATA"
  EPOCHS=""
else
  EPOCHS=${ABLATION_EPOCHS:-15}
fi
OUT=${OUT:-runs/bench/fpi-attr}
config() {  # a variant's config (empty: AG-MLAN's defaults), at the ablation budget where there is one
  local variant=$1 base=${1:+benchmarks/configs/agmlan-$1.json}
  if [ -z "$EPOCHS" ]; then echo "$base"; return; fi
  local out="$OUT/configs/agmlan-${variant:-defaults}-${EPOCHS}ep.json"
  mkdir -p "$OUT/configs"
  $PY -c 'import json, sys; c = json.load(open(sys.argv[1])) if sys.argv[1] else {}
c.update(epochs=int(sys.argv[2]), lr=0.002); print(json.dumps(c))' "$base" "$EPOCHS" > "$out"
  echo "$out"
}
if [ "${ABLATIONS:-1}" != 0 ]; then
  [ -n "$EPOCHS" ] && ROWS="$ROWS agmlan_${EPOCHS}ep:agmlan:"
  for v in $VARIANTS; do ROWS="$ROWS agmlan_${EPOCHS:+${EPOCHS}ep_}${v//-/_}:agmlan:$v"; done
fi
for row in ${ONLY:-$ROWS}; do
  IFS=: read -r name model variant <<< "$row"
  [ -f "$OUT/$name/report-triplet/report.md" ] && continue  # done before
  cfg=""
  [ "$name" != "$model" ] && [ "$model" = agmlan ] && cfg=$(config "$variant")
  benchmarks/attribute_similarity.sh "$name" "$model" $cfg
done
if [ -n "${SYNTH:-}" ]; then
  for name in agmlan asen; do
    $V localisation --run "$OUT/$name/run" --catalog "$DATA" --split query --report "$OUT/$name/localisation"
  done
fi
$V compare $(for row in $ROWS; do d="$OUT/${row%%:*}/report-attribute"; [ -d "$d" ] && echo "$d"; done) \
  --out "$OUT/comparison-attribute" > /dev/null && echo "comparison: $OUT/comparison-attribute/comparison.md"
