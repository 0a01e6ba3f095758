#!/usr/bin/env bash
# The protocol-2 comparison table: every row of benchmarks/attribute_similarity.sh on one catalogue.
#
#   benchmarks/attribute_similarity_all.sh                       fashion-product-images-small (dev split)
#   SYNTH=1 benchmarks/attribute_similarity_all.sh               the synthetic catalogue (N=6000, SEED=1), plus
#                                                               `vestis localisation` (pointing game)
# Both include AG-MLAN's five ablations (ABLATIONS=0 leaves them out). A row whose triplet report exists is skipped.
set -euo pipefail
V=${VESTIS:-.venv/bin/vestis}
ROWS="agmlan:agmlan attribute_baseline:attribute_baseline visual:visual asen:asen csn:csn"
if [ "${ABLATIONS:-1}" != 0 ]; then
  ROWS="$ROWS agmlan_no_asa:agmlan:no-asa agmlan_no_sa:agmlan:no-sa agmlan_no_aca:agmlan:no-aca"
  ROWS="$ROWS agmlan_no_mask:agmlan:no-mask agmlan_no_branch1:agmlan:no-branch1"
fi
if [ -n "${SYNTH:-}" ]; then
  N=${N:-6000}; SEED=${SEED:-1}
  export DATA=runs/bench/synth/catalog-n$N-seed$SEED OUT=${OUT:-runs/bench/synth-attr}
  [ -f "$DATA/catalog.jsonl" ] || $V synth -n "$N" --seed "$SEED" --out "$DATA"
fi
OUT=${OUT:-runs/bench/fpi-attr}
for row in ${ONLY:-$ROWS}; do
  IFS=: read -r name model variant <<< "$row"
  [ -f "$OUT/$name/report-triplet/report.md" ] && continue  # done before
  benchmarks/attribute_similarity.sh "$name" "$model" ${variant:+benchmarks/configs/agmlan-$variant.json}
done
if [ -n "${SYNTH:-}" ]; then
  for name in agmlan asen; do
    $V localisation --run "$OUT/$name/run" --catalog "$DATA" --split query --report "$OUT/$name/localisation"
  done
fi
$V compare $(for row in $ROWS; do d="$OUT/${row%%:*}/report-attribute"; [ -d "$d" ] && echo "$d"; done) \
  --out "$OUT/comparison-attribute" > /dev/null && echo "comparison: $OUT/comparison-attribute/comparison.md"
