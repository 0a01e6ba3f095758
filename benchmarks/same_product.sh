#!/usr/bin/env bash
# Same-product search (Park et al., issue 17; protocol 3, `vestis-same-item/1`): Recall@k of `visual` and
# `global_embed`'s loss rows OC, OC+OS, OC+IS (README "Same-product search") on three kinds of data:
#   synth             synthetic multi-view renders (`vestis synth -n $N --seed $SEED`);
#   augmented         AUGMENTED VIEWS OF SINGLE PHOTOS (`vestis views`: seeded shopper-like views of the
#                     images_hr/ copies of fashion-product-images-small; not a multi-view dataset) against the
#                     60x80 gallery photos plus the query products' own 60x80 photos;
#   cross-resolution  the images_hr photo as it is against the same gallery;
# plus category top-1/3/5 (articleType, subCategory, masterCategory: Park et al.'s Table 2) of the global_embed rows,
# and the same-product query time at 200k items (`vestis bench search --mode same_item`) of the OC+IS run.
#
#   OMP_NUM_THREADS=1 nice -n 5 benchmarks/same_product.sh
#
# DATA: the dataset (default ../shared/datasets/fashion-product-images-small); OUT (runs/bench/same_product);
# LEVELS (s8,s16,s32: the shared cache); ROWS (default "visual oc oc+os oc+is"); SETS (default "synth real";
# real = augmented + cross-resolution, one training); TAG: a suffix for the run folders (default none);
# CONFIG_EXTRA: a JSON object merged into every global_embed row's config (e.g. the paper's eq. 1:
# '{"squared": true, "margin": 0.3, "sim_weight": 0.1}'); VIEWS / QUERY_VIEWS: views per train / query product
# (4 / 2); PACKSHOT_VIEWS / PACKSHOT_PRODUCTS: views of the 60x80 photo for that many train products without an
# images_hr copy (`vestis views --packshot-views/--packshot-products`; default none); BENCH=0 skips the query-time benchmark; N / SEED: the synthetic catalogue (6000 / 1).
# VALIDATION: train products held out of training as a validation slice (default 150; `vestis views
# --validation-products`): the real rows train on validation.jsonl's train split and are measured on its queries
# (report-validation, for choosing settings) as well as on the query split; 0 trains on every train product.
set -euo pipefail
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
OUT=${OUT:-runs/bench/same_product}
LEVELS=${LEVELS:-s8,s16,s32}
V=${VESTIS:-.venv/bin/vestis}
N=${N:-6000}; SEED=${SEED:-1}
VIEWS=${VIEWS:-4}; QUERY_VIEWS=${QUERY_VIEWS:-2}; VALIDATION=${VALIDATION:-150}
TAG=${TAG:-}
mkdir -p "$OUT"

config() {  # the row's config file (global_embed rows), with CONFIG_EXTRA merged in
  local row=$1 f="$OUT/config-${1//+/_}$TAG.json"
  python3 -c "import json,sys; c={'loss': sys.argv[1]}; c.update(json.loads(sys.argv[2] or '{}')); json.dump(c, open(sys.argv[3], 'w'))" \
    "$row" "${CONFIG_EXTRA:-}" "$f"
  echo "$f"
}

row() {  # row, training catalogue, run folder: train once
  local row=$1 cat=$2 dir=$3
  [ -f "$dir/run/run.json" ] && return 0
  if [ "$row" = visual ]; then
    $V train --model visual --catalog "$cat" --out "$dir/run" --levels "$LEVELS"
  else
    $V train --model global_embed --catalog "$cat" --out "$dir/run" --levels "$LEVELS" --config "$(config "$row")"
  fi
}

measure() {  # row, catalogue, query file, run folder, report name, views wording
  local row=$1 cat=$2 q=$3 dir=$4 name=$5 views=$6
  $V index --run "$dir/run" --catalog "$cat" --out "$dir/index-$name" --split gallery --kind flat  # exact search
  $V search --run "$dir/run" --index "$dir/index-$name" --queries "$q" --output "$dir/rankings-$name.jsonl" --k 50 --labels off
  $V eval --queries "$q" --rankings "$dir/rankings-$name.jsonl" --catalog "$cat" --run "$dir/run" --name "$row" \
    --views "$views" --no-curve $([ "$row" = visual ] || echo --classify) --report "$dir/report-$name" > /dev/null
  echo "report: $dir/report-$name/report.md"
}

ROWS=${ROWS:-visual oc oc+os oc+is}
for set in ${SETS:-synth real}; do
  if [ "$set" = synth ]; then
    CAT="$OUT/synth/catalog-n$N-seed$SEED"
    [ -f "$CAT/catalog.jsonl" ] || $V synth -n "$N" --seed "$SEED" --out "$CAT"
    Q="$OUT/synth/queries-same-item.jsonl"
    [ -f "$Q" ] || $V queries --catalog "$CAT" --protocol same_item --seed 0 --out "$Q"
    for r in $ROWS; do
      dir="$OUT/synth/${r//+/_}$TAG"
      row "$r" "$CAT" "$dir"
      measure "$r" "$CAT" "$Q" "$dir" synth "synthetic multi-view"
    done
    $V compare $(for r in $ROWS; do echo "$OUT/synth/${r//+/_}$TAG/report-synth"; done) --out "$OUT/synth/comparison$TAG"
  else
    VD="$OUT/views-v$VIEWS-q$QUERY_VIEWS${PACKSHOT_VIEWS:+-p$PACKSHOT_VIEWS-$PACKSHOT_PRODUCTS}"
    KINDS="augmented cross-resolution"; TRAIN="$VD/augmented.jsonl"
    if [ "$VALIDATION" != 0 ]; then KINDS="validation $KINDS"; TRAIN="$VD/validation.jsonl"; fi
    { [ -f "$VD/cross-resolution.jsonl" ] && { [ "$VALIDATION" = 0 ] || [ -f "$VD/validation.jsonl" ]; }; } || \
      $V views --catalog "$DATA" --out "$VD" --views "$VIEWS" --query-views "$QUERY_VIEWS" --validation-products "$VALIDATION" \
      ${PACKSHOT_VIEWS:+--packshot-views "$PACKSHOT_VIEWS" --packshot-products "$PACKSHOT_PRODUCTS"}
    for kind in $KINDS; do
      [ -f "$VD/queries-$kind.jsonl" ] || $V queries --catalog "$VD/$kind.jsonl" --protocol same_item --seed 0 --out "$VD/queries-$kind.jsonl"
      $V extract "$VD/$kind.jsonl" --levels "$LEVELS"
    done
    for r in $ROWS; do
      dir="$VD/${r//+/_}$TAG"
      row "$r" "$TRAIN" "$dir"
      [ "$VALIDATION" = 0 ] || measure "$r" "$VD/validation.jsonl" "$VD/queries-validation.jsonl" "$dir" validation \
        "augmented views of single photos (validation slice of the train products)"
      measure "$r" "$VD/augmented.jsonl" "$VD/queries-augmented.jsonl" "$dir" augmented "augmented views of single photos"
      measure "$r" "$VD/cross-resolution.jsonl" "$VD/queries-cross-resolution.jsonl" "$dir" cross-resolution \
        "cross-resolution (images_hr photo as it is; single photos)"
    done
    for kind in $KINDS; do
      $V compare $(for r in $ROWS; do echo "$VD/${r//+/_}$TAG/report-$kind"; done) --out "$VD/comparison-$kind$TAG"
    done
    if [ "${BENCH:-1}" != 0 ] && [ -f "$VD/oc_is$TAG/run/run.json" ]; then
      $V bench search --run "$VD/oc_is$TAG/run" --index "$VD/oc_is$TAG/index-augmented" \
        --queries "$VD/queries-augmented.jsonl" --items 200000 --mode same_item --kinds auto --ef-search 64,128 --milvus-items 0 \
        --threads 1 --json "$VD/oc_is$TAG/bench-search.json" | tee "$VD/oc_is$TAG/bench-search.md"
    fi
  fi
done
