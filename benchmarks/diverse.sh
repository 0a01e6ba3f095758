#!/usr/bin/env bash
# Protocol 4 (diverse part-based suggestions, PROTOCOLS.md section 4) of the `parts` model (Verma et al.):
#   real: collages of fashion-product-images-small photos (train collages from train-split photos; evaluation
#         collages from query-split photos) searched against that catalogue's gallery split;
#   synth: the synthetic catalogue's outfits (query + gallery splits) searched against its gallery split.
#
#   benchmarks/diverse.sh                 (DATA=../shared/datasets/fashion-product-images-small, OUT=runs/diverse)
#
# Metrics and PNGs: benchmarks/diverse.py (multi-label AP_all / mAP, attended regions against the true boxes,
# coverage / purity@5 / part relevance / intra-list diversity / distinct categories against visual top-N and MMR,
# query time). CONFIG: the parts model's options (JSON members) for both runs; the default is the reduced
# configuration the README's figures were measured with (6 epochs on real collages, 8 on synthetic outfits).
set -euo pipefail
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
OUT=${OUT:-runs/diverse}
V=${VESTIS:-.venv/bin/vestis}
PY=${PYTHON:-.venv/bin/python}
LEVELS=s8,s16,s32   # the shared feature cache's levels
N_COLLAGES=${N_COLLAGES:-3000}; N_EVAL=${N_EVAL:-200}; N_SINGLES=${N_SINGLES:-2000}; N_SYNTH=${N_SYNTH:-2000}
CONFIG=${CONFIG-'"width": 64, "hidden": 128, "glimpse": 6, "codewords": 16, "dim": 128, "steps": 4, "lr": 0.003'}
mkdir -p "$OUT"

# real photos: collages, their features, a run trained on the training collages, the catalogue's gallery indexed
C="$OUT/collages"
[ -f "$C/catalog.jsonl" ] || $V synth --collages-from "$DATA" -n "$N_COLLAGES" --eval-collages "$N_EVAL" \
  --singles "$N_SINGLES" --seed 0 --out "$C"
$V extract "$C" --levels $LEVELS
echo "{\"label_attribute\": \"subCategory\", \"epochs\": 6${CONFIG:+, $CONFIG}}" > "$OUT/real-config.json"
$V train --model parts --catalog "$C" --out "$OUT/real/run" --levels $LEVELS --config "$OUT/real-config.json"
$V index --run "$OUT/real/run" --catalog "$DATA" --out "$OUT/real/index" --split gallery --kind flat
$PY benchmarks/diverse.py --run "$OUT/real/run" --index "$OUT/real/index" --queries "$C" --splits query \
  --out "$OUT/real/eval"

# synthetic outfits
S="$OUT/synth"
[ -f "$S/catalog.jsonl" ] || $V synth -n "$N_SYNTH" --seed 1 --out "$S"
$V extract "$S" --levels $LEVELS
echo "{\"epochs\": 8${CONFIG:+, $CONFIG}}" > "$OUT/synth-config.json"
$V train --model parts --catalog "$S" --out "$OUT/synth-run/run" --levels $LEVELS --config "$OUT/synth-config.json"
$V index --run "$OUT/synth-run/run" --catalog "$S" --out "$OUT/synth-run/index" --split gallery --kind flat
$PY benchmarks/diverse.py --run "$OUT/synth-run/run" --index "$OUT/synth-run/index" --queries "$S" \
  --splits query,gallery --out "$OUT/synth-run/eval"
