#!/usr/bin/env bash
# Protocol 4 (diverse part-based suggestions, PROTOCOLS.md section 4) of the `parts` model (Verma et al.):
#   real: collages of fashion-product-images-small photos (train collages from train-split photos; evaluation
#         collages from query-split photos) searched against that catalogue's gallery split;
#   synth: the synthetic catalogue's query-split outfits searched against its gallery split.
#
#   benchmarks/diverse.sh          (DATA=../shared/datasets/fashion-product-images-small, OUT=runs/diverse)
#
# Each part: a protocol-4 query file (`vestis queries --protocol diverse`), the run's rankings (`vestis search
# --queries`, rows with groups), the baselines' rankings (benchmarks/diverse.py: visual top-N and MMR; on the real
# data also FashionSearchNet w/o Loc.'s, GLOBAL= leaves it out), every rankings file scored by `vestis eval` and put side
# by side by `vestis compare`; benchmarks/diverse.py also writes model.json (multi-label AP_all / mAP, attended
# regions against the true boxes, query time) and a PNG per query. CONFIG: the parts model's options (JSON members);
# the default is the reduced configuration the README's figures were measured with. The search options were chosen
# on the validation collages (split val) by benchmarks/diverse_validation.sh, run after this script's real part.
set -euo pipefail
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
OUT=${OUT:-runs/diverse}
V=${VESTIS:-.venv/bin/vestis}
PY=${PYTHON:-.venv/bin/python}
LEVELS=s8,s16,s32   # the shared feature cache's levels
N_COLLAGES=${N_COLLAGES:-3000}; N_EVAL=${N_EVAL:-200}; N_VAL=${N_VAL:-200}; N_SINGLES=${N_SINGLES:-2000}; N_SYNTH=${N_SYNTH:-6000}
GLOBAL=${GLOBAL-1}
CONFIG=${CONFIG-'"width": 64, "hidden": 128, "glimpse": 6, "codewords": 16, "dim": 128, "steps": 4, "lr": 0.003'}
mkdir -p "$OUT"

# score: NAME RUN INDEX GALLERY_CATALOG QUERY_CATALOG CATEGORY [global run + index]
score() {
  local name=$1 run=$2 index=$3 gallery=$4 photos=$5 attr=$6 grun=${7:-} gindex=${8:-}
  local e="$OUT/$name/eval"
  mkdir -p "$e"
  $V queries --protocol diverse --catalog "$photos" --attribute "$attr" --split query --out "$OUT/$name/queries.jsonl"
  $V search --run "$run" --index "$index" --queries "$OUT/$name/queries.jsonl" --output "$e/rankings-diverse.jsonl" \
    --k 10 --labels off
  $PY benchmarks/diverse.py --run "$run" --index "$index" --queries "$OUT/$name/queries.jsonl" \
    --rankings "$e/rankings-diverse.jsonl" --out "$e" ${grun:+--global-run "$grun" --global-index "$gindex"}
  for f in "$e"/rankings-*.jsonl; do
    local list; list=$(basename "$f" .jsonl); list=${list#rankings-}
    $V eval --queries "$OUT/$name/queries.jsonl" --rankings "$f" --catalog "$gallery" --vectors-run "$run" \
      --name "$list" --report "$e/report-$list" > /dev/null
  done
  $V compare "$e"/report-* --out "$e/comparison" > /dev/null
  cat "$e/comparison/comparison.md" "$e/model.json"
}

# real photos: collages, their features, a run trained on the training collages, the catalogue's gallery indexed
C="$OUT/collages"
[ -f "$C/catalog.jsonl" ] || $V synth --collages-from "$DATA" -n "$N_COLLAGES" --eval-collages "$N_EVAL" \
  --val-collages "$N_VAL" --singles "$N_SINGLES" --seed 0 --out "$C"
$V extract "$C" --levels $LEVELS
echo "{\"label_attribute\": \"subCategory\", \"epochs\": 12${CONFIG:+, $CONFIG}}" > "$OUT/real-config.json"
$V train --model parts --catalog "$C" --out "$OUT/real/run" --levels $LEVELS --config "$OUT/real-config.json"
$V index --run "$OUT/real/run" --catalog "$DATA" --out "$OUT/real/index" --split gallery --kind flat
# the best global model of protocol 1 (FashionSearchNet w/o Loc.), trained on the catalogue's train split
G="$OUT/fsn_noloc"
if [ -n "$GLOBAL" ]; then
  [ -f "$G/run/run.json" ] || $V train --model fashionsearchnet_noloc --catalog "$DATA" --out "$G/run" --levels $LEVELS
  [ -f "$G/index/engine.json" ] || $V index --run "$G/run" --catalog "$DATA" --out "$G/index" --split gallery --kind flat
fi
score real "$OUT/real/run" "$OUT/real/index" "$DATA" "$C" subCategory ${GLOBAL:+"$G/run" "$G/index"}

# synthetic outfits
S="$OUT/synth"
[ -f "$S/catalog.jsonl" ] || $V synth -n "$N_SYNTH" --seed 1 --out "$S"
$V extract "$S" --levels $LEVELS
echo "{\"epochs\": 8${CONFIG:+, $CONFIG}}" > "$OUT/synth-config.json"
$V train --model parts --catalog "$S" --out "$OUT/synth-run/run" --levels $LEVELS --config "$OUT/synth-config.json"
$V index --run "$OUT/synth-run/run" --catalog "$S" --out "$OUT/synth-run/index" --split gallery --kind flat
score synth-run "$OUT/synth-run/run" "$OUT/synth-run/index" "$S" "$S" category
