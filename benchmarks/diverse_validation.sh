#!/usr/bin/env bash
# Choosing the `parts` model's search options on the VALIDATION collages (split "val" of the collage catalogue:
# `vestis synth --collages-from ... --val-collages N`, cut from held-out train-split photos that no training collage
# uses), never on the query-split evaluation collages that give the reported figures.
#
#   benchmarks/diverse_validation.sh      (after benchmarks/diverse.sh has built the collages, the run and its index)
#
# The options that act only when indexing and searching - `confidence_weight` (W), `gallery_label_ratio` (G) and
# the query's `label_ratio` (R) - are varied on the one trained run: each (W, G) is a copy of the run whose run.json
# config has them (the weights are shared: the same run id), with its own index of the gallery; each R a further
# copy searched against that index. Every setting's validation rankings are scored by `vestis eval`, and
# benchmarks/diverse_analysis/choose.py applies the rule fixed before looking: among the settings reaching both goals
# (coverage >= 0.95, purity@5 >= 0.9) the one with the largest smaller margin min(coverage - 0.95, purity@5 - 0.9),
# ties to fewer false groups; none reaching both: the largest smaller margin anyway. Another trained run (e.g. another
# epoch count) joins the same table with NAME=e6 RUN=runs/diverse/e6/run (and WS / GS / RS narrowed to save time).
set -euo pipefail
DATA=${DATA:-../shared/datasets/fashion-product-images-small}
OUT=${OUT:-runs/diverse}
V=${VESTIS:-.venv/bin/vestis}
PY=${PYTHON:-.venv/bin/python}
C=${COLLAGES:-$OUT/collages}
RUN=${RUN:-$OUT/real/run}; NAME=${NAME:-e12}
WS=${WS:-"0.5 1.0 2.0"}; GS=${GS:-"0.2 0.3 0.5"}; RS=${RS:-"0.1 0.15 0.2 0.3"}
VAL="$OUT/val"
mkdir -p "$VAL"
$V queries --protocol diverse --catalog "$C" --attribute subCategory --split val --out "$VAL/queries.jsonl"

# variant SRC_RUN DEST key=value...: a copy of a run with config members set (JSON values)
variant() {
  local src=$1 dest=$2; shift 2
  rm -rf "$dest"; mkdir -p "$dest"
  for f in "$src"/*; do [ "$(basename "$f")" = run.json ] || ln -s "$(realpath "$f")" "$dest/"; done
  $PY - "$src/run.json" "$dest/run.json" "$@" <<'PYEOF'
import json, sys
run = json.load(open(sys.argv[1]))
for kv in sys.argv[3:]:
    k, v = kv.split("=", 1)
    run["config"][k] = json.loads(v)
json.dump(run, open(sys.argv[2], "w"), indent=1)
PYEOF
}

score() {  # NAME RUN INDEX
  local e="$VAL/eval"
  mkdir -p "$e"
  $V search --run "$2" --index "$3" --queries "$VAL/queries.jsonl" --output "$e/rankings-$1.jsonl" --k 10 --labels off
  $V eval --queries "$VAL/queries.jsonl" --rankings "$e/rankings-$1.jsonl" --catalog "$DATA" --vectors-run "$2" \
    --name "$1" --report "$e/report-$1" > /dev/null
}

for w in $WS; do for g in $GS; do
  v="$VAL/runs/$NAME-w$w-g$g"
  variant "$RUN" "$v/run" confidence_weight="$w" gallery_label_ratio="$g"
  [ -f "$v/index/engine.json" ] || $V index --run "$v/run" --catalog "$DATA" --out "$v/index" --split gallery --kind flat
  for r in $RS; do
    variant "$v/run" "$v/run-r$r" label_ratio="$r"
    [ -f "$VAL/eval/report-$NAME-w$w-g$g-r$r/report.json" ] || score "$NAME-w$w-g$g-r$r" "$v/run-r$r" "$v/index"
  done
done; done
$PY benchmarks/diverse_analysis/choose.py "$VAL/eval" | tee "$VAL/choice.md"
